//! A minimal virtio-mmio (version 2) driver for kumo's tiny test guests: device discovery from
//! the command line, feature negotiation, split virtqueues in identity-mapped statics, and an
//! interrupt handler that acknowledges the device. Shared by the `virtio_*` guests through
//! `#[path = "virtio_driver/mod.rs"] mod virtio_driver;`.
#![allow(dead_code)]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest::dma::DmaBuffer;
use guest::io::{fence, read8, read32, write16, write32, write64};
use guest::{apic, boot, interrupts, println};

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

const STATUS_ACK: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 64;

/// How long a guest waits for the device before it gives up: 5 s of 100 Hz timer ticks.
pub const WAIT_TICKS: u32 = 500;
const TIMER_VECTOR: u8 = 0x30;

/// One virtio-mmio device from a `virtio_mmio.device=` entry.
#[derive(Clone, Copy)]
pub struct Device {
    pub base: u64,
    pub irq: u32,
}

/// The first device on the command line with virtio device id `device_id`.
pub fn find(device_id: u32) -> Option<Device> {
    for d in boot::virtio_mmio_devices() {
        let magic = read32(d.base);
        let version = read32(d.base + 4);
        let id = read32(d.base + 8);
        println!(
            "virtio: slot {:#x} irq {:#x}: magic {:#x} version {:#x} device id {:#x}",
            d.base, d.irq, magic, version, id
        );
        if magic == 0x7472_6976 && version == 2 && id == device_id {
            return Some(Device {
                base: d.base,
                irq: d.irq,
            });
        }
    }
    None
}

impl Device {
    pub fn read(&self, offset: u64) -> u32 {
        read32(self.base + offset)
    }

    pub fn write(&self, offset: u64, value: u32) {
        write32(self.base + offset, value)
    }

    pub fn status(&self) -> u32 {
        self.read(0x70)
    }

    /// Resets the device and negotiates: accepts the offered features among `wanted`
    /// (VERSION_1 is always wanted). Returns the accepted features.
    pub fn init(&self, wanted: u64) -> Result<u64, &'static str> {
        self.write(0x70, 0);
        if self.status() != 0 {
            return Err("status did not reset to 0");
        }
        self.write(0x70, STATUS_ACK);
        self.write(0x70, STATUS_ACK | STATUS_DRIVER);
        self.write(0x14, 0);
        let low = self.read(0x10) as u64;
        self.write(0x14, 1);
        let high = self.read(0x10) as u64;
        let offered = low | (high << 32);
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err("device does not offer VIRTIO_F_VERSION_1");
        }
        let accepted = offered & (wanted | VIRTIO_F_VERSION_1);
        self.write(0x24, 0);
        self.write(0x20, accepted as u32);
        self.write(0x24, 1);
        self.write(0x20, (accepted >> 32) as u32);
        self.write(0x70, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
        if self.status() & STATUS_FEATURES_OK == 0 {
            return Err("device refused FEATURES_OK");
        }
        println!("virtio: offered {:#x}, accepted {:#x}", offered, accepted);
        Ok(accepted)
    }

    /// Sets DRIVER_OK; fails if the device reports it needs a reset.
    pub fn driver_ok(&self) -> Result<(), &'static str> {
        self.write(
            0x70,
            STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        if self.status() & STATUS_NEEDS_RESET != 0 {
            return Err("device needs a reset after DRIVER_OK");
        }
        Ok(())
    }

    pub fn config8(&self, offset: u64) -> u8 {
        read8(self.base + 0x100 + offset)
    }

    pub fn config32(&self, offset: u64) -> u32 {
        read32(self.base + 0x100 + offset)
    }

    pub fn config64(&self, offset: u64) -> u64 {
        // Config generation makes a two-part read consistent.
        loop {
            let generation = self.read(0xfc);
            let low = self.config32(offset) as u64;
            let high = self.config32(offset + 4) as u64;
            if self.read(0xfc) == generation {
                return low | (high << 32);
            }
        }
    }

    /// Tells the device queue `index` has new buffers (a 4-byte write: the VMM's ioeventfd).
    pub fn notify(&self, index: u32) {
        fence();
        self.write(0x50, index);
    }

    /// Routes the device's interrupt line to `vector` and counts its interrupts in
    /// [`interrupt_count`], acknowledging each at the device.
    pub fn enable_interrupts(&self, vector: u8) {
        IRQ_DEVICE_BASE.store(self.base, Ordering::SeqCst);
        apic::enable_local();
        interrupts::set_handler(vector, on_interrupt);
        apic::route(self.irq, vector);
        interrupts::enable();
    }
}

static TICKS: AtomicU32 = AtomicU32::new(0);

fn on_tick(_: u8) {
    TICKS.fetch_add(1, Ordering::SeqCst);
}

/// Starts the PIT at 100 Hz (GSI 0, and 2 where KVM wires it there) so that waits can sleep
/// with `hlt` and still time out. Guest code runs slowly under kvm-pvm (it is emulated), so
/// guests sleep instead of spinning.
pub fn start_timer() {
    apic::enable_local();
    interrupts::set_handler(TIMER_VECTOR, on_tick);
    apic::route(0, TIMER_VECTOR);
    apic::route(2, TIMER_VECTOR);
    let divisor: u16 = 11932; // 1193182 Hz / 100
    guest::io::outb(0x43, 0x34);
    guest::io::outb(0x40, (divisor & 0xff) as u8);
    guest::io::outb(0x40, (divisor >> 8) as u8);
    interrupts::enable();
}

/// Timer ticks since [`start_timer`].
pub fn ticks() -> u32 {
    TICKS.load(Ordering::SeqCst)
}

/// Sleeps (`sti; hlt`) until `done()` or `ticks` timer ticks have passed; returns `done()`.
pub fn wait_until(mut done: impl FnMut() -> bool, ticks: u32) -> bool {
    let start = self::ticks();
    loop {
        if done() {
            return true;
        }
        if self::ticks().wrapping_sub(start) >= ticks {
            return done();
        }
        interrupts::wait();
    }
}

static IRQ_DEVICE_BASE: AtomicU64 = AtomicU64::new(0);
static IRQ_COUNT: AtomicU32 = AtomicU32::new(0);
static IRQ_STATUS_SEEN: AtomicU32 = AtomicU32::new(0);

fn on_interrupt(_: u8) {
    let base = IRQ_DEVICE_BASE.load(Ordering::SeqCst);
    let status = read32(base + 0x60);
    write32(base + 0x64, status);
    IRQ_STATUS_SEEN.fetch_or(status, Ordering::SeqCst);
    IRQ_COUNT.fetch_add(1, Ordering::SeqCst);
}

/// Interrupts received from the device so far.
pub fn interrupt_count() -> u32 {
    IRQ_COUNT.load(Ordering::SeqCst)
}

/// The InterruptStatus bits seen by the handler so far.
pub fn interrupt_status_seen() -> u32 {
    IRQ_STATUS_SEEN.load(Ordering::SeqCst)
}

/// Queue memory: descriptor table and available ring in the first page, used ring in the
/// second. Holds up to 64 entries.
pub type QueueMemory = DmaBuffer<8192>;

/// A split virtqueue of `size` entries in `mem`.
pub struct Queue {
    mem: &'static QueueMemory,
    index: u32,
    size: u16,
    avail_idx: u16,
    last_used: u16,
}

impl Queue {
    fn desc_addr(&self) -> u64 {
        self.mem.phys_addr()
    }
    fn avail_addr(&self) -> u64 {
        self.mem.phys_addr() + 16 * self.size as u64
    }
    fn used_addr(&self) -> u64 {
        self.mem.phys_addr() + 4096
    }

    /// Configures queue `index` of `dev` with `size` entries in `mem` and makes it ready.
    pub fn setup(
        dev: &Device,
        index: u32,
        size: u16,
        mem: &'static QueueMemory,
    ) -> Result<Queue, &'static str> {
        assert!(size <= 64 && size.is_power_of_two());
        dev.write(0x30, index);
        if dev.read(0x44) != 0 {
            return Err("queue already ready");
        }
        let max = dev.read(0x34);
        if max < size as u32 {
            return Err("queue too small");
        }
        let q = Queue {
            mem,
            index,
            size,
            avail_idx: 0,
            last_used: 0,
        };
        dev.write(0x38, size as u32);
        for (low, addr) in [
            (0x80, q.desc_addr()),
            (0x90, q.avail_addr()),
            (0xa0, q.used_addr()),
        ] {
            dev.write(low, addr as u32);
            dev.write(low + 4, (addr >> 32) as u32);
        }
        dev.write(0x44, 1);
        if dev.read(0x44) != 1 {
            return Err("queue did not become ready");
        }
        Ok(q)
    }

    /// Writes descriptor `i` as is (any address, length, flags and next: also garbage).
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc_addr() + 16 * i as u64;
        write64(d, addr);
        write32(d + 8, len);
        write16(d + 12, flags);
        write16(d + 14, next);
    }

    /// Writes `bufs` (address, length, device-writable) as a chain in descriptors
    /// `first..first + bufs.len()`.
    pub fn set_chain(&self, first: u16, bufs: &[(u64, u32, bool)]) {
        for (k, &(addr, len, writable)) in bufs.iter().enumerate() {
            let i = first + k as u16;
            let mut flags = if writable { DESC_F_WRITE } else { 0 };
            if k + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            self.set_desc(i, addr, len, flags, i + 1);
        }
    }

    /// Makes the chain starting at descriptor `head` available and notifies the device.
    pub fn publish(&mut self, dev: &Device, head: u16) {
        let slot = self.avail_addr() + 4 + 2 * (self.avail_idx % self.size) as u64;
        write16(slot, head);
        fence();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        write16(self.avail_addr() + 2, self.avail_idx);
        dev.notify(self.index);
    }

    /// The used ring's index as the device last wrote it.
    pub fn used_idx(&self) -> u16 {
        fence();
        guest::io::read16(self.used_addr() + 2)
    }

    /// The next used entry `(descriptor id, length)`, waiting up to [`WAIT_TICKS`] timer ticks.
    pub fn wait_used(&mut self) -> Option<(u32, u32)> {
        self.wait_used_for(WAIT_TICKS)
    }

    /// The next used entry, waiting up to `ticks` timer ticks (sleeping between interrupts).
    pub fn wait_used_for(&mut self, ticks: u32) -> Option<(u32, u32)> {
        let last = self.last_used;
        if !wait_until(|| self.used_idx() != last, ticks) {
            return None;
        }
        let elem = self.used_addr() + 4 + 8 * (self.last_used % self.size) as u64;
        self.last_used = self.last_used.wrapping_add(1);
        Some((read32(elem), read32(elem + 4)))
    }
}
