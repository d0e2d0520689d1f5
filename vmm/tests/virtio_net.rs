//! virtio-net under KVM: the `virtio_net` guest (vmm/guests/src/bin/virtio_net.rs) broadcasts a
//! `kumo-guest-hello` frame, which must show up on the TAP; the test answers with a
//! `kumo-host-hello` frame written into the TAP (through an AF_PACKET socket, as the VPC switch
//! does), which the guest must receive; then the guest sends hostile transmit chains and a last
//! `kumo-guest-bye` frame, which shows the device survived them.
//!
//! Needs root (to create the TAP) and /dev/kvm; otherwise SKIPPED.

mod common;

use common::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x42];
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A TAP device for one test, deleted when the test ends, pass or fail.
struct TapGuard(String);

impl TapGuard {
    fn create(tag: &str) -> TapGuard {
        let name = format!("kvn{}{}", tag, std::process::id() % 100_000);
        let ok = Command::new("ip")
            .args(["tuntap", "add", "dev", &name, "mode", "tap"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "ip tuntap add dev {name} mode tap failed");
        let guard = TapGuard(name);
        // The host stays out of the way: no IPv6 chatter on the TAP.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", guard.0),
            "1",
        );
        let ok = Command::new("ip")
            .args(["link", "set", "dev", &guard.0, "up"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "ip link set {} up failed", guard.0);
        guard
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.0])
            .status();
    }
}

/// An AF_PACKET socket bound to the TAP's netdev: sees what the guest sends; what it sends goes
/// to the guest.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bind(ifname: &str) -> PacketSocket {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket() takes no pointers; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: `name` is NUL-terminated and outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain data; all zeros is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
        PacketSocket(fd)
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for reads of its length during the call.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next test frame (our ethertype) from the guest's MAC whose payload starts with
    /// `payload`, within `limit`.
    fn expect_from_guest(&self, payload: &[u8], limit: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + limit;
        let mut buf = vec![0u8; 70_000];
        while Instant::now() < end {
            // SAFETY: `buf` is valid for writes of its length during the call.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            let f = &buf[..n as usize];
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
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
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
    let tap = TapGuard::create("a");
    let packet = PacketSocket::bind(&tap.0);
    let net = format!("tap={},mac=02:00:00:00:00:42", tap.0);
    let mut vmm = Vmm::new(&guest)
        .args(["--memory-mib", "64", "--net", &net])
        .timeout(Duration::from_secs(60))
        .spawn();

    let hello = packet.expect_from_guest(b"kumo-guest-hello", Duration::from_secs(30));
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
    packet.send(&reply);

    let bye = packet.expect_from_guest(b"kumo-guest-bye", Duration::from_secs(30));
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
