//! The virtio-mmio transport, version 2 (virtio 1.x, "modern"), for one device in one 4 KiB slot.
//!
//! Register map (virtio spec 4.2.2): control registers at 0x000-0x0ff are accessed as aligned
//! 32-bit words; other widths are ignored (reads return zeros). The device config space starts
//! at 0x100 and takes any width. The driver's initialisation sequence is enforced: ACKNOWLEDGE,
//! DRIVER, feature negotiation, FEATURES_OK (refused if the driver asked for a feature we did not
//! offer or did not accept `VIRTIO_F_VERSION_1`), queue setup, DRIVER_OK. Writes out of order are
//! ignored. A queue made ready with an invalid configuration (a size that is zero, too large or
//! not a power of two; misaligned rings; rings outside guest memory) stays not ready and the
//! device sets `DEVICE_NEEDS_RESET`; so does a device whose queue processing hits broken ring
//! state. Writing 0 to Status resets the device.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_INDIRECT_DESC, VRING_AVAIL_F_NO_INTERRUPT};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{DeviceError, GuestMemory, Queues, VirtioDevice};
use crate::devices::bus::BusDevice;

/// Bytes of MMIO address space one virtio-mmio device occupies.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register in the slot: register each queue's ioeventfd at
/// `base + QUEUE_NOTIFY_OFFSET` with the queue index as datamatch.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// "KUMO" in little-endian ASCII.
const VENDOR_ID: u32 = 0x4f4d_554b;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = QUEUE_NOTIFY_OFFSET;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_SHM_BASE_LOW: u64 = 0x0b8;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// Event data of the device's host fd in the event manager (queue events use their index).
const HOST_FD_DATA: u32 = u32::MAX;

/// Why a transport could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("cannot create an eventfd for a virtio-mmio device: {0}")]
    EventFd(#[source] std::io::Error),
    #[error(
        "virtio device offers queue {index} with maximum size {size}: not a power of two in 1..=32768"
    )]
    QueueMaxSize { index: usize, size: u16 },
    #[error("virtio device offers {0} queues: at most 64 are supported")]
    TooManyQueues(usize),
}

/// What the driver wrote for one queue before making it ready.
#[derive(Debug, Clone, Copy)]
struct QueueRegs {
    size: u32,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        QueueRegs {
            size: u32::from(max_size),
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

fn set_low(value: &mut u64, low: u32) {
    *value = (*value & !0xffff_ffff) | u64::from(low);
}

fn set_high(value: &mut u64, high: u32) {
    *value = (*value & 0xffff_ffff) | (u64::from(high) << 32);
}

/// One virtio device on the MMIO bus: its registers, virtqueues, queue events and interrupt.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    queues: Vec<Queue>,
    regs: Vec<QueueRegs>,
    queue_events: Vec<EventFd>,
    interrupt_event: EventFd,
    interrupt_status: u32,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    unknown_features_acked: bool,
    queue_sel: u32,
    shm_sel: u32,
    config_generation: u32,
    host_fd_registered: bool,
    /// DRIVER_OK was set; the event loop has yet to activate the device.
    activation_pending: bool,
    /// The device was activated (and not reset since).
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .field("interrupt_status", &self.interrupt_status)
            .finish()
    }
}

impl MmioTransport {
    /// Puts `device` behind a virtio-mmio register block; `mem` is guest memory.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemory) -> Result<Self, MmioError> {
        let max_sizes = device.queue_max_sizes().to_vec();
        if max_sizes.len() > 64 {
            return Err(MmioError::TooManyQueues(max_sizes.len()));
        }
        let mut queues = Vec::with_capacity(max_sizes.len());
        for (index, &size) in max_sizes.iter().enumerate() {
            queues.push(Queue::new(size).map_err(|_| MmioError::QueueMaxSize { index, size })?);
        }
        let queue_events = max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            queues,
            regs: max_sizes.iter().map(|&s| QueueRegs::new(s)).collect(),
            queue_events,
            interrupt_event: EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd)?,
            interrupt_status: 0,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            unknown_features_acked: false,
            queue_sel: 0,
            shm_sel: 0,
            config_generation: 0,
            host_fd_registered: false,
            activation_pending: false,
            activated: false,
        })
    }

    /// One eventfd per queue, in queue order: register each with KVM as an ioeventfd at
    /// `base + QUEUE_NOTIFY_OFFSET` with datamatch = its index.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The eventfd the device signals its interrupt on: register it with KVM as an irqfd on the
    /// slot's GSI.
    pub fn interrupt_event(&self) -> &EventFd {
        &self.interrupt_event
    }

    /// The virtio device id of the device behind this transport.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The device status register (VIRTIO_CONFIG_S_* bits).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The interrupt status register (VIRTIO_MMIO_INT_* bits not yet acknowledged).
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    fn offered_features(&self) -> u64 {
        self.device.device_features()
            | (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    }

    fn active(&self) -> bool {
        self.activated
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) == 0
    }

    /// Queue setup registers may be written: features accepted, driver not yet running.
    fn queue_setup_allowed(&self) -> bool {
        self.status
            & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED)
            == VIRTIO_CONFIG_S_FEATURES_OK
    }

    fn signal(&mut self, bit: u32) {
        self.interrupt_status |= bit;
        if let Err(e) = self.interrupt_event.write(1) {
            warn!("virtio-mmio: cannot signal the device's interrupt: {e}");
        }
    }

    /// Enters DEVICE_NEEDS_RESET and tells a running driver through a config-change interrupt.
    fn needs_reset(&mut self, why: &DeviceError) {
        if self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0 {
            warn!(
                "virtio device type {} needs a reset: {why}",
                self.device.device_type()
            );
        }
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.signal(VIRTIO_MMIO_INT_CONFIG);
        }
    }

    fn reset(&mut self) {
        debug!("virtio device type {} reset", self.device.device_type());
        self.device.reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        for (regs, queue) in self.regs.iter_mut().zip(&self.queues) {
            *regs = QueueRegs::new(queue.max_size());
        }
        self.interrupt_status = 0;
        self.status = 0;
        self.activation_pending = false;
        self.activated = false;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.unknown_features_acked = false;
        self.queue_sel = 0;
        self.shm_sel = 0;
    }

    fn selected(&self) -> Option<usize> {
        let index = self.queue_sel as usize;
        (index < self.queues.len()).then_some(index)
    }

    /// The driver wrote 1 to QueueReady: check what it configured and make the queue live.
    fn make_queue_ready(&mut self, index: usize) -> Result<(), DeviceError> {
        let regs = self.regs[index];
        let queue = &mut self.queues[index];
        let invalid = |source| DeviceError::Queue {
            queue: index,
            source,
        };
        let size =
            u16::try_from(regs.size).map_err(|_| invalid(virtio_queue::Error::InvalidSize))?;
        queue.try_set_size(size).map_err(invalid)?;
        queue
            .try_set_desc_table_address(GuestAddress(regs.desc))
            .map_err(invalid)?;
        queue
            .try_set_avail_ring_address(GuestAddress(regs.driver))
            .map_err(invalid)?;
        queue
            .try_set_used_ring_address(GuestAddress(regs.device))
            .map_err(invalid)?;
        queue.set_event_idx(false);
        queue.set_ready(true);
        if !queue.is_valid(&self.mem) {
            queue.set_ready(false);
            return Err(invalid(virtio_queue::Error::FindMemoryRegion));
        }
        Ok(())
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Reserved bits are dropped, NEEDS_RESET is the device's to set, and the driver only
        // ever sets bits, never clears them.
        const DRIVER_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_DRIVER_OK
            | VIRTIO_CONFIG_S_FAILED;
        let old = self.status;
        let value = (value & DRIVER_BITS) | (old & VIRTIO_CONFIG_S_NEEDS_RESET);
        if old & !value != 0 {
            debug!("virtio-mmio: driver tried to clear status bits {old:#x} -> {value:#x}");
            return;
        }
        let new = value & !old;
        let has = |bit: u32| value & bit != 0;
        if new & VIRTIO_CONFIG_S_DRIVER != 0 && !has(VIRTIO_CONFIG_S_ACKNOWLEDGE) {
            debug!("virtio-mmio: DRIVER before ACKNOWLEDGE ignored");
            return;
        }
        let mut value = value;
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.offered_features();
            if !has(VIRTIO_CONFIG_S_DRIVER)
                || self.driver_features & !offered != 0
                || self.unknown_features_acked
                || self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0
            {
                debug!(
                    "virtio-mmio: FEATURES_OK refused (driver features {:#x}, offered {offered:#x})",
                    self.driver_features
                );
                value &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 && value & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            debug!("virtio-mmio: DRIVER_OK before FEATURES_OK ignored");
            return;
        }
        self.status = value;
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 && self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0 {
            // This runs on a vCPU thread, whose seccomp filter allows little more than KVM_RUN:
            // the device is activated on the event loop (a TAP's offloads are an ioctl), which
            // the queue events wake. They also give anything the driver queued before DRIVER_OK
            // (or a net device waiting for receive buffers) a first pass.
            self.activation_pending = true;
            for event in &self.queue_events {
                if let Err(e) = event.write(1) {
                    warn!("virtio-mmio: cannot wake the event loop to activate the device: {e}");
                }
            }
        }
    }

    /// Activates the device if the driver set DRIVER_OK since the last event (event loop).
    fn activate_if_pending(&mut self) {
        if !std::mem::take(&mut self.activation_pending)
            || self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
            || self.status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) != 0
        {
            return;
        }
        match self.device.activate(self.driver_features) {
            Ok(()) => self.activated = true,
            Err(e) => self.needs_reset(&e),
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let selected = self.selected();
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => selected.map_or(0, |i| u32::from(self.queues[i].max_size())),
            REG_QUEUE_READY => selected.map_or(0, |i| u32::from(self.queues[i].ready())),
            REG_INTERRUPT_STATUS => self.interrupt_status,
            REG_STATUS => self.status,
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => {
                // No shared memory regions: every region reads as length -1.
                u32::MAX
            }
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES => {
                let negotiating = self.status
                    & (VIRTIO_CONFIG_S_DRIVER
                        | VIRTIO_CONFIG_S_FEATURES_OK
                        | VIRTIO_CONFIG_S_FAILED)
                    == VIRTIO_CONFIG_S_DRIVER;
                if !negotiating {
                    debug!("virtio-mmio: DriverFeatures written outside negotiation, ignored");
                    return;
                }
                match self.driver_features_sel {
                    0 => set_low(&mut self.driver_features, value),
                    1 => set_high(&mut self.driver_features, value),
                    // Features above bit 63 do not exist: accepting one is accepting something
                    // we did not offer, so FEATURES_OK must fail.
                    _ if value != 0 => self.unknown_features_acked = true,
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => {
                let Some(index) = self.selected() else {
                    debug!("virtio-mmio: setup of nonexistent queue {}", self.queue_sel);
                    return;
                };
                if !self.queue_setup_allowed() || self.queues[index].ready() {
                    debug!("virtio-mmio: queue {index} setup written at the wrong time, ignored");
                    return;
                }
                let regs = &mut self.regs[index];
                match offset {
                    REG_QUEUE_NUM => regs.size = value,
                    REG_QUEUE_DESC_LOW => set_low(&mut regs.desc, value),
                    REG_QUEUE_DESC_HIGH => set_high(&mut regs.desc, value),
                    REG_QUEUE_DRIVER_LOW => set_low(&mut regs.driver, value),
                    REG_QUEUE_DRIVER_HIGH => set_high(&mut regs.driver, value),
                    REG_QUEUE_DEVICE_LOW => set_low(&mut regs.device, value),
                    _ => set_high(&mut regs.device, value),
                }
            }
            REG_QUEUE_READY => {
                let Some(index) = self.selected() else {
                    return;
                };
                if value == 0 {
                    // Taking a queue down: allowed while setting up, and as part of teardown.
                    if !self.active() {
                        self.queues[index].set_ready(false);
                    }
                    return;
                }
                if value != 1 || !self.queue_setup_allowed() || self.queues[index].ready() {
                    debug!("virtio-mmio: QueueReady={value} for queue {index} ignored");
                    return;
                }
                if let Err(e) = self.make_queue_ready(index) {
                    self.needs_reset(&e);
                }
            }
            REG_QUEUE_NOTIFY => match self.queue_events.get(value as usize) {
                Some(event) => {
                    if let Err(e) = event.write(1) {
                        warn!("virtio-mmio: cannot signal queue {value}: {e}");
                    }
                }
                None => debug!("virtio-mmio: notify of nonexistent queue {value}"),
            },
            REG_INTERRUPT_ACK => self.interrupt_status &= !value,
            REG_STATUS => self.write_status(value),
            REG_SHM_SEL => self.shm_sel = value,
            _ => debug!("virtio-mmio: write of read-only or unknown register {offset:#x}"),
        }
    }

    /// Handles a signal on queue `index`'s event (from the ioeventfd or a QueueNotify write).
    pub fn process_queue_event(&mut self, index: usize) {
        let Some(event) = self.queue_events.get(index) else {
            return;
        };
        // Drain the counter; a read error means it was already zero (spurious wakeup).
        let _ = event.read();
        self.activate_if_pending();
        let active = self.active();
        let mut queues = Queues::new(&self.mem, &mut self.queues, active);
        let result = self.device.process_queue(index, &mut queues);
        let used = queues.used_mask();
        match result {
            Ok(true) => {
                // The device stopped after its budget: come back after the other events.
                let _ = self.queue_events[index].write(1);
            }
            Ok(false) => {}
            Err(e) => self.needs_reset(&e),
        }
        self.notify_used(used);
    }

    /// Handles input (or an error) on the device's host fd.
    pub fn process_host_event(&mut self, hangup_or_error: bool) {
        self.activate_if_pending();
        let active = self.active();
        let mut queues = Queues::new(&self.mem, &mut self.queues, active);
        let result = self.device.process_host_event(hangup_or_error, &mut queues);
        let used = queues.used_mask();
        if let Err(e) = result {
            self.needs_reset(&e);
        }
        self.notify_used(used);
    }

    fn notify_used(&mut self, used: u64) {
        if used == 0 {
            return;
        }
        let mut notify = false;
        for (index, queue) in self.queues.iter_mut().enumerate() {
            if used & (1 << index) == 0 {
                continue;
            }
            // Without VIRTIO_RING_F_EVENT_IDX this is always true (after a fence); keep asking
            // the queue so that offering the feature later needs no change here.
            if !queue.needs_notification(&self.mem).unwrap_or(true) {
                continue;
            }
            // The driver may ask for no interrupts (VRING_AVAIL_F_NO_INTERRUPT), e.g. while
            // it polls the used ring itself; virtio-queue leaves that flag to us.
            let flags: u16 = self
                .mem
                .read_obj(GuestAddress(queue.avail_ring()))
                .unwrap_or(0);
            notify |= u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0;
        }
        if notify {
            self.signal(VIRTIO_MMIO_INT_VRING);
        }
    }

    /// Adds or removes the host fd from `ops` to match what the device wants now.
    fn sync_host_fd(&mut self, ops: &mut EventOps) {
        let Some(fd) = self.device.host_fd() else {
            return;
        };
        let wanted = self.device.wants_host_events();
        if wanted == self.host_fd_registered {
            return;
        }
        let events = Events::with_data_raw(fd, HOST_FD_DATA, EventSet::IN);
        let result = if wanted {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match result {
            Ok(()) => self.host_fd_registered = wanted,
            Err(e) => warn!("virtio-mmio: cannot update interest in the device's host fd: {e}"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            debug!(
                "virtio-mmio: {}-byte read at {offset:#x} is not an aligned 32-bit access",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!(
                "virtio-mmio: {}-byte write at {offset:#x} is not a 32-bit access",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            debug!("virtio-mmio: misaligned write at {offset:#x} ignored");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

impl MutEventSubscriber for MmioTransport {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, event) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(event, index as u32, EventSet::IN)) {
                warn!("virtio-mmio: cannot watch queue {index}'s event: {e}");
            }
        }
        if let Some(fd) = self.device.host_fd() {
            match ops.add(Events::with_data_raw(fd, HOST_FD_DATA, EventSet::IN)) {
                Ok(()) => self.host_fd_registered = true,
                Err(e) => warn!("virtio-mmio: cannot watch the device's host fd: {e}"),
            }
        }
        self.sync_host_fd(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        if data == HOST_FD_DATA {
            let bad = events
                .event_set()
                .intersects(EventSet::ERROR | EventSet::HANG_UP);
            self.process_host_event(bad);
        } else if let Some(event) = self.queue_events.get(data as usize)
            && event.as_raw_fd() == events.fd()
        {
            self.process_queue_event(data as usize);
        }
        self.sync_host_fd(ops);
    }
}
