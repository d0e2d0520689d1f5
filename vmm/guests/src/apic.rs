//! The local APIC (xAPIC MMIO at 0xfee00000), the I/O APIC (0xfec00000) and the legacy PIC.

use crate::io::{outb, read32, write32};

/// Local APIC base.
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// I/O APIC base.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The spurious-interrupt vector the runtime uses.
pub const SPURIOUS_VECTOR: u8 = 0xff;

const LAPIC_ID: u64 = 0x20;
const LAPIC_EOI: u64 = 0xb0;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_ICR_LOW: u64 = 0x300;
const LAPIC_ICR_HIGH: u64 = 0x310;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;

/// Software-enables this CPU's local APIC (spurious vector 0xff).
pub fn enable_local() {
    write32(LAPIC_BASE + LAPIC_SVR, 0x100 | SPURIOUS_VECTOR as u32);
}

/// This CPU's APIC id.
pub fn local_id() -> u32 {
    read32(LAPIC_BASE + LAPIC_ID) >> 24
}

/// Signals end of interrupt to the local APIC.
pub fn eoi() {
    write32(LAPIC_BASE + LAPIC_EOI, 0);
}

/// Sends an IPI: `icr_low` (vector, delivery mode, level...) to the CPU with `apic_id`.
pub fn send_ipi(apic_id: u32, icr_low: u32) {
    write32(LAPIC_BASE + LAPIC_ICR_HIGH, apic_id << 24);
    write32(LAPIC_BASE + LAPIC_ICR_LOW, icr_low);
    let mut spins = 0;
    while read32(LAPIC_BASE + LAPIC_ICR_LOW) & ICR_DELIVERY_PENDING != 0 && spins < 1_000_000 {
        spins += 1;
        core::hint::spin_loop();
    }
}

fn ioapic_write(reg: u32, value: u32) {
    write32(IOAPIC_BASE, reg);
    write32(IOAPIC_BASE + 0x10, value);
}

fn ioapic_read(reg: u32) -> u32 {
    write32(IOAPIC_BASE, reg);
    read32(IOAPIC_BASE + 0x10)
}

/// The number of I/O APIC pins (redirection entries).
pub fn ioapic_pins() -> u32 {
    ((ioapic_read(1) >> 16) & 0xff) + 1
}

/// Routes I/O APIC `pin` (a GSI) to `vector` on the CPU with APIC id 0: fixed delivery,
/// physical destination, edge-triggered, active high, unmasked.
pub fn route(pin: u32, vector: u8) {
    route_to(pin, vector, 0);
}

/// As [`route`], to the CPU with `apic_id`.
pub fn route_to(pin: u32, vector: u8, apic_id: u32) {
    ioapic_write(0x10 + 2 * pin + 1, apic_id << 24);
    ioapic_write(0x10 + 2 * pin, vector as u32);
}

/// Masks I/O APIC `pin`.
pub fn mask(pin: u32) {
    ioapic_write(0x10 + 2 * pin, 1 << 16);
}

/// Remaps the 8259 PICs to vectors 0x20-0x2f and masks every line (the I/O APIC is used).
pub fn disable_legacy_pic() {
    for (cmd, data, base, cascade) in [(0x20u16, 0x21u16, 0x20u8, 4u8), (0xa0, 0xa1, 0x28, 2)] {
        outb(cmd, 0x11);
        outb(data, base);
        outb(data, cascade);
        outb(data, 0x01);
        outb(data, 0xff);
    }
}
