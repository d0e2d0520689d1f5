//! Jumps into MMIO space where there is no memory to fetch instructions from: KVM cannot run
//! that (an internal emulation error), so kumo-vmm reports a guest crash (exit status 3).
#![no_std]
#![no_main]

guest::entry!(main);

fn main() {
    guest::println!("crash: jumping to 0xd0800000");
    // SAFETY: deliberately not safe: the point is to execute from an address with no RAM.
    unsafe {
        let f: extern "C" fn() = core::mem::transmute::<usize, extern "C" fn()>(0xd080_0000);
        f();
    }
    guest::println!("crash: still here?");
}
