//! The i8042 keyboard controller at ports 0x60 (data) and 0x64 (status/command).
//!
//! Two jobs: the CPU reset line (command 0xfe, through vm-superio's `I8042Device`, which ends
//! the VM), and just enough of the controller and an AT keyboard for Linux's i8042/atkbd
//! drivers to accept it, so that the VMM can press Ctrl-Alt-Del for a graceful shutdown
//! (Linux then runs its reboot path, which ends in the reset line; kumo's kernels boot with
//! `reboot=k`). Scancodes are set 2, untranslated, as Firecracker sends them.

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;
use std::collections::VecDeque;
use vm_superio::{I8042Device, Trigger};

/// Port base (the data port).
pub const I8042_PORT: u64 = 0x60;
/// Range length: 0x60-0x64.
pub const I8042_LEN: u64 = 5;

const OFS_DATA: u64 = 0;
const OFS_STATUS: u64 = 4;

const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WRITE_CMD: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_CTL_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const CTR_KBD_INT: u8 = 0x01;
const CTR_POST_OK: u8 = 0x04;

const KBD_ACK: u8 = 0xfa;
const KBD_CMD_GET_ID: u8 = 0xf2;
const KBD_CMD_RESET: u8 = 0xff;
const KBD_CMD_SET_LEDS: u8 = 0xed;
const KBD_CMD_SET_RATE: u8 = 0xf3;

const BUF_SIZE: usize = 16;

/// The controller.
pub struct I8042<R: Trigger> {
    reset: I8042Device<R>,
    kbd_irq: EventFdTrigger,
    status: u8,
    ctr: u8,
    outp: u8,
    /// The controller command waiting for its data byte.
    pending_cmd: Option<u8>,
    /// The keyboard command waiting for its argument byte.
    pending_kbd_cmd: Option<u8>,
    buf: VecDeque<u8>,
}

impl<R: Trigger> I8042<R> {
    /// A controller whose reset line fires `reset` and whose keyboard raises `kbd_irq`.
    pub fn new(reset: R, kbd_irq: EventFdTrigger) -> Self {
        Self {
            reset: I8042Device::new(reset),
            kbd_irq,
            status: SB_KBD_ENABLED | SB_SYSTEM_FLAG,
            ctr: CTR_KBD_INT | CTR_POST_OK,
            outp: 0,
            pending_cmd: None,
            pending_kbd_cmd: None,
            buf: VecDeque::with_capacity(BUF_SIZE),
        }
    }

    fn push(&mut self, b: u8) -> bool {
        if self.buf.len() >= BUF_SIZE {
            return false;
        }
        self.buf.push_back(b);
        self.status |= SB_OUT_DATA_AVAIL;
        true
    }

    fn raise_kbd_irq(&self) {
        if self.ctr & CTR_KBD_INT != 0 && self.kbd_irq.trigger().is_err() {
            tracing::debug!("cannot raise the keyboard interrupt");
        }
    }

    fn pop(&mut self) -> u8 {
        let b = self.buf.pop_front().unwrap_or(0);
        if self.buf.is_empty() {
            self.status &= !SB_OUT_DATA_AVAIL;
        } else {
            self.raise_kbd_irq();
        }
        b
    }

    fn push_scancode(&mut self, code: u16) -> bool {
        let [hi, lo] = code.to_be_bytes();
        (hi == 0 || self.push(hi)) && self.push(lo)
    }

    /// Presses and releases Ctrl-Alt-Del. Returns false if the buffer was full.
    pub fn press_ctrl_alt_del(&mut self) -> bool {
        const CTRL: u16 = 0x14;
        const ALT: u16 = 0x11;
        const DEL: u16 = 0xe071;
        let ok = self.push_scancode(CTRL)
            && self.push_scancode(ALT)
            && self.push_scancode(DEL)
            && self.push(0xe0)
            && self.push(0xf0)
            && self.push(0x71)
            && self.push(0xf0)
            && self.push(0x11)
            && self.push(0xf0)
            && self.push(0x14);
        self.raise_kbd_irq();
        ok
    }

    fn write_command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WRITE_CMD;
        match cmd {
            CMD_RESET_CPU if self.reset.write(OFS_STATUS as u8, cmd).is_err() => {
                tracing::error!("cannot signal the guest reset");
            }
            CMD_RESET_CPU => {}
            CMD_READ_CTR => {
                let ctr = self.ctr;
                self.push(ctr);
            }
            CMD_READ_OUTP => {
                let outp = self.outp;
                self.push(outp);
            }
            CMD_WRITE_CTR | CMD_WRITE_OUTP => self.pending_cmd = Some(cmd),
            CMD_CTL_TEST => {
                self.push(0x55);
            }
            CMD_KBD_TEST => {
                self.push(0x00);
            }
            CMD_AUX_TEST => {
                self.push(0xff); // no auxiliary (mouse) port
            }
            CMD_KBD_DISABLE => self.status &= !SB_KBD_ENABLED,
            CMD_KBD_ENABLE => self.status |= SB_KBD_ENABLED,
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        self.status &= !SB_LAST_WRITE_CMD;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => {
                self.ctr = value;
                return;
            }
            Some(CMD_WRITE_OUTP) => {
                self.outp = value;
                return;
            }
            _ => {}
        }
        // A byte for the keyboard: a command or a command's argument. Always acknowledged.
        if self.pending_kbd_cmd.take().is_some() {
            self.push(KBD_ACK);
        } else {
            self.push(KBD_ACK);
            match value {
                KBD_CMD_GET_ID => {
                    self.push(0xab);
                    self.push(0x83);
                }
                KBD_CMD_RESET => {
                    self.push(0xaa); // self-test passed
                }
                KBD_CMD_SET_LEDS | KBD_CMD_SET_RATE => self.pending_kbd_cmd = Some(value),
                _ => {}
            }
        }
        self.raise_kbd_irq();
    }
}

impl<R: Trigger + Send> BusDevice for I8042<R> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            OFS_DATA => self.pop(),
            OFS_STATUS => self.status,
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            OFS_DATA => self.write_data(value),
            OFS_STATUS => self.write_command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct Count(Arc<AtomicUsize>);
    impl Trigger for Count {
        type E = ();
        fn trigger(&self) -> Result<(), ()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn dev() -> (I8042<Count>, Count, EventFd) {
        let c = Count::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (
            I8042::new(c.clone(), EventFdTrigger(irq.try_clone().unwrap())),
            c,
            irq,
        )
    }

    fn rd(d: &mut I8042<Count>, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_line() {
        let (mut d, c, _) = dev();
        d.write(4, &[0xfe]);
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
        d.write(0, &[0xfe]); // 0xfe to the data port is a keyboard byte, not a reset
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn linux_probe_sequence() {
        let (mut d, _, _) = dev();
        d.write(4, &[CMD_CTL_TEST]);
        assert_ne!(rd(&mut d, 4) & SB_OUT_DATA_AVAIL, 0);
        assert_eq!(rd(&mut d, 0), 0x55);
        assert_eq!(rd(&mut d, 4) & SB_OUT_DATA_AVAIL, 0);
        d.write(4, &[CMD_READ_CTR]);
        let ctr = rd(&mut d, 0);
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[ctr & !CTR_KBD_INT]);
        d.write(4, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut d, 0), ctr & !CTR_KBD_INT);
        d.write(0, &[KBD_CMD_GET_ID]);
        assert_eq!(
            (rd(&mut d, 0), rd(&mut d, 0), rd(&mut d, 0)),
            (KBD_ACK, 0xab, 0x83)
        );
    }

    #[test]
    fn ctrl_alt_del_raises_the_keyboard_irq() {
        let (mut d, _, irq) = dev();
        assert!(d.press_ctrl_alt_del());
        assert!(irq.read().unwrap() >= 1);
        let mut codes = vec![];
        while rd(&mut d, 4) & SB_OUT_DATA_AVAIL != 0 {
            codes.push(rd(&mut d, 0));
        }
        assert_eq!(
            codes,
            vec![
                0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14
            ]
        );
    }

    #[test]
    fn garbage_is_harmless() {
        let (mut d, c, _) = dev();
        for v in 0..=255u8 {
            if v != CMD_RESET_CPU {
                d.write(4, &[v]);
            }
            d.write(0, &[v]);
            d.write(2, &[v, v]);
        }
        let mut wide = [1u8; 8];
        d.read(3, &mut wide);
        assert_eq!(wide, [0; 8]);
        d.write(0, &[]);
        assert_eq!(c.0.load(Ordering::SeqCst), 0);
    }
}
