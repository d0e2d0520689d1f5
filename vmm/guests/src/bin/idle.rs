//! Idles with interrupts on, for the API socket tests. Its keyboard handler (IRQ 1) prints the
//! scancodes it reads and resets when it sees Ctrl-Alt-Del, the way Linux reboots on it.
//! With `ignore-keyboard` on the command line it leaves IRQ 1 masked (a guest that does not
//! cooperate with a graceful shutdown).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use guest::io::inb;
use guest::{apic, interrupts, println};

guest::entry!(main);

const KBD_VECTOR: u8 = 0x21;
static CTRL: AtomicBool = AtomicBool::new(false);
static ALT: AtomicBool = AtomicBool::new(false);
static STATE: AtomicU32 = AtomicU32::new(0); // 1 after 0xe0, 2 after 0xf0 (release)
static REBOOT: AtomicBool = AtomicBool::new(false);

fn on_keyboard(_: u8) {
    while inb(0x64) & 1 != 0 {
        let code = inb(0x60);
        let release = STATE.load(Ordering::SeqCst) & 2 != 0;
        match code {
            0xe0 => {
                STATE.fetch_or(1, Ordering::SeqCst);
                continue;
            }
            0xf0 => {
                STATE.fetch_or(2, Ordering::SeqCst);
                continue;
            }
            0x14 => CTRL.store(!release, Ordering::SeqCst),
            0x11 => ALT.store(!release, Ordering::SeqCst),
            0x71 if !release && CTRL.load(Ordering::SeqCst) && ALT.load(Ordering::SeqCst) => {
                REBOOT.store(true, Ordering::SeqCst);
            }
            _ => {}
        }
        STATE.store(0, Ordering::SeqCst);
    }
}

fn main() {
    apic::enable_local();
    if guest::boot::cmdline().split(' ').any(|w| w == "ignore-keyboard") {
        println!("idle: ready, ignoring the keyboard");
    } else {
        interrupts::set_handler(KBD_VECTOR, on_keyboard);
        apic::route(1, KBD_VECTOR);
        println!("idle: ready, keyboard on");
    }
    loop {
        interrupts::wait();
        if REBOOT.load(Ordering::SeqCst) {
            println!("idle: ctrl-alt-del, rebooting");
            return;
        }
    }
}
