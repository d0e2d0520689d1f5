//! kumo-vmm fails cleanly: a non-zero exit status and exactly one line on stderr that says what
//! went wrong, for each kind of bad setup.

mod common;
use common::*;
use std::process::Command;

/// Exit status 1 (VMM failure) and one `kumo-vmm: ` line on stderr containing `needle`.
fn assert_fails_with(run: &VmmRun, code: i32, needle: &str) {
    assert_eq!(run.code(), Some(code), "{run}");
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "exactly one line on stderr:\n{run}");
    assert!(lines[0].starts_with("kumo-vmm: "), "{run}");
    assert!(
        lines[0].contains(needle),
        "expected {needle:?} in the error:\n{run}"
    );
}

#[test]
fn bad_flags_exit_2() {
    for (args, needle) in [
        (
            vec!["--kernel", "/k", "--vcpus", "33"],
            "--vcpus 33 is out of range: 1-32",
        ),
        (
            vec!["--kernel", "/k", "--vcpus", "0"],
            "--vcpus 0 is out of range",
        ),
        (
            vec!["--kernel", "/k", "--memory-mib", "1"],
            "--memory-mib 1 is out of range",
        ),
        (vec!["--kernel", "/k", "--net", "tap=t0"], "mac= is missing"),
        (
            vec!["--kernel", "/k", "--disk", "/a,rx"],
            "expected PATH or PATH,ro",
        ),
        (vec!["--vcpus", "2"], "no kernel given"),
        (
            vec!["--config", "/nonexistent/kumo.json"],
            "cannot read config file",
        ),
    ] {
        let run = Vmm::bare().args(&args).run();
        assert_fails_with(&run, 2, needle);
    }
}

#[test]
fn kernel_missing() {
    if !kvm_available("kernel_missing") {
        return;
    }
    let run = Vmm::new(std::path::Path::new("/nonexistent/vmlinux")).run();
    assert_fails_with(&run, 1, "kernel /nonexistent/vmlinux not found");
}

#[test]
fn not_a_kernel() {
    if !kvm_available("not_a_kernel") {
        return;
    }
    let dir = tempdir();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x42u8; 100_000]).unwrap();
    let run = Vmm::new(&junk).run();
    assert_fails_with(&run, 1, "is not a kernel");
    let run = Vmm::new(dir.path()).run();
    assert_fails_with(&run, 1, "is not a kernel");
}

/// A minimal ELF64 whose one PT_LOAD segment at 1 MiB claims `memsz` bytes.
fn elf_with_memsz(memsz: u64) -> Vec<u8> {
    let mut e = vec![0u8; 64 + 56 + 16];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little endian
    e[6] = 1; // version
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let p = 64;
    e[p..p + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e[p + 4..p + 8].copy_from_slice(&7u32.to_le_bytes());
    e[p + 8..p + 16].copy_from_slice(&120u64.to_le_bytes()); // offset
    e[p + 16..p + 24].copy_from_slice(&0x10_0000u64.to_le_bytes()); // vaddr
    e[p + 24..p + 32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // paddr
    e[p + 32..p + 40].copy_from_slice(&16u64.to_le_bytes()); // filesz
    e[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes()); // memsz
    e[p + 48..p + 56].copy_from_slice(&0x1000u64.to_le_bytes());
    e[120..122].copy_from_slice(&[0xf4, 0xeb]); // hlt; jmp
    e
}

#[test]
fn memory_too_small_for_the_kernel() {
    if !kvm_available("memory_too_small_for_the_kernel") {
        return;
    }
    let dir = tempdir();
    let k = dir.path().join("big-vmlinux");
    std::fs::write(&k, elf_with_memsz(64 << 20)).unwrap();
    let run = Vmm::new(&k).args(["--memory-mib", "16"]).run();
    assert_fails_with(&run, 1, "guest memory (16 MiB) is too small for the kernel");
    assert!(
        run.stderr.contains("needs 65 MiB: raise --memory-mib"),
        "{run}"
    );
}

#[test]
fn missing_tap_disk_and_initrd() {
    if !kvm_available("missing_tap_disk_and_initrd") {
        return;
    }
    let guest = build_guest("hello");
    let run = Vmm::new(&guest)
        .args(["--net", "tap=kumo-notap9,mac=02:00:00:00:00:09"])
        .run();
    assert_fails_with(&run, 1, "TAP kumo-notap9");
    let run = Vmm::new(&guest)
        .args(["--disk", "/nonexistent/root.img"])
        .run();
    assert_fails_with(&run, 1, "disk /nonexistent/root.img");
    let run = Vmm::new(&guest)
        .args(["--initrd", "/nonexistent/initrd"])
        .run();
    assert_fails_with(&run, 1, "initrd /nonexistent/initrd not found");
    let run = Vmm::new(&guest)
        .args(["--api-socket", "/nonexistent/dir/api.sock"])
        .run();
    assert_fails_with(&run, 1, "cannot create the API socket");
}

#[test]
fn no_dev_kvm() {
    // Hide /dev behind an empty tmpfs in a private mount namespace (needs root and unshare).
    let probe = Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        skip(
            "no_dev_kvm",
            "cannot make a mount namespace (needs root and util-linux unshare)",
        );
        return;
    }
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /dev && exec {KUMO_VMM} --kernel /nonexistent --console none"
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("kumo-vmm: /dev/kvm not found"),
        "{stderr}"
    );
}
