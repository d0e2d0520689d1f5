//! Address-range buses that route a vCPU's MMIO or port I/O exit to the device that owns it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers reads and writes in an address range on a [`Bus`].
///
/// `offset` is relative to the start of the range the device was inserted at. A device must
/// tolerate any access a guest can make (any offset inside its range, any length 1-8): it
/// ignores what it does not understand and fills reads it cannot answer with zeros.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be inserted on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range at {base:#x} of length {len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus range at {base:#x} of length {len:#x} overlaps a device already on the bus")]
    Overlap { base: u64, len: u64 },
}

/// One shared device on a bus.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct BusEntry {
    len: u64,
    device: SharedBusDevice,
}

/// An ordered map from non-overlapping address ranges to devices.
#[derive(Clone, Default)]
pub struct Bus {
    entries: BTreeMap<u64, BusEntry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if let Some((b, e)) = self.entries.range(..end).next_back()
            && b + e.len > base
        {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.insert(base, BusEntry { len, device });
        Ok(())
    }

    /// The device covering `addr`, with `addr`'s offset into its range.
    pub fn resolve(&self, addr: u64) -> Option<(SharedBusDevice, u64)> {
        let (base, entry) = self.entries.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then(|| (entry.device.clone(), offset))
    }

    /// Routes a read; returns false (and leaves `data` untouched) if no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, offset)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; returns false if no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, offset)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlaps() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(a.clone(), 0x1000, 0x100).unwrap();
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x10ff, 2),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 2
            })
        );
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Recorder::default())), 0xfff, 2),
            Err(BusError::Overlap {
                base: 0xfff,
                len: 2
            })
        );
        assert!(
            bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1100, 1)
                .is_ok()
        );
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Recorder::default())), u64::MAX, 2),
            Err(BusError::InvalidRange {
                base: u64::MAX,
                len: 2
            })
        );

        let mut buf = [0u8; 2];
        assert!(bus.read(0x1010, &mut buf));
        assert_eq!(buf, [0x10, 0x10]);
        assert!(bus.write(0x10fe, &[7]));
        assert_eq!(a.lock().unwrap().last_write, Some((0xfe, vec![7])));
        assert!(!bus.read(0x2000, &mut buf));
        assert!(!bus.write(0xfff, &[1]));
    }
}
