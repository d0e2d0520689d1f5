//! virtio-net over a TAP.
//!
//! Two queues: 0 receives (frames from the TAP to the guest), 1 transmits (guest to TAP). Every
//! buffer starts with the 12-byte `virtio_net_hdr_v1`, which is passed through to and from the
//! TAP's vnet header unchanged (the kernel validates it), so checksum and segmentation offloads
//! work end to end. The MAC address and link status are in config space.
//!
//! What the device does with what a guest sends:
//! - a transmit chain with a device-writable descriptor, or shorter than the header, is
//!   returned unsent (`tx_malformed`); one larger than [`MAX_FRAME_LEN`] is dropped
//!   (`tx_oversize`); one the TAP refuses (a bad vnet header) is counted in `tx_errors`;
//! - a receive chain with a device-readable descriptor or with room for less than the header is
//!   returned with length 0 (`rx_bad_chains`); a frame larger than the next receive buffer is
//!   dropped (`rx_oversize`) and the buffer stays available for the next frame.
//!
//! A frame that arrives while the guest has no receive buffers waits; the device stops reading
//! the TAP (the kernel queues, then drops) until the guest adds buffers.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};

use super::block::read_config_bytes;
use super::chain::{self, ChainLayout};
use super::tap::{Tap, TapError, VNET_HDR_LEN};
use super::{DeviceError, GuestMemory, Queues, VirtioDevice};

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest buffer (vnet header + Ethernet frame) the device moves: a 64 KiB segmentation-offload
/// packet with its Ethernet header.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 14 + 65536;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?}: expected six hex bytes like 02:00:00:00:00:01")]
pub struct MacParseError(String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(bytes))
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("MAC address {0} is multicast: a NIC needs a unicast address (first byte even)")]
    MulticastMac(MacAddr),
}

/// Where a net device's frames go: a TAP, or in tests anything that moves whole frames
/// (vnet header first) without blocking.
pub trait NetBackend: AsRawFd + Send {
    /// Reads one frame; `ErrorKind::WouldBlock` when there is none.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize>;
    /// Applies the receive offloads the guest accepted (`TUN_F_*` flags).
    fn set_offload(&mut self, flags: u32) -> Result<(), DeviceError>;
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Tap::read_frame(self, buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        Tap::write_frame(self, frame)
    }
    fn set_offload(&mut self, flags: u32) -> Result<(), DeviceError> {
        Tap::set_offload(self, flags).map_err(|e| DeviceError::Activate(e.to_string()))
    }
}

/// Counters of one virtio-net device; readable from any thread while the VM runs.
#[derive(Debug, Default)]
pub struct NetStats {
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_malformed: AtomicU64,
    tx_oversize: AtomicU64,
    tx_errors: AtomicU64,
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_oversize: AtomicU64,
    rx_bad_chains: AtomicU64,
    rx_errors: AtomicU64,
}

/// A snapshot of [`NetStats`]. Byte counts include the vnet header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetCounters {
    /// Frames sent to the TAP.
    pub tx_frames: u64,
    /// Bytes sent to the TAP.
    pub tx_bytes: u64,
    /// Transmit chains returned unsent: wrong direction, too short or unreadable.
    pub tx_malformed: u64,
    /// Transmit frames dropped for being larger than `MAX_FRAME_LEN`.
    pub tx_oversize: u64,
    /// Transmit frames the TAP refused.
    pub tx_errors: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Received frames dropped because the guest's buffer was too small.
    pub rx_oversize: u64,
    /// Receive chains returned unused: wrong direction, too short, outside memory, malformed.
    pub rx_bad_chains: u64,
    /// Failed or short reads from the TAP.
    pub rx_errors: u64,
}

impl NetStats {
    /// The current values.
    pub fn snapshot(&self) -> NetCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetCounters {
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_malformed: get(&self.tx_malformed),
            tx_oversize: get(&self.tx_oversize),
            tx_errors: get(&self.tx_errors),
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_oversize: get(&self.rx_oversize),
            rx_bad_chains: get(&self.rx_bad_chains),
            rx_errors: get(&self.rx_errors),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// What to do with a transmit chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxVerdict {
    /// Send the chain's `len` readable bytes.
    Send(usize),
    Malformed,
    Oversize,
}

/// Checks a transmit chain: only device-readable buffers, a header, at most `MAX_FRAME_LEN`.
pub(crate) fn check_tx(layout: &ChainLayout) -> TxVerdict {
    let len = layout.readable_len();
    if !layout.writable.is_empty() || len < VNET_HDR_LEN as u64 {
        TxVerdict::Malformed
    } else if len > MAX_FRAME_LEN as u64 {
        TxVerdict::Oversize
    } else {
        TxVerdict::Send(len as usize)
    }
}

/// What to do with a receive chain for a frame of `frame_len` bytes (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RxVerdict {
    Deliver,
    /// Not usable for any frame: return it with length 0.
    BadChain,
    /// Usable, but this frame does not fit: drop the frame, keep the chain.
    FrameTooBig,
}

pub(crate) fn check_rx(layout: &ChainLayout, frame_len: usize) -> RxVerdict {
    let room = layout.writable_len();
    if !layout.readable.is_empty() || room < VNET_HDR_LEN as u64 {
        RxVerdict::BadChain
    } else if room < frame_len as u64 {
        RxVerdict::FrameTooBig
    } else {
        RxVerdict::Deliver
    }
}

/// A virtio-net device.
pub struct Net<B: NetBackend = Tap> {
    backend: B,
    mac: MacAddr,
    stats: Arc<NetStats>,
    queue_sizes: [u16; 2],
    /// The frame read from the backend and not yet delivered (`rx_len` bytes of `rx_buf`).
    rx_buf: Vec<u8>,
    rx_len: Option<usize>,
    tx_buf: Vec<u8>,
    /// The backend failed for good (the TAP went away): stop reading it.
    backend_broken: bool,
}

impl<B: NetBackend> std::fmt::Debug for Net<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
            .field("rx_pending", &self.rx_len)
            .field("backend_broken", &self.backend_broken)
            .finish()
    }
}

impl Net<Tap> {
    /// Attaches a virtio-net device with address `mac` to the existing TAP `tap_name`.
    pub fn new(tap_name: &str, mac: MacAddr) -> Result<Self, NetError> {
        Self::with_backend(Tap::open(tap_name)?, mac)
    }
}

impl<B: NetBackend> Net<B> {
    /// A virtio-net device with address `mac` on `backend`.
    pub fn with_backend(backend: B, mac: MacAddr) -> Result<Self, NetError> {
        if mac.0[0] & 1 != 0 {
            return Err(NetError::MulticastMac(mac));
        }
        Ok(Net {
            backend,
            mac,
            stats: Arc::default(),
            queue_sizes: [QUEUE_SIZE, QUEUE_SIZE],
            rx_buf: vec![0; MAX_FRAME_LEN],
            rx_len: None,
            tx_buf: vec![0; MAX_FRAME_LEN],
            backend_broken: false,
        })
    }

    /// The device's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The device's counters; keep a clone to read them while the VM runs.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// The backend (tests use it to inspect what the device did).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn transmit(&mut self, queues: &mut Queues<'_>) -> Result<bool, DeviceError> {
        let mem = queues.mem();
        let budget = queues.size(TX_QUEUE).max(1);
        for _ in 0..budget {
            let Some(chain) = queues.pop(TX_QUEUE)? else {
                return Ok(false);
            };
            let (head, layout) = chain::walk(chain);
            match layout {
                Ok(layout) => self.transmit_one(mem, &layout),
                Err(e) => {
                    debug!("virtio-net: transmit chain: {e}");
                    bump(&self.stats.tx_malformed, 1);
                }
            }
            queues.add_used(TX_QUEUE, head, 0)?;
        }
        Ok(true)
    }

    fn transmit_one(&mut self, mem: &GuestMemory, layout: &ChainLayout) {
        let len = match check_tx(layout) {
            TxVerdict::Send(len) => len,
            TxVerdict::Malformed => {
                bump(&self.stats.tx_malformed, 1);
                return;
            }
            TxVerdict::Oversize => {
                bump(&self.stats.tx_oversize, 1);
                return;
            }
        };
        let frame = &mut self.tx_buf[..len];
        if chain::read_from(mem, &layout.readable, 0, frame).is_err() {
            bump(&self.stats.tx_malformed, 1);
            return;
        }
        match self.backend.write_frame(frame) {
            Ok(_) => {
                bump(&self.stats.tx_frames, 1);
                bump(&self.stats.tx_bytes, len as u64);
            }
            Err(e) => {
                debug!("virtio-net: TAP refused a frame: {e}");
                bump(&self.stats.tx_errors, 1);
            }
        }
    }

    /// Reads frames from the backend and delivers them until it is empty, the guest has no
    /// buffers, or the budget is spent.
    fn receive(&mut self, queues: &mut Queues<'_>) -> Result<(), DeviceError> {
        let mem = queues.mem();
        let budget = usize::from(queues.size(RX_QUEUE).max(1));
        for _ in 0..budget {
            let frame_len = match self.rx_len {
                Some(len) => len,
                None => match self.read_backend() {
                    Some(len) => len,
                    None => return Ok(()),
                },
            };
            self.rx_len = Some(frame_len);
            // The TAP does not write num_buffers (bytes 10..12 of the header): it is 1 for us.
            self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            loop {
                let Some(chain) = queues.pop(RX_QUEUE)? else {
                    // No buffers: keep the frame until the guest adds some.
                    return Ok(());
                };
                let (head, layout) = chain::walk(chain);
                let verdict = match &layout {
                    Ok(layout) => check_rx(layout, frame_len),
                    Err(e) => {
                        debug!("virtio-net: receive chain: {e}");
                        RxVerdict::BadChain
                    }
                };
                match (verdict, layout) {
                    (RxVerdict::Deliver, Ok(layout)) => {
                        if chain::write_to(mem, &layout.writable, 0, &self.rx_buf[..frame_len])
                            .is_err()
                        {
                            bump(&self.stats.rx_bad_chains, 1);
                            queues.add_used(RX_QUEUE, head, 0)?;
                            continue;
                        }
                        queues.add_used(RX_QUEUE, head, frame_len as u32)?;
                        bump(&self.stats.rx_frames, 1);
                        bump(&self.stats.rx_bytes, frame_len as u64);
                        self.rx_len = None;
                        break;
                    }
                    (RxVerdict::FrameTooBig, _) => {
                        queues.undo_pop(RX_QUEUE);
                        bump(&self.stats.rx_oversize, 1);
                        self.rx_len = None;
                        break;
                    }
                    _ => {
                        bump(&self.stats.rx_bad_chains, 1);
                        queues.add_used(RX_QUEUE, head, 0)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One frame from the backend into `rx_buf`, or None when there is none (or it broke).
    fn read_backend(&mut self) -> Option<usize> {
        if self.backend_broken {
            return None;
        }
        loop {
            match self.backend.read_frame(&mut self.rx_buf) {
                Ok(len) if len >= VNET_HDR_LEN => return Some(len),
                Ok(0) => return None,
                Ok(_) => bump(&self.stats.rx_errors, 1),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("virtio-net: reading the TAP failed, no more frames will arrive: {e}");
                    bump(&self.stats.rx_errors, 1);
                    self.backend_broken = true;
                    return None;
                }
            }
        }
    }
}

/// `TUN_F_*` receive offloads matching the features the guest accepted.
pub(crate) fn offload_flags(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1 << bit) != 0;
    let mut flags = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

impl<B: NetBackend + 'static> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        [
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
        ]
        .iter()
        .fold(0, |features, bit| features | (1u64 << bit))
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac.0);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, acked_features: u64) -> Result<(), DeviceError> {
        self.backend.set_offload(offload_flags(acked_features))
    }

    fn reset(&mut self) {
        self.rx_len = None;
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut Queues<'_>,
    ) -> Result<bool, DeviceError> {
        match index {
            RX_QUEUE => self.receive(queues).map(|()| false),
            TX_QUEUE => self.transmit(queues),
            _ => Ok(false),
        }
    }

    fn host_fd(&self) -> Option<RawFd> {
        Some(self.backend.as_raw_fd())
    }

    fn wants_host_events(&self) -> bool {
        !self.backend_broken && self.rx_len.is_none()
    }

    fn process_host_event(
        &mut self,
        hangup_or_error: bool,
        queues: &mut Queues<'_>,
    ) -> Result<(), DeviceError> {
        self.receive(queues)?;
        if hangup_or_error && self.rx_len.is_none() && !self.backend_broken {
            // Nothing left to read and the fd reports an error: the TAP is gone.
            warn!("virtio-net: the TAP reports an error or hang-up; no more frames will arrive");
            self.backend_broken = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_and_print() {
        let mac: MacAddr = "02:00:0a:0B:ff:01".parse().unwrap();
        assert_eq!(mac.0, [2, 0, 0x0a, 0x0b, 0xff, 1]);
        assert_eq!(mac.to_string(), "02:00:0a:0b:ff:01");
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:0:0:0:0:1",
            "0g:00:00:00:00:00",
            "02-00-00-00-00-01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn offloads_follow_the_guest_features() {
        assert_eq!(offload_flags(0), 0);
        assert_eq!(offload_flags(1 << VIRTIO_NET_F_GUEST_TSO4), 0);
        assert_eq!(
            offload_flags((1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_TSO4)),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4
        );
    }
}
