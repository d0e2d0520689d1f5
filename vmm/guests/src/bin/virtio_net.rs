//! A virtio-net driver: finds the NIC on the command line, reads its MAC, posts receive
//! buffers, and broadcasts a `kumo-guest-hello` frame (ethertype 0x88b5) until a
//! `kumo-host-hello` frame addressed to its MAC arrives. Then it sends what a buggy or hostile
//! driver might (a transmit chain with a device-writable buffer, one shorter than the
//! virtio-net header, one larger than any frame) and a last `kumo-guest-bye` frame, which shows
//! the device survived them.
//!
//! Serial lines the test (vmm/tests/virtio_net.rs) checks: `virtio-net: PASS` at the end,
//! `virtio-net: FAIL ...` on the first failed check.
#![no_std]
#![no_main]

#[path = "virtio_driver/mod.rs"]
mod virtio_driver;

use guest::dma::DmaBuffer;
use guest::println;
use virtio_driver::{Device, Queue, QueueMemory};

guest::entry!(main);

const VIRTIO_ID_NET: u32 = 1;
const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
const HDR: usize = 12;
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const RX_BUFS: u16 = 4;
const RX_BUF_LEN: usize = 2048;
const VECTOR: u8 = 0x41;

static RX_QUEUE: QueueMemory = DmaBuffer::new();
static TX_QUEUE: QueueMemory = DmaBuffer::new();
static RX: DmaBuffer<{ RX_BUFS as usize * RX_BUF_LEN }> = DmaBuffer::new();
static TX: DmaBuffer<4096> = DmaBuffer::new();

macro_rules! fail {
    ($($msg:tt)*) => {{
        println!("virtio-net: FAIL {}", format_args!($($msg)*));
        return;
    }};
}

struct Nic {
    dev: Device,
    rx: Queue,
    tx: Queue,
    mac: [u8; 6],
}

impl Nic {
    /// Sends a broadcast frame carrying `payload`; returns whether the device returned it.
    fn send(&mut self, payload: &[u8]) -> bool {
        let mut len = HDR;
        // A zeroed virtio_net_hdr_v1: no offloads.
        for i in 0..HDR {
            TX.write(i, 0);
        }
        for (i, b) in [0xffu8; 6]
            .iter()
            .chain(self.mac.iter())
            .chain(ETHERTYPE.iter())
            .enumerate()
        {
            TX.write(HDR + i, *b);
        }
        len += 14;
        for (i, b) in payload.iter().enumerate() {
            TX.write(len + i, *b);
        }
        len += payload.len();
        // Pad to the 60-byte Ethernet minimum.
        while len < HDR + 60 {
            TX.write(len, 0);
            len += 1;
        }
        self.tx.set_chain(0, &[(TX.phys_addr(), len as u32, false)]);
        self.tx.publish(&self.dev, 0);
        self.tx.wait_used() == Some((0, 0))
    }

    /// Gives receive buffer `i` (descriptor `i`) to the device.
    fn post_rx(&mut self, i: u16) {
        let addr = RX.phys_addr() + i as u64 * RX_BUF_LEN as u64;
        self.rx.set_chain(i, &[(addr, RX_BUF_LEN as u32, true)]);
        self.rx.publish(&self.dev, i);
    }

    /// Waits a while for a frame; checks it is the host's hello to us and re-posts the buffer.
    fn receive_hello(&mut self, ticks: u32) -> Option<bool> {
        let (id, len) = self.rx.wait_used_for(ticks)?;
        let id = id as u16;
        if id >= RX_BUFS {
            println!("virtio-net: used id {:#x} out of range", id);
            return Some(false);
        }
        let base = id as usize * RX_BUF_LEN;
        let at = |i: usize| RX.read(base + i);
        let frame_len = len as usize;
        let mut ok = (HDR + 14 + 15..=RX_BUF_LEN).contains(&frame_len);
        ok = ok && (0..6).all(|i| at(HDR + i) == self.mac[i]);
        ok = ok && at(HDR + 12) == ETHERTYPE[0] && at(HDR + 13) == ETHERTYPE[1];
        ok = ok
            && b"kumo-host-hello"
                .iter()
                .enumerate()
                .all(|(i, b)| at(HDR + 14 + i) == *b);
        // num_buffers is 1 in a device that does not merge buffers.
        ok = ok && at(10) == 1 && at(11) == 0;
        if !ok {
            println!(
                "virtio-net: ignoring a frame of {:#x} bytes that is not the host's hello",
                len
            );
        }
        self.post_rx(id);
        Some(ok)
    }
}

fn main() {
    let Some(dev) = virtio_driver::find(VIRTIO_ID_NET) else {
        fail!("no virtio-net device on the command line");
    };
    let features = match dev.init(F_MAC | F_STATUS) {
        Ok(f) => f,
        Err(e) => fail!("{}", e),
    };
    if features & F_MAC == 0 {
        fail!("the device does not offer VIRTIO_NET_F_MAC");
    }
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = dev.config8(i as u64);
    }
    let link = if features & F_STATUS != 0 {
        dev.config8(6) & 1
    } else {
        1
    };
    // Spelled out by hand: core's padded integer formatting uses SSE, which kvm-pvm cannot run.
    let mut text = [b':'; 17];
    for (i, b) in mac.iter().enumerate() {
        text[3 * i] = b"0123456789abcdef"[(b >> 4) as usize];
        text[3 * i + 1] = b"0123456789abcdef"[(b & 15) as usize];
    }
    println!(
        "virtio-net: mac {}, link {}",
        core::str::from_utf8(&text).unwrap_or("?"),
        if link == 1 { "up" } else { "down" }
    );
    let rx = match Queue::setup(&dev, 0, 8, &RX_QUEUE) {
        Ok(q) => q,
        Err(e) => fail!("receive queue: {}", e),
    };
    let tx = match Queue::setup(&dev, 1, 8, &TX_QUEUE) {
        Ok(q) => q,
        Err(e) => fail!("transmit queue: {}", e),
    };
    if let Err(e) = dev.driver_ok() {
        fail!("{}", e);
    }
    dev.enable_interrupts(VECTOR);
    virtio_driver::start_timer();
    let mut nic = Nic { dev, rx, tx, mac };
    for i in 0..RX_BUFS {
        nic.post_rx(i);
    }

    // Say hello until the host answers.
    let mut answered = false;
    for _ in 0..100 {
        if !nic.send(b"kumo-guest-hello") {
            fail!("the device did not return a transmit buffer");
        }
        if nic.receive_hello(20) == Some(true) {
            answered = true;
            break;
        }
    }
    if !answered {
        fail!("no kumo-host-hello frame arrived");
    }
    println!("virtio-net: sent kumo-guest-hello, received kumo-host-hello");

    // A device-writable buffer in a transmit chain (wrong direction).
    nic.tx.set_chain(0, &[(TX.phys_addr(), 64, true)]);
    nic.tx.publish(&nic.dev, 0);
    if nic.tx.wait_used() != Some((0, 0)) {
        fail!("wrong-direction transmit chain was not returned");
    }
    // Shorter than the virtio-net header.
    nic.tx.set_chain(0, &[(TX.phys_addr(), 8, false)]);
    nic.tx.publish(&nic.dev, 0);
    if nic.tx.wait_used() != Some((0, 0)) {
        fail!("short transmit chain was not returned");
    }
    // Larger than any frame: two 40000-byte buffers (over the guest's own image, which is RAM).
    nic.tx
        .set_chain(0, &[(0x20_0000, 40_000, false), (0x20_0000, 40_000, false)]);
    nic.tx.publish(&nic.dev, 0);
    if nic.tx.wait_used() != Some((0, 0)) {
        fail!("oversize transmit chain was not returned");
    }
    // A loop.
    nic.tx
        .set_desc(0, TX.phys_addr(), 64, virtio_driver::DESC_F_NEXT, 1);
    nic.tx
        .set_desc(1, TX.phys_addr(), 64, virtio_driver::DESC_F_NEXT, 0);
    nic.tx.publish(&nic.dev, 0);
    if nic.tx.wait_used() != Some((0, 0)) {
        fail!("looping transmit chain was not returned");
    }
    if nic.dev.status() & virtio_driver::STATUS_NEEDS_RESET != 0 {
        fail!("the device needs a reset");
    }
    println!("virtio-net: bad transmit chains were returned unsent");

    if !nic.send(b"kumo-guest-bye") {
        fail!("the device did not return the last transmit buffer");
    }
    virtio_driver::wait_until(|| virtio_driver::interrupt_count() > 0, 100);
    if virtio_driver::interrupt_count() == 0 {
        fail!("no interrupt from the device");
    }
    println!(
        "virtio-net: interrupts received, status bits {:#x}",
        virtio_driver::interrupt_status_seen()
    );
    println!("virtio-net: PASS");
}
