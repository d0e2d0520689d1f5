//! virtio-net under KVM: the `virtio_net` guest (vmm/guests/src/bin/virtio_net.rs) broadcasts a
//! `kumo-guest-hello` frame, which must show up on the TAP; the test answers with a
//! `kumo-host-hello` frame written into the TAP (through an AF_PACKET socket, as the VPC switch
//! does), which the guest must receive; then the guest sends hostile transmit chains and a last
//! `kumo-guest-bye` frame, which shows the device survived them.
//!
//! Needs root (to create the TAP) and /dev/kvm; otherwise SKIPPED.

mod common;

use common::*;
use kumo_testkit::{Netdev, PacketSocket, is_root};
use std::time::{Duration, Instant};

const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x42];
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A TAP device for one test, deleted when the test ends, pass or fail.
fn create_tap(tag: &str) -> Netdev {
    let name = format!("kvn{}{}", tag, std::process::id() % 100_000);
    Netdev::tap(name).unwrap_or_else(|e| panic!("creating the TAP: {e}"))
}

/// The next test frame (our ethertype) from the guest's MAC whose payload starts with `payload`,
/// seen within `limit` on `packet` (an AF_PACKET socket bound to the TAP's netdev, as the VPC
/// switch has it: it sees what the guest sends; what it sends goes to the guest).
fn expect_from_guest(packet: &PacketSocket, payload: &[u8], limit: Duration) -> Option<Vec<u8>> {
    let end = Instant::now() + limit;
    let mut buf = vec![0u8; 70_000];
    while Instant::now() < end {
        let Some(n) = packet.try_recv(&mut buf) else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let f = &buf[..n];
        if f.len() >= 14 + payload.len()
            && f[6..12] == GUEST_MAC
            && f[12..14] == ETHERTYPE
            && f[14..].starts_with(payload)
        {
            return Some(f.to_vec());
        }
    }
    None
}

#[test]
fn guest_frames_reach_the_tap_and_tap_frames_reach_the_guest() {
    const NAME: &str = "virtio_net::guest_frames_reach_the_tap_and_tap_frames_reach_the_guest";
    if !is_root() {
        skip(NAME, "needs root (CAP_NET_ADMIN) to create a TAP device");
        return;
    }
    if !kvm_available(NAME) {
        return;
    }
    let guest = build_guest("virtio_net");
    let tap = create_tap("a");
    let packet = PacketSocket::bind(tap.name()).expect("AF_PACKET socket on the TAP");
    let net = format!("tap={},mac=02:00:00:00:00:42", tap.name());
    let mut vmm = Vmm::new(&guest)
        .args(["--memory-mib", "64", "--net", &net])
        .timeout(Duration::from_secs(60))
        .spawn();

    let hello = expect_from_guest(&packet, b"kumo-guest-hello", Duration::from_secs(30));
    let Some(hello) = hello else {
        drop(packet);
        panic!("no kumo-guest-hello frame on the TAP:\n{}", vmm.wait());
    };
    assert_eq!(hello[0..6], [0xff; 6], "broadcast");
    assert_eq!(
        hello.len(),
        60,
        "padded to the Ethernet minimum, no vnet header on the wire"
    );

    let mut reply = Vec::new();
    reply.extend_from_slice(&GUEST_MAC);
    reply.extend_from_slice(&HOST_MAC);
    reply.extend_from_slice(&ETHERTYPE);
    reply.extend_from_slice(b"kumo-host-hello");
    reply.resize(60, 0);
    assert_eq!(packet.send(&reply).expect("send"), reply.len());

    let bye = expect_from_guest(&packet, b"kumo-guest-bye", Duration::from_secs(30));
    assert!(vmm.wait_for_serial("virtio-net: PASS", Duration::from_secs(30)));
    let run = vmm.wait();
    assert!(bye.is_some(), "no kumo-guest-bye frame on the TAP:\n{run}");
    run.assert_success();
    for line in [
        "virtio-net: mac 02:00:00:00:00:42, link up",
        "virtio-net: sent kumo-guest-hello, received kumo-host-hello",
        "virtio-net: bad transmit chains were returned unsent",
        "virtio-net: PASS",
    ] {
        assert!(run.serial.contains(line), "missing {line:?}:\n{run}");
    }
}

#[test]
fn a_missing_tap_is_one_clear_error() {
    const NAME: &str = "virtio_net::a_missing_tap_is_one_clear_error";
    if !kvm_available(NAME) {
        return;
    }
    let run = Vmm::new(&build_guest("virtio_net"))
        .args([
            "--memory-mib",
            "64",
            "--net",
            "tap=kumo-nosuch0,mac=02:00:00:00:00:42",
        ])
        .run();
    assert_ne!(run.code(), Some(0), "{run}");
    assert!(
        run.stderr
            .contains("TAP device kumo-nosuch0 does not exist"),
        "{run}"
    );
}
