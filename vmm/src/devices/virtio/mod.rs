//! virtio-mmio devices: the virtio-mmio (version 2) transport, virtio-blk, virtio-net and the
//! TAP device virtio-net sends its frames to.
//!
//! # What this module owns
//!
//! - [`MmioTransport`]: the register block of one 4 KiB virtio-mmio slot (magic, version, device
//!   id, feature negotiation, queue setup, QueueNotify, interrupt status and ack, device status
//!   with reset, config generation, device config space). It implements
//!   [`BusDevice`](crate::devices::bus::BusDevice) for the slot and
//!   [`event_manager::MutEventSubscriber`] for the device's queue events and host file
//!   descriptors (the TAP).
//! - [`Block`]: virtio-blk over a raw image file (read, write, flush, get-id; read-only disks).
//! - [`Net`]: virtio-net over a TAP ([`Tap`]), with the virtio-net header passed through as the
//!   TAP's vnet header.
//!
//! Every device implements [`VirtioDevice`]; the transport owns the virtqueues
//! (`virtio_queue::Queue`) and hands them to the device through [`Queues`].
//!
//! # Contract with the builder (vmm-core)
//!
//! One device takes one slot of [`MMIO_SLOT_SIZE`] bytes at `base` on the MMIO bus and one GSI:
//!
//! ```ignore
//! use std::sync::{Arc, Mutex};
//! use kvm_ioctls::IoEventAddress;
//! use kumo_vmm::devices::virtio::{self, Block, MmioTransport};
//!
//! let device = Block::new(&path, read_only)?;          // or Net::new(tap_name, mac)?
//! let transport = MmioTransport::new(Box::new(device), guest_memory.clone())?;
//! // QueueNotify: one ioeventfd per queue, datamatch = queue index (4-byte write).
//! for (index, event) in transport.queue_events().iter().enumerate() {
//!     vm_fd.register_ioevent(
//!         event,
//!         &IoEventAddress::Mmio(base + virtio::QUEUE_NOTIFY_OFFSET),
//!         index as u32,
//!     )?;
//! }
//! // The device's interrupt line.
//! vm_fd.register_irqfd(transport.interrupt_event(), gsi)?;
//! let transport = Arc::new(Mutex::new(transport));
//! mmio_bus.insert(transport.clone(), base, virtio::MMIO_SLOT_SIZE)?;
//! event_manager.add_subscriber(transport);            // queue events and the TAP fd
//! cmdline.insert_str(virtio::mmio_cmdline_fragment(base, gsi))?;
//! ```
//!
//! Without the ioeventfds the transport still works: a guest write to QueueNotify signals the
//! same queue event from the vCPU thread. Without the irqfd the guest gets no interrupts.
//!
//! # A guest that misbehaves
//!
//! Nothing a guest writes to the registers or puts in a virtqueue panics or hangs the VMM:
//! descriptor chains that loop, point outside guest memory, use the wrong direction or are too
//! short fail that one request (a virtio-blk status of `VIRTIO_BLK_S_IOERR`, or a used-ring entry
//! of length 0, and a counter in the device's stats). Broken ring state (an available index more
//! than a queue size ahead, a head index outside the queue, an invalid queue configuration) puts
//! the device in `DEVICE_NEEDS_RESET` as the virtio spec says, until the driver resets it.

pub mod block;
mod chain;
pub mod mmio;
pub mod net;
pub mod tap;

#[cfg(test)]
mod block_tests;
#[cfg(test)]
mod mmio_tests;
#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod test_utils;

use std::os::fd::RawFd;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

pub use block::{Block, BlockError, BlockStats};
pub use mmio::{MMIO_SLOT_SIZE, MmioError, MmioTransport, QUEUE_NOTIFY_OFFSET};
pub use net::{MacAddr, Net, NetError, NetStats};
pub use tap::{Tap, TapError};

/// Guest memory as the devices see it.
pub type GuestMemory = GuestMemoryMmap;

/// The kernel command-line fragment that tells Linux (with `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`)
/// about a virtio-mmio device in a 4 KiB slot at `base` with interrupt `irq`.
pub fn mmio_cmdline_fragment(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// Why a device stopped working until the driver resets it (the transport then sets
/// `DEVICE_NEEDS_RESET`).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("virtqueue {queue}: {source}")]
    Queue {
        queue: usize,
        source: virtio_queue::Error,
    },
    #[error("virtqueue {queue}: descriptor head index {head} is outside the queue")]
    BadHeadIndex { queue: usize, head: u16 },
    #[error("device activation failed: {0}")]
    Activate(String),
}

/// One virtio device behind a transport.
///
/// The transport owns the feature negotiation, the virtqueues and the interrupt; the device
/// owns what is specific to it: its id, features, config space and how it handles requests.
///
/// Threads: `read_config`, `write_config` and `reset` run on a vCPU thread (a guest register
/// access), whose seccomp filter allows hardly any syscall besides KVM_RUN, so they must not do
/// I/O. `activate`, `process_queue` and `process_host_event` run on the event loop thread.
pub trait VirtioDevice: Send {
    /// The virtio device id (`virtio_bindings::virtio_ids::VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// The largest size of each of the device's queues; the slice's length is the number of
    /// queues. Each size is a power of two no larger than 32768.
    fn queue_max_sizes(&self) -> &[u16];
    /// The device-specific feature bits it offers (the transport adds `VIRTIO_F_VERSION_1` and
    /// `VIRTIO_RING_F_INDIRECT_DESC`).
    fn device_features(&self) -> u64;
    /// Reads the device config space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver writes the device config space; devices ignore fields that are read-only.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK having accepted `acked_features`. Called on the event loop
    /// thread before the first queue or host event is handled.
    fn activate(&mut self, acked_features: u64) -> Result<(), DeviceError>;
    /// The driver reset the device: drop whatever is in flight.
    fn reset(&mut self);
    /// Queue `index` was notified. Returns true if work is left over (the device stopped after
    /// its per-event budget); the transport then schedules another pass.
    fn process_queue(&mut self, index: usize, queues: &mut Queues<'_>)
    -> Result<bool, DeviceError>;
    /// A host file descriptor (a TAP) the transport should watch for input for this device.
    fn host_fd(&self) -> Option<RawFd> {
        None
    }
    /// Whether the device wants to hear about input on [`host_fd`](Self::host_fd) now (a net
    /// device with a frame it cannot deliver says no until the guest adds receive buffers).
    fn wants_host_events(&self) -> bool {
        false
    }
    /// The host fd is readable (or in error, `hangup_or_error`).
    fn process_host_event(
        &mut self,
        _hangup_or_error: bool,
        _queues: &mut Queues<'_>,
    ) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// The virtqueues of one device, as a device sees them while it handles an event.
pub struct Queues<'a> {
    mem: &'a GuestMemory,
    queues: &'a mut [Queue],
    active: bool,
    used: u64,
}

/// A descriptor chain popped from a queue.
pub type Chain<'a> = DescriptorChain<&'a GuestMemory>;

impl<'a> Queues<'a> {
    /// Wraps `queues`; when `active` is false (the driver has not set DRIVER_OK, or the device
    /// needs a reset) every pop finds nothing.
    pub fn new(mem: &'a GuestMemory, queues: &'a mut [Queue], active: bool) -> Self {
        Queues {
            mem,
            queues,
            active,
            used: 0,
        }
    }

    /// Guest memory.
    pub fn mem(&self) -> &'a GuestMemory {
        self.mem
    }

    /// The size the driver chose for queue `index` (0 if it does not exist or is not ready).
    pub fn size(&self, index: usize) -> u16 {
        match self.queues.get(index) {
            Some(q) if q.ready() => q.size(),
            _ => 0,
        }
    }

    /// The next available descriptor chain of queue `index`, if any.
    pub fn pop(&mut self, index: usize) -> Result<Option<Chain<'a>>, DeviceError> {
        let mem = self.mem;
        let Some(queue) = self.queues.get_mut(index) else {
            return Ok(None);
        };
        if !self.active || !queue.ready() {
            return Ok(None);
        }
        let mut iter = queue.iter(mem).map_err(|source| DeviceError::Queue {
            queue: index,
            source,
        })?;
        Ok(iter.next())
    }

    /// Puts the chain popped last from queue `index` back, so the next pop returns it again.
    pub fn undo_pop(&mut self, index: usize) {
        if let Some(queue) = self.queues.get_mut(index) {
            queue.go_to_previous_position();
        }
    }

    /// Returns chain `head` to the driver through the used ring with `len` bytes written.
    pub fn add_used(&mut self, index: usize, head: u16, len: u32) -> Result<(), DeviceError> {
        let mem = self.mem;
        let Some(queue) = self.queues.get_mut(index) else {
            return Ok(());
        };
        if head >= queue.size() {
            return Err(DeviceError::BadHeadIndex { queue: index, head });
        }
        queue
            .add_used(mem, head, len)
            .map_err(|source| DeviceError::Queue {
                queue: index,
                source,
            })?;
        self.used |= 1 << (index as u64 & 63);
        Ok(())
    }

    /// Bit `i` is set if the device added used entries to queue `i`.
    pub fn used_mask(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_fragment_names_size_base_and_irq() {
        assert_eq!(
            mmio_cmdline_fragment(0xd000_0000, 5),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
    }
}
