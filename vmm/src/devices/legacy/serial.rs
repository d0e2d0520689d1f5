//! COM1: vm-superio's 8250 UART at 0x3f8 (IRQ 4) writing to the console, and the console's
//! input (stdin) fed into its receive FIFO from the event loop.

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use vm_superio::Serial;
use vm_superio::serial::NoEvents;
use vmm_sys_util::epoll::EventSet;

/// COM1's port base.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's port range length.
pub const COM1_LEN: u64 = 8;

/// The 8250 UART on the port I/O bus.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// A UART that raises `irq` and writes what the guest sends to `out`.
    pub fn new(irq: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self {
            serial: Serial::new(irq, out),
        }
    }

    /// Queues console input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.serial.fifo_capacity();
        let n = room.min(bytes.len());
        if n > 0 && self.serial.enqueue_raw_bytes(&bytes[..n]).is_err() {
            return 0;
        }
        n
    }

    /// Room left in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.serial.fifo_capacity()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset))
            && let Err(e) = self.serial.write(off, value)
        {
            tracing::debug!("serial write failed: {e:?}");
        }
    }
}

/// Reads the console's input (stdin) and feeds the UART's receive FIFO.
pub struct SerialInput {
    serial: Arc<Mutex<SerialDevice>>,
    input: std::fs::File,
}

impl SerialInput {
    /// Feeds `serial` from `input` (a duplicate of stdin).
    pub fn new(serial: Arc<Mutex<SerialDevice>>, input: std::fs::File) -> Self {
        Self { serial, input }
    }
}

impl MutEventSubscriber for SerialInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let room = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .input_room();
        // With a full FIFO the bytes are read anyway (and dropped) so that a level-triggered
        // stdin does not spin the loop; a guest that does not read its console loses input.
        let want = if room == 0 {
            buf.len()
        } else {
            room.min(buf.len())
        };
        match self.input.read(&mut buf[..want]) {
            Ok(0) => {
                let _ = ops.remove(events);
            }
            Ok(n) => {
                let taken = self
                    .serial
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .enqueue_input(&buf[..n]);
                if taken < n {
                    tracing::debug!(
                        dropped = n - taken,
                        "console input dropped: guest FIFO full"
                    );
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("console input closed: {e}");
                let _ = ops.remove(events);
            }
        }
        if events.event_set().contains(EventSet::HANG_UP) {
            let _ = ops.remove(events);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.input.as_raw_fd(), EventSet::IN)) {
            tracing::debug!("console input unavailable (stdin cannot be polled): {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_output_reaches_the_console_and_input_the_guest() {
        let sink = Sink::default();
        let irq = EventFd::new(0).unwrap();
        let mut dev = SerialDevice::new(
            EventFdTrigger(irq.try_clone().unwrap()),
            Box::new(sink.clone()),
        );
        for b in b"hi" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        // Garbage: wide accesses, offsets past the UART, never panic.
        dev.write(0x1234_5678_9abc, &[1, 2]);
        let mut wide = [9u8; 4];
        dev.read(5, &mut wide);
        assert_eq!(&wide[1..], &[0, 0, 0]);
        assert_ne!(wide[0] & 0x20, 0, "LSR: transmitter empty");
        // Input with the receive interrupt enabled raises the IRQ.
        dev.write(1, &[1]);
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b, *b"x");
    }
}
