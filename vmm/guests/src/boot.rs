//! What kumo-vmm handed the guest in the zero page (Linux `struct boot_params`).

use core::sync::atomic::{AtomicU64, Ordering};

static ZERO_PAGE: AtomicU64 = AtomicU64::new(0);

const E820_ENTRIES: u64 = 0x1e8;
const CMD_LINE_PTR: u64 = 0x228;
const CMDLINE_SIZE: u64 = 0x238;
const E820_TABLE: u64 = 0x2d0;
const E820_MAX: usize = 128;

pub(crate) fn set_zero_page(addr: u64) {
    ZERO_PAGE.store(addr, Ordering::Relaxed);
}

/// The zero page's guest-physical address (0 if none was given).
pub fn zero_page() -> u64 {
    ZERO_PAGE.load(Ordering::Relaxed)
}

/// The kernel command line kumo-vmm wrote (empty if none).
pub fn cmdline() -> &'static str {
    let zp = zero_page();
    if zp == 0 {
        return "";
    }
    let ptr = crate::io::read32(zp + CMD_LINE_PTR) as u64;
    let max = crate::io::read32(zp + CMDLINE_SIZE) as usize;
    if ptr == 0 {
        return "";
    }
    let mut len = 0;
    while len < max.max(4096) && crate::io::read8(ptr + len as u64) != 0 {
        len += 1;
    }
    // SAFETY: `len` bytes at `ptr` are identity-mapped guest RAM the VMM filled.
    let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len) };
    core::str::from_utf8(bytes).unwrap_or("")
}

/// One e820 entry: `(address, size, type)` (type 1 = RAM, 2 = reserved).
pub type E820Entry = (u64, u64, u32);

/// The e820 memory map from the zero page.
pub fn e820() -> impl Iterator<Item = E820Entry> {
    let zp = zero_page();
    let n = if zp == 0 { 0 } else { (crate::io::read8(zp + E820_ENTRIES) as usize).min(E820_MAX) };
    (0..n).map(move |i| {
        let e = zp + E820_TABLE + 20 * i as u64;
        let lo = |o: u64| crate::io::read32(e + o) as u64;
        (lo(0) | lo(4) << 32, lo(8) | lo(12) << 32, crate::io::read32(e + 16))
    })
}

/// A virtio-mmio device announced on the command line: `virtio_mmio.device=<size>@<base>:<irq>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// Guest-physical base of its register window.
    pub base: u64,
    /// Window size in bytes.
    pub size: u64,
    /// Its interrupt line (an I/O APIC pin / GSI).
    pub irq: u32,
}

/// The virtio-mmio devices listed on the command line, in order.
pub fn virtio_mmio_devices() -> impl Iterator<Item = VirtioMmioDevice> {
    cmdline()
        .split(' ')
        .filter_map(|w| w.strip_prefix("virtio_mmio.device="))
        .filter_map(parse_virtio_mmio)
}

fn parse_virtio_mmio(spec: &str) -> Option<VirtioMmioDevice> {
    let (size, rest) = spec.split_once('@')?;
    let (base, irq) = rest.split_once(':')?;
    let irq = irq.split(':').next()?;
    let (num, mult) = match size.as_bytes().last()? {
        b'K' | b'k' => (&size[..size.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&size[..size.len() - 1], 1 << 20),
        b'G' | b'g' => (&size[..size.len() - 1], 1 << 30),
        _ => (size, 1),
    };
    Some(VirtioMmioDevice {
        base: parse_u64(base)?,
        size: parse_u64(num)? * mult,
        irq: parse_u64(irq)? as u32,
    })
}

/// Parses decimal or `0x` hex.
pub fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}
