//! The guards really remove what they guard, and the checks say what is missing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kumo_testkit::{
    ChildGuard, Netdev, Netns, PacketSocket, is_root, lines_of, missing_tool, skip, unique_name,
};

#[test]
fn unique_names_differ_and_fit_a_netdev() {
    let (a, b) = (unique_name("ktk"), unique_name("ktk"));
    assert_ne!(a, b);
    assert!(a.starts_with("ktk") && a.len() <= 15, "{a}");
}

#[test]
fn missing_tool_names_the_first_absent_one() {
    assert_eq!(missing_tool(&["sh"]), None);
    assert_eq!(
        missing_tool(&["sh", "kumo-no-such-tool", "kumo-nor-this"]),
        Some("kumo-no-such-tool")
    );
}

#[test]
fn a_child_guard_kills_and_reaps_on_drop() {
    let child = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = child.id();
    drop(ChildGuard::new(child));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} is left"
    );
}

#[test]
fn a_terminate_first_guard_lets_the_child_exit_on_sigterm() {
    let mut child = Command::new("sh")
        .args([
            "-c",
            "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(10)).unwrap(),
        "ready"
    );
    let pid = child.id();
    drop(ChildGuard::terminate_first(child, Duration::from_secs(10)));
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(10)).unwrap(),
        "got-term"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} is left"
    );
}

#[test]
fn namespaces_and_netdevs_are_gone_after_drop() {
    const TEST: &str = "testkit namespaces_and_netdevs_are_gone_after_drop";
    if !is_root() {
        return skip(TEST, "needs root (network namespaces, veth, AF_PACKET)");
    }
    if let Some(tool) = missing_tool(&["ip"]) {
        return skip(TEST, &format!("{tool} is not installed"));
    }
    let ns = Netns::add(unique_name("ktkns")).unwrap();
    let ns_path = ns.path();
    assert!(ns_path.exists());
    let sleeper = ns.command(&["sleep", "60"]).spawn().unwrap();
    let host_end = unique_name("ktkh");
    kumo_testkit::run(&[
        "ip",
        "link",
        "add",
        &host_end,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])
    .unwrap();
    let veth = Netdev::adopt(host_end.clone());
    let socket = PacketSocket::bind(veth.name()).unwrap();
    socket.set_recv_timeout(Duration::from_millis(10)).unwrap();
    assert_eq!(socket.recv(&mut [0u8; 2048]), None, "nothing was sent");
    let tap = Netdev::tap(unique_name("ktkt")).unwrap();
    let tap_name = tap.name().to_string();
    assert!(Path::new(&format!("/sys/class/net/{tap_name}")).exists());

    drop((socket, veth, tap));
    assert!(!Path::new(&format!("/sys/class/net/{host_end}")).exists());
    assert!(!Path::new(&format!("/sys/class/net/{tap_name}")).exists());
    let sleeper_pid = sleeper.id();
    drop(ns);
    assert!(!ns_path.exists(), "{} is left", ns_path.display());
    // The process inside was killed; our Child only has its zombie left to reap.
    let mut sleeper = sleeper;
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "pid {sleeper_pid}: {status}");
}
