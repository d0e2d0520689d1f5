//! Prints a line, the command line and the e820 map, then resets (kumo-vmm exits 0).
#![no_std]
#![no_main]

use guest::println;

guest::entry!(main);

fn main() {
    println!("hello from a kumo test guest");
    println!("cmdline: {}", guest::boot::cmdline());
    for (addr, size, kind) in guest::boot::e820() {
        println!("e820: {:#x} {:#x} {}", addr, size, kind);
    }
    println!("bye");
}
