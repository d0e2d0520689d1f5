//! Legacy PC devices on the port I/O bus: the 8250 UART (COM1) and the i8042 controller.

pub mod i8042;
pub mod serial;

pub use i8042::I8042;
pub use serial::{SerialDevice, SerialInput};

use vmm_sys_util::eventfd::EventFd;

/// A `vm_superio::Trigger` that writes an eventfd (registered with KVM as an irqfd).
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
