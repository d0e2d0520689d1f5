//! A guest that pokes where nothing is: unclaimed ports of every width, nonsense to COM1 and
//! the i8042 (short of a reset), MMIO to unmapped addresses and past the end of RAM. kumo-vmm
//! must answer (ports read all-ones, MMIO reads zero) and keep running.
#![no_std]
#![no_main]

use guest::io::{inb, inl, inw, outb, outl, outw, read32, read64, read8, write32, write64, write8};
use guest::println;
use guest::serial::Dec;

guest::entry!(main);

fn main() {
    let mut odd_reads = 0u32;
    let mut accesses = 0u32;
    // Every port below 0x1000 (except the i8042 command port, where 0xfe is a reset).
    for port in 0u16..0x1000 {
        if port == 0x64 {
            continue;
        }
        let _ = inb(port);
        outb(port, (port as u8) ^ 0x5a);
        accesses += 2;
    }
    // Wide accesses to ports nobody claims read all-ones.
    for port in [0xcf8u16, 0xcfc, 0x510, 0x511, 0x1234, 0xfff0, 0xffff] {
        outw(port, 0xdead);
        outl(port, 0xdead_beef);
        if inw(port) != 0xffff || inl(port) != 0xffff_ffff {
            odd_reads += 1;
        }
        accesses += 4;
    }
    // i8042 data and command nonsense (no 0xfe to the command port).
    for v in 0u8..=0xfd {
        outb(0x64, v);
        outb(0x60, v);
        let _ = inb(0x60);
    }
    // Put COM1 back the way the runtime uses it (8N1, no DLAB, no interrupts).
    outb(0x3fb, 0x03);
    outb(0x3f9, 0x00);
    outb(0x3fc, 0x00);
    println!();
    // MMIO to nowhere: the unallocated virtio window, a hole in the gap, past the end of RAM.
    for addr in [0xd010_0000u64, 0xe000_0000, 0xfed0_0000, 0xfebf_f000, 0xffff_f000, 0x3f00_0000] {
        write8(addr, 0xaa);
        write32(addr + 4, 0xdead_beef);
        write64(addr + 8, u64::MAX);
        if read8(addr) != 0 || read32(addr + 4) != 0 || read64(addr + 8) != 0 {
            odd_reads += 1;
        }
        accesses += 6;
    }
    println!("garbage: survived {} accesses, {} unexpected reads", Dec(accesses as u64), Dec(odd_reads as u64));
}
