//! Halts for good (`cli; hlt`) without resetting: kumo-vmm must notice and exit 0.
#![no_std]
#![no_main]

guest::entry!(main);

fn main() {
    guest::println!("halt: halting with interrupts off");
    guest::power::halt_forever()
}
