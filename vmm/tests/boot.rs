//! kumo-vmm boots tiny freestanding guests under KVM (see `common` and `vmm/guests`): serial
//! output, the boot information a guest sees, interrupts, SMP, PVH entry, and the ways a guest
//! ends. Skipped where /dev/kvm is not usable.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn serial_output_reaches_the_console_and_reset_exits_zero() {
    if !kvm_available("serial_output_reaches_the_console_and_reset_exits_zero") {
        return;
    }
    let run = Vmm::new(&build_guest("hello"))
        .args(["--memory-mib", "64", "--cmdline", "kumo test=1"])
        .run();
    run.assert_success();
    assert!(
        run.serial.contains("hello from a kumo test guest\n"),
        "{run}"
    );
    assert!(
        run.serial.contains("cmdline: kumo test=1\n"),
        "the command line we gave:\n{run}"
    );
    assert!(run.serial.contains("bye"), "{run}");
    assert_eq!(
        run.stderr_lines(),
        vec!["kumo-vmm: guest reset through the i8042"],
        "{run}"
    );
}

#[test]
fn guest_sees_our_e820_map() {
    if !kvm_available("guest_sees_our_e820_map") {
        return;
    }
    let run = Vmm::new(&build_guest("hello"))
        .args(["--memory-mib", "96"])
        .run();
    run.assert_success();
    let e820: Vec<&str> = run
        .serial
        .lines()
        .filter(|l| l.starts_with("e820: "))
        .collect();
    assert_eq!(
        e820,
        vec![
            "e820: 0x0 0x9fc00 1",
            "e820: 0x9fc00 0x400 2",
            &format!("e820: 0x100000 {:#x} 1", (96u64 << 20) - 0x100000)
        ],
        "{run}"
    );
}

#[test]
fn console_to_a_file() {
    if !kvm_available("console_to_a_file") {
        return;
    }
    let dir = tempdir();
    let log = dir.path().join("console.log");
    let run = Vmm::new(&build_guest("hello"))
        .args(["--console", log.to_str().unwrap()])
        .run();
    run.assert_success();
    assert!(run.serial.is_empty(), "nothing on stdout:\n{run}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("hello from a kumo test guest"), "{text}");
}

#[test]
fn json_config_file() {
    if !kvm_available("json_config_file") {
        return;
    }
    let dir = tempdir();
    let cfg = dir.path().join("vm.json");
    let guest = build_guest("smp");
    std::fs::write(
        &cfg,
        serde_json::json!({"kernel": guest, "vcpus": 2, "memory-mib": 48}).to_string(),
    )
    .unwrap();
    let run = Vmm::bare().args(["--config", cfg.to_str().unwrap()]).run();
    run.assert_success();
    assert!(run.serial.contains("mptable: cpus 2 "), "{run}");
}

#[test]
fn an_interrupt_reaches_the_guest() {
    if !kvm_available("an_interrupt_reaches_the_guest") {
        return;
    }
    let run = Vmm::new(&build_guest("irq")).run();
    run.assert_success();
    assert!(run.serial.contains("irq: I/O APIC has 24 pins"), "{run}");
    assert!(
        run.serial.contains("irq: serial interrupt received"),
        "COM1 -> irqfd -> I/O APIC -> LAPIC:\n{run}"
    );
    assert!(
        run.serial.contains("irq: timer interrupts received"),
        "in-kernel PIT:\n{run}"
    );
}

#[test]
fn two_vcpus_both_run() {
    if !kvm_available("two_vcpus_both_run") {
        return;
    }
    let run = Vmm::new(&build_guest("smp")).args(["--vcpus", "2"]).run();
    run.assert_success();
    assert!(
        run.serial.contains(
            "cpuid: apic id 0 hypervisor bit 1 signature KVMKVMKVM logical cpus 2 topology cores 2"
        ),
        "{run}"
    );
    assert!(
        run.serial.contains("mptable: cpus 2 bsp 0 ioapic id 2 at 0xfec00000 checksums ok io-interrupts 24 local-interrupts 2"),
        "{run}"
    );
    assert!(
        run.serial
            .contains("smp: cpu 1 up: local APIC id 1, CPUID APIC id 1"),
        "{run}"
    );
    assert!(
        run.serial
            .contains("smp: 1 of 1 application processors started, 1 reported"),
        "{run}"
    );
}

#[test]
fn four_vcpus_all_run() {
    if !kvm_available("four_vcpus_all_run") {
        return;
    }
    let run = Vmm::new(&build_guest("smp")).args(["--vcpus", "4"]).run();
    run.assert_success();
    for i in 1..4 {
        assert!(
            run.serial.contains(&format!(
                "smp: cpu {i} up: local APIC id {i}, CPUID APIC id {i}"
            )),
            "{run}"
        );
    }
    assert!(
        run.serial
            .contains("smp: 3 of 3 application processors started, 3 reported"),
        "{run}"
    );
}

#[test]
fn pvh_entry() {
    if !kvm_available("pvh_entry") {
        return;
    }
    let run = Vmm::new(&build_asm_guest("pvh_hello")).run();
    run.assert_success();
    assert!(run.serial.starts_with("Kumo pvh guest\n"), "{run}");
    assert!(run.serial.contains("pvh: start_info magic ok"), "{run}");
    assert!(run.serial.contains("pvh: memory map ok"), "{run}");
}

#[test]
fn guest_garbage_does_not_crash_the_vmm() {
    if !kvm_available("guest_garbage_does_not_crash_the_vmm") {
        return;
    }
    let run = Vmm::new(&build_guest("garbage"))
        .args(["--memory-mib", "32"])
        .run();
    run.assert_success();
    assert!(
        run.serial
            .contains("garbage: survived 8254 accesses, 0 unexpected reads"),
        "{run}"
    );
}

#[test]
fn halting_for_good_exits_zero() {
    if !kvm_available("halting_for_good_exits_zero") {
        return;
    }
    // With two vCPUs: the AP never started, the BSP halted with interrupts off.
    let run = Vmm::new(&build_guest("halt"))
        .args(["--vcpus", "2"])
        .timeout(Duration::from_secs(20))
        .run();
    run.assert_success();
    assert!(
        run.serial.contains("halt: halting with interrupts off"),
        "{run}"
    );
    assert_eq!(
        run.stderr_lines(),
        vec!["kumo-vmm: guest halted with interrupts disabled on every vCPU"],
        "{run}"
    );
}

#[test]
fn virtio_devices_are_announced_on_the_command_line() {
    if !kvm_available("virtio_devices_are_announced_on_the_command_line") {
        return;
    }
    let dir = tempdir();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    std::fs::write(&a, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&b, vec![0u8; 1 << 20]).unwrap();
    let run = Vmm::new(&build_guest("hello"))
        .args([
            "--cmdline",
            "console=ttyS0",
            "--disk",
            &format!("{},ro", a.display()),
            "--disk",
            b.to_str().unwrap(),
        ])
        .run();
    run.assert_success();
    assert!(
        run.serial.contains(
            "cmdline: console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6\n"
        ),
        "one slot and IRQ per device, in order:\n{run}"
    );
}

#[test]
fn a_guest_crash_is_reported_with_status_3() {
    if !kvm_available("a_guest_crash_is_reported_with_status_3") {
        return;
    }
    // Executing from MMIO space with nothing behind it: KVM cannot emulate the fetch.
    let run = Vmm::new(&build_guest("crash")).run();
    assert_eq!(run.code(), Some(3), "{run}");
    assert!(run.serial.contains("crash: jumping to 0xd0800000"), "{run}");
    assert!(!run.serial.contains("still here"), "{run}");
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "{run}");
    assert!(
        lines[0]
            .starts_with("kumo-vmm: guest crashed: KVM internal error on vCPU 0 at rip 0xd0800000"),
        "{run}"
    );
}
