//! Memory a device can reach: statics are identity-mapped, so their addresses are physical.

use core::cell::UnsafeCell;

/// A page-aligned static buffer whose guest-physical address can be handed to a device.
///
/// ```ignore
/// static QUEUE: guest::dma::DmaBuffer<4096> = guest::dma::DmaBuffer::new();
/// let phys = QUEUE.phys_addr();
/// ```
#[repr(C, align(4096))]
pub struct DmaBuffer<const N: usize> {
    bytes: UnsafeCell<[u8; N]>,
}

// SAFETY: guests coordinate access themselves (one driver per buffer, device accesses are DMA).
unsafe impl<const N: usize> Sync for DmaBuffer<N> {}

impl<const N: usize> DmaBuffer<N> {
    /// A zeroed buffer.
    pub const fn new() -> Self {
        Self {
            bytes: UnsafeCell::new([0; N]),
        }
    }

    /// Its guest-physical address.
    pub fn phys_addr(&self) -> u64 {
        self.bytes.get() as u64
    }

    /// Its length.
    pub const fn len(&self) -> usize {
        N
    }

    /// Whether it is empty.
    pub const fn is_empty(&self) -> bool {
        N == 0
    }

    /// Mutable access to the bytes.
    ///
    /// # Safety
    /// No other reference to the buffer may be live, and the device must not be writing it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self) -> &mut [u8; N] {
        // SAFETY: the caller guarantees exclusivity.
        unsafe { &mut *self.bytes.get() }
    }

    /// Volatile read of byte `i`.
    pub fn read(&self, i: usize) -> u8 {
        assert!(i < N);
        // SAFETY: in bounds; volatile because a device may have written it.
        unsafe { core::ptr::read_volatile((self.bytes.get() as *const u8).add(i)) }
    }

    /// Volatile write of byte `i`.
    pub fn write(&self, i: usize, v: u8) {
        assert!(i < N);
        // SAFETY: in bounds.
        unsafe { core::ptr::write_volatile((self.bytes.get() as *mut u8).add(i), v) }
    }
}

impl<const N: usize> Default for DmaBuffer<N> {
    fn default() -> Self {
        Self::new()
    }
}
