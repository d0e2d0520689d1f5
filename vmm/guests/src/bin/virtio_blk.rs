//! A virtio-blk driver: finds the disk on the command line, writes a pattern to sector 3 and
//! reads it back, flushes, reads the serial, then sends requests a buggy or hostile driver
//! might (past the end, a buffer outside memory, a looping chain, garbage descriptors) and
//! checks that each fails alone while the device keeps working. On a read-only disk it checks
//! that the write fails with VIRTIO_BLK_S_IOERR.
//!
//! Serial lines the test (vmm/tests/virtio_blk.rs) checks: `virtio-blk: PASS` at the end,
//! `virtio-blk: FAIL ...` on the first failed check.
#![no_std]
#![no_main]

#[path = "virtio_driver/mod.rs"]
mod virtio_driver;

use guest::dma::DmaBuffer;
use guest::println;
use virtio_driver::{Device, Queue, QueueMemory};

guest::entry!(main);

const VIRTIO_ID_BLOCK: u32 = 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// The sector the test expects the pattern in.
const PATTERN_SECTOR: u64 = 3;
const VECTOR: u8 = 0x40;

static QUEUE: QueueMemory = DmaBuffer::new();
/// Header (16 bytes) at 0, status byte at 64, get-id buffer at 128.
static REQ: DmaBuffer<4096> = DmaBuffer::new();
static WRITE_BUF: DmaBuffer<4096> = DmaBuffer::new();
static READ_BUF: DmaBuffer<4096> = DmaBuffer::new();

/// Byte `i` of the pattern (the test computes the same).
fn pattern(i: usize) -> u8 {
    if i < 16 {
        b"KUMO-BLK-PATTERN"[i]
    } else {
        ((i * 7 + 0x5a) & 0xff) as u8
    }
}

macro_rules! check {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            println!("virtio-blk: FAIL {}", format_args!($($msg)*));
            return;
        }
    };
}

struct Disk {
    dev: Device,
    queue: Queue,
}

impl Disk {
    fn header(&self, request_type: u32, sector: u64) -> u64 {
        let hdr = REQ.phys_addr();
        guest::io::write32(hdr, request_type);
        guest::io::write32(hdr + 4, 0);
        guest::io::write64(hdr + 8, sector);
        REQ.write(64, 0xee);
        hdr
    }

    fn status(&self) -> u8 {
        REQ.read(64)
    }

    /// Runs a standard request: header, optional data buffer, status. Returns (status, used len).
    fn request(
        &mut self,
        request_type: u32,
        sector: u64,
        data: Option<(u64, u32, bool)>,
    ) -> Option<(u8, u32)> {
        let hdr = self.header(request_type, sector);
        let status = (REQ.phys_addr() + 64, 1, true);
        match data {
            Some(d) => self.queue.set_chain(0, &[(hdr, 16, false), d, status]),
            None => self.queue.set_chain(0, &[(hdr, 16, false), status]),
        }
        self.queue.publish(&self.dev, 0);
        let (id, len) = self.queue.wait_used()?;
        if id != 0 {
            println!("virtio-blk: used id {:#x} (expected 0)", id);
            return None;
        }
        Some((self.status(), len))
    }
}

fn main() {
    let Some(dev) = virtio_driver::find(VIRTIO_ID_BLOCK) else {
        println!("virtio-blk: FAIL no virtio-blk device on the command line");
        return;
    };
    let features = match dev.init(F_FLUSH | F_RO) {
        Ok(f) => f,
        Err(e) => {
            println!("virtio-blk: FAIL {}", e);
            return;
        }
    };
    let read_only = features & F_RO != 0;
    let capacity = dev.config64(0);
    println!(
        "virtio-blk: capacity {:#x} sectors, read-only {}",
        capacity, read_only
    );
    let queue = match Queue::setup(&dev, 0, 8, &QUEUE) {
        Ok(q) => q,
        Err(e) => {
            println!("virtio-blk: FAIL queue setup: {}", e);
            return;
        }
    };
    if let Err(e) = dev.driver_ok() {
        println!("virtio-blk: FAIL {}", e);
        return;
    }
    dev.enable_interrupts(VECTOR);
    virtio_driver::start_timer();
    let mut disk = Disk { dev, queue };
    check!(
        capacity > PATTERN_SECTOR,
        "disk too small ({:#x} sectors)",
        capacity
    );

    // Write the pattern to sector 3.
    for i in 0..512 {
        WRITE_BUF.write(i, pattern(i));
    }
    let wrote = disk.request(
        T_OUT,
        PATTERN_SECTOR,
        Some((WRITE_BUF.phys_addr(), 512, false)),
    );
    check!(wrote.is_some(), "write request never completed");
    let (status, _) = wrote.unwrap();
    if read_only {
        check!(
            status == S_IOERR,
            "write to a read-only disk returned status {:#x}",
            status
        );
        println!("virtio-blk: write to the read-only disk failed with IOERR as it must");
    } else {
        check!(status == S_OK, "write returned status {:#x}", status);
        println!("virtio-blk: wrote the pattern to sector 3");
    }

    // Read it back.
    for i in 0..512 {
        READ_BUF.write(i, 0);
    }
    let read = disk.request(
        T_IN,
        PATTERN_SECTOR,
        Some((READ_BUF.phys_addr(), 512, true)),
    );
    check!(read.is_some(), "read request never completed");
    let (status, len) = read.unwrap();
    check!(
        status == S_OK && len == 513,
        "read returned status {:#x} length {:#x}",
        status,
        len
    );
    if !read_only {
        let mut mismatches = 0;
        for i in 0..512 {
            if READ_BUF.read(i) != pattern(i) {
                mismatches += 1;
            }
        }
        check!(
            mismatches == 0,
            "read back {:#x} bytes that differ from the pattern",
            mismatches
        );
        println!("virtio-blk: read the pattern back from sector 3");
    }

    // Flush and serial.
    let flushed = disk.request(T_FLUSH, 0, None);
    check!(flushed == Some((S_OK, 1)), "flush returned {:x?}", flushed);
    let id = disk.request(T_GET_ID, 0, Some((REQ.phys_addr() + 128, 20, true)));
    check!(matches!(id, Some((S_OK, 21))), "get-id returned {:x?}", id);
    let mut serial = [0u8; 20];
    for (i, b) in serial.iter_mut().enumerate() {
        *b = REQ.read(128 + i);
    }
    let end = serial.iter().position(|&b| b == 0).unwrap_or(20);
    println!(
        "virtio-blk: serial {:x?}",
        core::str::from_utf8(&serial[..end]).unwrap_or("?")
    );

    // What a buggy or hostile driver might send: each request fails alone.
    let past_end = disk.request(T_IN, capacity, Some((READ_BUF.phys_addr(), 512, true)));
    check!(
        past_end.map(|r| r.0) == Some(S_IOERR),
        "read past the end returned {:x?}",
        past_end
    );
    let huge_sector = disk.request(T_OUT, u64::MAX, Some((WRITE_BUF.phys_addr(), 512, false)));
    check!(
        huge_sector.map(|r| r.0) == Some(S_IOERR),
        "sector u64::MAX returned {:x?}",
        huge_sector
    );
    let outside = disk.request(T_IN, 0, Some((0x80_0000_0000, 512, true)));
    check!(
        outside.map(|r| r.0) == Some(S_IOERR),
        "buffer outside memory returned {:x?}",
        outside
    );
    let partial = disk.request(T_IN, 0, Some((READ_BUF.phys_addr(), 100, true)));
    check!(
        partial.map(|r| r.0) == Some(S_IOERR),
        "partial sector returned {:x?}",
        partial
    );
    let unsupported = disk.request(0x7777, 0, None);
    check!(
        unsupported.map(|r| r.0) == Some(S_UNSUPP),
        "unknown type returned {:x?}",
        unsupported
    );

    // A chain that loops: returned unprocessed (length 0), status untouched.
    let hdr = disk.header(T_IN, 0);
    disk.queue
        .set_desc(0, hdr, 16, virtio_driver::DESC_F_NEXT, 1);
    disk.queue.set_desc(
        1,
        REQ.phys_addr() + 64,
        1,
        virtio_driver::DESC_F_NEXT | virtio_driver::DESC_F_WRITE,
        0,
    );
    disk.queue.publish(&disk.dev, 0);
    let looped = disk.queue.wait_used();
    check!(
        looped == Some((0, 0)) && disk.status() == 0xee,
        "looping chain returned {:x?}",
        looped
    );
    // Garbage descriptors: a next index outside the queue, and a readable status.
    disk.queue
        .set_desc(0, hdr, 16, virtio_driver::DESC_F_NEXT, 4000);
    disk.queue.publish(&disk.dev, 0);
    check!(
        disk.queue.wait_used() == Some((0, 0)),
        "out-of-range next index was not refused"
    );
    disk.queue
        .set_chain(0, &[(hdr, 16, false), (REQ.phys_addr() + 64, 1, false)]);
    disk.queue.publish(&disk.dev, 0);
    check!(
        disk.queue.wait_used() == Some((0, 0)),
        "chain without a writable status was not refused"
    );
    check!(
        disk.dev.status() & virtio_driver::STATUS_NEEDS_RESET == 0,
        "device needs a reset"
    );
    println!("virtio-blk: bad requests failed one by one");

    // The device still works.
    let again = disk.request(
        T_IN,
        PATTERN_SECTOR,
        Some((READ_BUF.phys_addr(), 512, true)),
    );
    check!(
        again.map(|r| r.0) == Some(S_OK),
        "read after bad requests returned {:x?}",
        again
    );

    // Interrupts arrived (irqfd -> I/O APIC -> this CPU).
    virtio_driver::wait_until(|| virtio_driver::interrupt_count() > 0, 100);
    check!(
        virtio_driver::interrupt_count() > 0,
        "no interrupt from the device"
    );
    println!(
        "virtio-blk: {:#x} interrupts, status bits {:#x}",
        virtio_driver::interrupt_count(),
        virtio_driver::interrupt_status_seen()
    );

    // Bad register writes: a queue size that is not a power of two, writes to read-only
    // registers, accesses that are not 32 bits wide, a notify of a queue that does not exist.
    if let Err(e) = abuse_registers(&disk.dev) {
        check!(false, "{}", e);
    }
    println!("virtio-blk: bad register writes needed a reset, which recovered the device");

    // Set up again from scratch: the device works as before.
    // SAFETY: the device was reset, so it no longer uses the queue memory.
    unsafe { QUEUE.bytes_mut() }.fill(0);
    let recovered = disk.dev.init(F_FLUSH | F_RO).and_then(|_| {
        let q = Queue::setup(&disk.dev, 0, 8, &QUEUE)?;
        disk.dev.driver_ok()?;
        Ok(q)
    });
    match recovered {
        Ok(q) => disk.queue = q,
        Err(e) => check!(false, "setting up again after the reset: {}", e),
    }
    let after = disk.request(
        T_IN,
        PATTERN_SECTOR,
        Some((READ_BUF.phys_addr(), 512, true)),
    );
    check!(
        after.map(|r| r.0) == Some(S_OK),
        "read after the reset returned {:x?}",
        after
    );
    println!("virtio-blk: PASS");
}

/// Drives the registers the way a confused driver would; the device must refuse, report
/// DEVICE_NEEDS_RESET where the spec says so, and come back after a reset.
fn abuse_registers(dev: &Device) -> Result<(), &'static str> {
    dev.write(0x70, 0);
    dev.init(F_FLUSH)?;
    dev.write(0x30, 0);
    dev.write(0x38, 12); // not a power of two
    for (low, addr) in [
        (0x80u64, QUEUE.phys_addr()),
        (0x90, QUEUE.phys_addr() + 128),
        (0xa0, QUEUE.phys_addr() + 4096),
    ] {
        dev.write(low, addr as u32);
        dev.write(low + 4, (addr >> 32) as u32);
    }
    dev.write(0x44, 1);
    if dev.read(0x44) != 0 {
        return Err("a queue of size 12 became ready");
    }
    if dev.status() & virtio_driver::STATUS_NEEDS_RESET == 0 {
        return Err("a queue of size 12 did not set DEVICE_NEEDS_RESET");
    }
    // Read-only registers, odd widths, nonexistent queues, the config space.
    dev.write(0x00, 0xdead_beef);
    dev.write(0x08, 7);
    dev.write(0x34, 0xffff_ffff);
    dev.write(0xfc, 1);
    guest::io::write8(dev.base + 0x70, 0xff);
    guest::io::write16(dev.base + 0x44, 1);
    guest::io::write64(dev.base + 0x30, u64::MAX);
    dev.write(0x50, 7);
    dev.write(0x30, 99);
    dev.write(0x44, 1);
    dev.write(0x100, 0xffff_ffff);
    dev.write(0xffc, 0x1234_5678);
    if dev.read(0x00) != 0x7472_6976 || dev.read(0x08) != VIRTIO_ID_BLOCK {
        return Err("identification registers changed");
    }
    if dev.config64(0) == 0 {
        return Err("the capacity changed");
    }
    dev.write(0x70, 0);
    if dev.status() != 0 {
        return Err("reset did not clear the status");
    }
    Ok(())
}
