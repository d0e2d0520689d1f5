//! Ending the guest.

use crate::io::outb;

/// Resets the machine through the i8042 (command 0xfe on port 0x64): kumo-vmm exits 0.
pub fn reset() -> ! {
    outb(0x64, 0xfe);
    halt_forever()
}

/// Halts this vCPU for good: interrupts off, `hlt` in a loop.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli/hlt only stop this vCPU.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}
