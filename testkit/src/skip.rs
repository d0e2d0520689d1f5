//! Skipping honestly: the `SKIPPED:` line and the checks that decide a skip.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// Reports a test that cannot run here, as TEAM.md asks: `SKIPPED: <test>: <reason>` on stderr
/// and appended to the file `$KUMO_SKIP_LOG` names, if set. The caller then returns without
/// failing.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED: {test}: {reason}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("KUMO_SKIP_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        // One write of the whole line, so that tests running in parallel never interleave.
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

/// Whether this process runs as root (effective user id 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `tool` is on `PATH` (`command -v`).
pub fn have_tool(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The first of `tools` that is not on `PATH`, if any.
pub fn missing_tool<'a>(tools: &[&'a str]) -> Option<&'a str> {
    tools.iter().copied().find(|t| !have_tool(t))
}

/// Why this host cannot boot a stock Linux kernel under KVM, if it cannot: its `/dev/kvm` is
/// kvm-pvm (software nested virtualization), or the CPU has no vmx/svm.
pub fn no_hardware_virtualization() -> Option<String> {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some("this host's /dev/kvm is kvm-pvm (software nested virtualization), which cannot run a stock Linux kernel".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    if !flags.split_whitespace().any(|f| f == "vmx" || f == "svm") {
        return Some("no vmx/svm in /proc/cpuinfo: no hardware virtualization".into());
    }
    None
}
