//! Interrupts reach the guest: COM1's transmit-empty interrupt (IRQ 4, an irqfd in kumo-vmm)
//! and the in-kernel PIT (IRQ 0), both through the I/O APIC to this CPU's local APIC.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use guest::io::{inb, outb};
use guest::{apic, interrupts, println};

guest::entry!(main);

const SERIAL_VECTOR: u8 = 0x24;
const TIMER_VECTOR: u8 = 0x30;
static SERIAL_IRQS: AtomicU32 = AtomicU32::new(0);
static TIMER_IRQS: AtomicU32 = AtomicU32::new(0);

fn on_serial(_: u8) {
    let _ = inb(0x3fa); // IIR: reading it acknowledges the transmit-empty interrupt
    SERIAL_IRQS.fetch_add(1, Ordering::SeqCst);
}

fn on_timer(_: u8) {
    TIMER_IRQS.fetch_add(1, Ordering::SeqCst);
}

fn wait_for(counter: &AtomicU32, at_least: u32) -> bool {
    for _ in 0..2000 {
        if counter.load(Ordering::SeqCst) >= at_least {
            return true;
        }
        interrupts::wait();
        interrupts::disable();
        guest::io::spin(1000);
    }
    counter.load(Ordering::SeqCst) >= at_least
}

fn main() {
    apic::enable_local();
    println!("irq: I/O APIC has {} pins", apic::ioapic_pins());
    interrupts::set_handler(SERIAL_VECTOR, on_serial);
    interrupts::set_handler(TIMER_VECTOR, on_timer);
    apic::route(4, SERIAL_VECTOR);

    // Enable the transmit-empty interrupt and send a byte: the UART raises IRQ 4.
    outb(0x3f9, 0x02);
    outb(0x3f8, b'.');
    let got = wait_for(&SERIAL_IRQS, 1);
    outb(0x3f9, 0x00);
    println!();
    println!("irq: serial interrupt {} (count {})", if got { "received" } else { "MISSING" }, SERIAL_IRQS.load(Ordering::SeqCst));

    // PIT channel 0, mode 2, ~1 kHz. KVM wires the PIT to GSI 0 (and 2 on some hosts).
    apic::route(0, TIMER_VECTOR);
    apic::route(2, TIMER_VECTOR);
    outb(0x43, 0x34);
    outb(0x40, (1193 & 0xff) as u8);
    outb(0x40, (1193 >> 8) as u8);
    let ticked = wait_for(&TIMER_IRQS, 3);
    apic::mask(0);
    apic::mask(2);
    println!("irq: timer interrupts {} (count {})", if ticked { "received" } else { "MISSING" }, TIMER_IRQS.load(Ordering::SeqCst));
}
