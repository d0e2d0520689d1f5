//! Output on the 8250 UART at 0x3f8 (kumo-vmm's console), with `print!`/`println!`.

use crate::io::{inb, outb};
use crate::sync::SpinLock;
use core::fmt;

/// COM1's base port.
pub const COM1: u16 = 0x3f8;
const LSR: u16 = 5;
const LSR_THR_EMPTY: u8 = 0x20;

struct Uart;

impl fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            put_byte(b);
        }
        Ok(())
    }
}

static LOCK: SpinLock<Uart> = SpinLock::new(Uart);

/// Writes one byte, waiting for the transmit holding register to be empty.
pub fn put_byte(b: u8) {
    let mut spins = 0u32;
    while inb(COM1 + LSR) & LSR_THR_EMPTY == 0 && spins < 1_000_000 {
        spins += 1;
        core::hint::spin_loop();
    }
    outb(COM1, b);
}

/// Writes formatted text atomically with respect to other vCPUs.
pub fn write_fmt(args: fmt::Arguments<'_>) {
    LOCK.with(|u| {
        let _ = fmt::Write::write_fmt(u, args);
    });
}

/// Unlocks the console (used when panicking while it may be held).
pub fn force_unlock() {
    LOCK.force_unlock();
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::write_fmt(format_args!($($arg)*)) };
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::serial::write_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// An integer printed in decimal without `core`'s formatting code.
///
/// The prebuilt `core` is compiled with SSE2, and its decimal integer formatting uses SSE
/// instructions for numbers of four digits or more; under kvm-pvm (software nested KVM) any SSE
/// instruction in a guest's supervisor mode fails KVM's emulation. Print numbers that may be
/// large as `Dec(n)` (or in hex, `{:#x}`, which does not use SSE).
#[derive(Clone, Copy, Debug)]
pub struct Dec(pub u64);

impl fmt::Display for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut n = self.0;
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        // SAFETY: only ASCII digits were written.
        f.write_str(unsafe { core::str::from_utf8_unchecked(&buf[i..]) })
    }
}
