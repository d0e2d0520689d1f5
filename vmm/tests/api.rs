//! The control API socket (JSON lines): status, graceful shutdown (Ctrl-Alt-Del through the
//! i8042), shutdown with a deadline for a guest that ignores it, force stop, bad requests.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

fn request(sock: &Path, line: &str) -> serde_json::Value {
    let mut s =
        UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut resp = String::new();
    BufReader::new(&s).read_line(&mut resp).unwrap();
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("bad response {resp:?}: {e}"))
}

fn start_idle(sock: &Path, cmdline: &str) -> RunningVmm {
    let mut vm = Vmm::new(&build_guest("idle"))
        .args([
            "--vcpus",
            "2",
            "--memory-mib",
            "64",
            "--api-socket",
            sock.to_str().unwrap(),
            "--cmdline",
            cmdline,
        ])
        .timeout(Duration::from_secs(30))
        .spawn();
    assert!(
        vm.wait_for_serial("idle: ready", Duration::from_secs(20)),
        "guest did not start:\n{}",
        vm.serial()
    );
    vm
}

#[test]
fn status_bad_requests_and_stop() {
    if !kvm_available("status_bad_requests_and_stop") {
        return;
    }
    let dir = tempdir();
    let sock = dir.path().join("api.sock");
    let vm = start_idle(&sock, "console=ttyS0");
    // Every thread (event loop and vCPUs) runs under a seccomp filter once the VM runs.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", vm.pid())).unwrap();
    let mut threads = 0;
    for t in tasks {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let name = status.lines().next().unwrap_or("").to_string();
        if name.contains("kumo-vcpu") || name.contains("kumo-vmm") {
            threads += 1;
            assert!(
                status.lines().any(|l| l == "Seccomp:\t2"),
                "{name} runs without seccomp:\n{status}"
            );
        }
    }
    assert!(threads >= 3, "the VMM thread and 2 vCPU threads");
    let st = request(&sock, r#"{"op":"status"}"#);
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(st["state"], "running");
    assert_eq!(st["vcpus"], 2);
    assert_eq!(st["memory_mib"], 64);
    assert_eq!(st["pid"], vm.pid());
    for bad in ["nonsense", r#"{"op":"reboot"}"#, "{}", &"x".repeat(3000)] {
        let r = request(&sock, bad);
        assert_eq!(r["ok"], false, "{bad} -> {r}");
        assert!(r["error"].is_string());
    }
    // A request line that never ends is cut off, and the VMM carries on.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(&vec![b'{'; 10_000]).unwrap();
    drop(s);
    assert_eq!(request(&sock, r#"{"op":"status"}"#)["state"], "running");
    let r = request(&sock, r#"{"op":"stop"}"#);
    assert_eq!(r["ok"], true);
    let run = vm.wait();
    run.assert_success();
    assert_eq!(
        run.stderr_lines(),
        vec!["kumo-vmm: stopped: stop requested through the API socket"],
        "{run}"
    );
    assert!(!sock.exists(), "the socket file is removed on exit");
}

#[test]
fn graceful_shutdown_through_ctrl_alt_del() {
    if !kvm_available("graceful_shutdown_through_ctrl_alt_del") {
        return;
    }
    let dir = tempdir();
    let sock = dir.path().join("api.sock");
    let vm = start_idle(&sock, "console=ttyS0");
    let r = request(&sock, r#"{"op":"shutdown","timeout_ms":20000}"#);
    assert_eq!(
        (r["ok"].clone(), r["state"].clone()),
        (true.into(), "shutting-down".into()),
        "{r}"
    );
    let run = vm.wait();
    run.assert_success();
    assert!(
        run.serial.contains("idle: ctrl-alt-del, rebooting"),
        "{run}"
    );
    assert_eq!(
        run.stderr_lines(),
        vec!["kumo-vmm: guest reset through the i8042"],
        "{run}"
    );
}

#[test]
fn shutdown_deadline_stops_a_guest_that_ignores_it() {
    if !kvm_available("shutdown_deadline_stops_a_guest_that_ignores_it") {
        return;
    }
    let dir = tempdir();
    let sock = dir.path().join("api.sock");
    let vm = start_idle(&sock, "console=ttyS0 ignore-keyboard");
    let r = request(&sock, r#"{"op":"shutdown","timeout_ms":300}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        request(&sock, r#"{"op":"status"}"#)["state"],
        "shutting-down"
    );
    let run = vm.wait();
    run.assert_success();
    assert!(!run.serial.contains("rebooting"), "{run}");
    assert_eq!(
        run.stderr_lines(),
        vec!["kumo-vmm: stopped: the guest did not shut down in time; stopped"],
        "{run}"
    );
}

#[test]
fn sigterm_stops_cleanly() {
    if !kvm_available("sigterm_stops_cleanly") {
        return;
    }
    let dir = tempdir();
    let sock = dir.path().join("api.sock");
    let vm = start_idle(&sock, "console=ttyS0");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &vm.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let run = vm.wait();
    run.assert_success();
    assert_eq!(
        run.stderr_lines(),
        vec!["kumo-vmm: stopped: received SIGTERM"],
        "{run}"
    );
    assert!(!sock.exists(), "the socket file is removed on exit");
}
