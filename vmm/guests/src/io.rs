//! Port I/O and volatile MMIO accessors.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects on the guest's Rust state.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

/// Writes a 16-bit word to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags)) }
}

/// Writes a 32-bit word to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
    value
}

/// Reads a 16-bit word from an I/O port.
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as for `outb`.
    unsafe { asm!("in ax, dx", out("ax") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
    value
}

/// Reads a 32-bit word from an I/O port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outb`.
    unsafe { asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
    value
}

/// Volatile 8-bit MMIO read at guest-physical `addr` (identity-mapped below 4 GiB).
pub fn read8(addr: u64) -> u8 {
    // SAFETY: the caller names a device register or RAM; identity mapping makes it valid.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// Volatile 16-bit MMIO read.
pub fn read16(addr: u64) -> u16 {
    // SAFETY: as for `read8`.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}

/// Volatile 32-bit MMIO read.
pub fn read32(addr: u64) -> u32 {
    // SAFETY: as for `read8`.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Volatile 64-bit MMIO read.
pub fn read64(addr: u64) -> u64 {
    // SAFETY: as for `read8`.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Volatile 8-bit MMIO write.
pub fn write8(addr: u64, value: u8) {
    // SAFETY: as for `read8`.
    unsafe { core::ptr::write_volatile(addr as *mut u8, value) }
}

/// Volatile 16-bit MMIO write.
pub fn write16(addr: u64, value: u16) {
    // SAFETY: as for `read8`.
    unsafe { core::ptr::write_volatile(addr as *mut u16, value) }
}

/// Volatile 32-bit MMIO write.
pub fn write32(addr: u64, value: u32) {
    // SAFETY: as for `read8`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// Volatile 64-bit MMIO write.
pub fn write64(addr: u64, value: u64) {
    // SAFETY: as for `read8`.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

/// A full memory fence (orders RAM writes, e.g. a virtqueue ring, before an MMIO notify).
pub fn fence() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// Spins for roughly `iterations` pause instructions.
pub fn spin(iterations: u64) {
    for _ in 0..iterations {
        core::hint::spin_loop();
    }
}
