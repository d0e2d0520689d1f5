//! Every vCPU shows up and runs: the MP table lists them, CPUID gives each its APIC id and the
//! topology, and each application processor starts through INIT-SIPI-SIPI and reports in.
#![no_std]
#![no_main]

use core::arch::x86_64::__cpuid_count;
use core::sync::atomic::{AtomicUsize, Ordering};
use guest::{apic, println, smp};

guest::entry!(main);

static REPORTED: AtomicUsize = AtomicUsize::new(0);

fn cpuid_apic_id() -> u32 {
    __cpuid_count(1, 0).ebx >> 24
}

fn ap_main(index: usize) {
    println!("smp: cpu {} up: local APIC id {}, CPUID APIC id {}", index, apic::local_id(), cpuid_apic_id());
    REPORTED.fetch_add(1, Ordering::SeqCst);
}

fn main() {
    let (l1, hv, topo) = (__cpuid_count(1, 0), __cpuid_count(0x4000_0000, 0), __cpuid_count(0xb, 1));
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&hv.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&hv.ecx.to_le_bytes());
    sig[8..].copy_from_slice(&hv.edx.to_le_bytes());
    println!(
        "cpuid: apic id {} hypervisor bit {} signature {} logical cpus {} topology cores {}",
        l1.ebx >> 24,
        (l1.ecx >> 31) & 1,
        core::str::from_utf8(&sig[..9]).unwrap_or("?"),
        (l1.ebx >> 16) & 0xff,
        topo.ebx & 0xffff
    );
    let Some(t) = smp::mp_table() else {
        println!("smp: NO MP TABLE");
        return;
    };
    println!(
        "mptable: cpus {} bsp {} ioapic id {} at {:#x} checksums {} io-interrupts {} local-interrupts {}",
        t.cpu_count,
        t.bsp_apic_id,
        t.ioapic.map_or(0xff, |i| i.0),
        t.ioapic.map_or(0, |i| i.1),
        if t.checksums_ok { "ok" } else { "BAD" },
        t.io_interrupts,
        t.local_interrupts
    );
    apic::enable_local();
    let started = smp::start_aps(&t, ap_main);
    let mut spins = 0u64;
    while REPORTED.load(Ordering::SeqCst) < started && spins < 100_000_000 {
        spins += 1;
        core::hint::spin_loop();
    }
    println!("smp: {} of {} application processors started, {} reported", started, t.cpu_count - 1, REPORTED.load(Ordering::SeqCst));
}
