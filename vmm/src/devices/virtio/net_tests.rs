//! virtio-net request handling through the transport, with `virtio_queue::mock` rings, over a
//! socket-pair backend; and, as root, over a real TAP exchanging frames with an AF_PACKET socket.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use proptest::prelude::*;
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::chain::{ChainLayout, Segment};
use super::net::{
    MAX_FRAME_LEN, NetBackend, NetCounters, RX_QUEUE, RxVerdict, TX_QUEUE, TxVerdict, check_rx,
    check_tx,
};
use super::tap::VNET_HDR_LEN;
use super::test_utils::*;
use super::{DeviceError, GuestMemory, MacAddr, MmioTransport, Net, NetStats};
use crate::devices::bus::BusDevice;

const NEXT: u32 = VRING_DESC_F_NEXT;
const WRITE: u32 = VRING_DESC_F_WRITE;
const BUF: u64 = 0x10_0000;
const MAC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0x00, 0x07]);

/// A backend moving whole frames over a Unix datagram socket pair.
struct SocketBackend {
    sock: UnixDatagram,
    offload: Arc<Mutex<Option<u32>>>,
}

impl AsRawFd for SocketBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl NetBackend for SocketBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.recv(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.sock.send(frame)
    }
    fn set_offload(&mut self, flags: u32) -> Result<(), DeviceError> {
        *self.offload.lock().unwrap() = Some(flags);
        Ok(())
    }
}

/// An Ethernet frame with a vnet header in front: broadcast, from `MAC`, ethertype 0x88b5.
fn frame(payload_len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&MAC.0);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend(std::iter::repeat_n(fill, payload_len));
    f
}

struct Rig {
    mem: GuestMemory,
    peer: UnixDatagram,
    offload: Arc<Mutex<Option<u32>>>,
}

impl Rig {
    fn new() -> (Self, Net<SocketBackend>) {
        let (ours, peer) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        let offload = Arc::new(Mutex::new(None));
        let net = Net::with_backend(
            SocketBackend {
                sock: ours,
                offload: offload.clone(),
            },
            MAC,
        )
        .unwrap();
        (
            Rig {
                mem: guest_memory(),
                peer,
                offload,
            },
            net,
        )
    }

    fn queues(&self) -> [MockSplitQueue<'_, GuestMemory>; 2] {
        [
            MockSplitQueue::create(&self.mem, GuestAddress(0x1000), 16),
            MockSplitQueue::create(&self.mem, GuestAddress(0x8000), 16),
        ]
    }
}

fn start(
    rig: &Rig,
    net: impl super::VirtioDevice + 'static,
    features: u64,
) -> (MmioTransport, [MockSplitQueue<'_, GuestMemory>; 2]) {
    let mut t = MmioTransport::new(Box::new(net), rig.mem.clone()).unwrap();
    negotiate(&mut t, features);
    let [rx, tx] = rig.queues();
    setup_queue(&mut t, 0, &rx);
    setup_queue(&mut t, 1, &tx);
    driver_ok(&mut t);
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    // Activate (on the "event loop") and drain the activation kicks, so that the tests
    // control every pass.
    t.process_queue_event(TX_QUEUE);
    for e in t.queue_events() {
        let _ = e.read();
    }
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    (t, [rx, tx])
}

fn started(
    rig: &Rig,
    net: Net<SocketBackend>,
) -> (
    MmioTransport,
    [MockSplitQueue<'_, GuestMemory>; 2],
    Arc<NetStats>,
) {
    let stats = net.stats();
    let (t, q) = start(rig, net, 1 << VIRTIO_NET_F_MAC);
    (t, q, stats)
}

fn send_tx(
    t: &mut MmioTransport,
    mem: &GuestMemory,
    tx: &MockSplitQueue<'_, GuestMemory>,
    descs: &[RawDescriptor],
) -> (u32, u32) {
    let n = used_idx(mem, tx);
    tx.add_desc_chains(descs, 0).unwrap();
    t.process_queue_event(TX_QUEUE);
    assert_eq!(used_idx(mem, tx), n + 1);
    used_entry(mem, tx, n)
}

#[test]
fn transmitted_frames_reach_the_backend_with_their_header() {
    let (rig, net) = Rig::new();
    let (mut t, [_, tx], stats) = started(&rig, net);
    let mut f = frame(100, 0x5a);
    f[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM: the header goes through as the guest wrote it.
    rig.mem.write_slice(&f[..20], GuestAddress(BUF)).unwrap();
    rig.mem
        .write_slice(&f[20..], GuestAddress(BUF + 0x1000))
        .unwrap();
    let used = send_tx(
        &mut t,
        &rig.mem,
        &tx,
        &[
            desc(BUF, 20, NEXT, 1),
            desc(BUF + 0x1000, (f.len() - 20) as u32, 0, 0),
        ],
    );
    assert_eq!(used, (0, 0));
    let mut got = vec![0u8; 2000];
    let n = rig.peer.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
    assert_eq!(read_reg(&mut t, 0x60), 1);
    assert_eq!(
        stats.snapshot(),
        NetCounters {
            tx_frames: 1,
            tx_bytes: f.len() as u64,
            ..Default::default()
        }
    );
}

#[test]
fn bad_transmit_chains_are_returned_unsent_and_counted() {
    let (rig, net) = Rig::new();
    let (mut t, [_, tx], stats) = started(&rig, net);
    rig.mem
        .write_slice(&frame(100, 1), GuestAddress(BUF))
        .unwrap();
    let big = (MAX_FRAME_LEN / 2 + 1) as u32;
    let end = MEM_SIZE as u64;
    for (what, descs) in [
        ("writable descriptor", vec![desc(BUF, 126, WRITE, 0)]),
        ("shorter than the header", vec![desc(BUF, 11, 0, 0)]),
        (
            "oversize (two overlapping halves)",
            vec![desc(BUF, big, NEXT, 1), desc(BUF, big, 0, 0)],
        ),
        ("outside memory", vec![desc(end - 50, 100, 0, 0)]),
        ("loop", vec![desc(BUF, 64, NEXT, 1), desc(BUF, 64, NEXT, 0)]),
    ] {
        assert_eq!(send_tx(&mut t, &rig.mem, &tx, &descs), (0, 0), "{what}");
    }
    let mut buf = [0u8; 64];
    assert!(rig.peer.recv(&mut buf).is_err(), "nothing was sent");
    let c = stats.snapshot();
    assert_eq!((c.tx_malformed, c.tx_oversize, c.tx_frames), (4, 1, 0));
    // A good frame still goes out.
    send_tx(&mut t, &rig.mem, &tx, &[desc(BUF, 126, 0, 0)]);
    assert_eq!(rig.peer.recv(&mut buf).unwrap(), 64);
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

fn add_rx(rx: &MockSplitQueue<'_, GuestMemory>, at: u16, descs: &[RawDescriptor]) {
    rx.add_desc_chains(descs, at).unwrap();
}

#[test]
fn received_frames_land_in_guest_buffers() {
    let (rig, net) = Rig::new();
    let (mut t, [rx, _], stats) = started(&rig, net);
    add_rx(
        &rx,
        0,
        &[
            desc(BUF, 40, WRITE | NEXT, 1),
            desc(BUF + 0x1000, 2000, WRITE, 0),
        ],
    );
    let mut f = frame(500, 0x33);
    // The TAP leaves num_buffers unwritten; the device must set it to 1.
    f[10] = 0xaa;
    f[11] = 0xbb;
    rig.peer.send(&f).unwrap();
    t.process_host_event(false);
    assert_eq!(used_idx(&rig.mem, &rx), 1);
    assert_eq!(used_entry(&rig.mem, &rx, 0), (0, f.len() as u32));
    let mut got = vec![0u8; f.len()];
    rig.mem
        .read_slice(&mut got[..40], GuestAddress(BUF))
        .unwrap();
    rig.mem
        .read_slice(&mut got[40..], GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(&got[10..12], &[1, 0], "num_buffers");
    assert_eq!(&got[..10], &f[..10]);
    assert_eq!(&got[12..], &f[12..]);
    assert_eq!(read_reg(&mut t, 0x60), 1);
    let c = stats.snapshot();
    assert_eq!((c.rx_frames, c.rx_bytes), (1, f.len() as u64));
}

#[test]
fn frames_wait_for_receive_buffers() {
    let (rig, net) = Rig::new();
    let (mut t, [rx, _], stats) = started(&rig, net);
    rig.peer.send(&frame(60, 1)).unwrap();
    rig.peer.send(&frame(60, 2)).unwrap();
    t.process_host_event(false);
    assert_eq!(used_idx(&rig.mem, &rx), 0);
    // The guest adds two buffers and notifies the receive queue.
    add_rx(&rx, 0, &[desc(BUF, 2048, WRITE, 0)]);
    add_rx(&rx, 1, &[desc(BUF + 0x1000, 2048, WRITE, 0)]);
    t.process_queue_event(RX_QUEUE);
    assert_eq!(used_idx(&rig.mem, &rx), 2);
    assert_eq!(rig.mem.read_obj::<u8>(GuestAddress(BUF + 26)).unwrap(), 1);
    assert_eq!(
        rig.mem
            .read_obj::<u8>(GuestAddress(BUF + 0x1000 + 26))
            .unwrap(),
        2
    );
    assert_eq!(stats.snapshot().rx_frames, 2);
}

#[test]
fn oversize_frames_are_dropped_and_bad_receive_chains_returned() {
    let (rig, net) = Rig::new();
    let (mut t, [rx, _], stats) = started(&rig, net);
    // Chain 0: readable (wrong direction). Chain 1: too short for the header.
    // Chain 2: 100 bytes, usable for small frames only.
    add_rx(&rx, 0, &[desc(BUF, 2048, 0, 0)]);
    add_rx(&rx, 1, &[desc(BUF + 0x1000, 8, WRITE, 0)]);
    add_rx(&rx, 2, &[desc(BUF + 0x2000, 100, WRITE, 0)]);
    rig.peer.send(&frame(200, 9)).unwrap(); // too big for chain 2: dropped
    rig.peer.send(&frame(40, 7)).unwrap(); // fits chain 2
    t.process_host_event(false);
    assert_eq!(used_idx(&rig.mem, &rx), 3);
    assert_eq!(used_entry(&rig.mem, &rx, 0), (0, 0));
    assert_eq!(used_entry(&rig.mem, &rx, 1), (1, 0));
    assert_eq!(used_entry(&rig.mem, &rx, 2), (2, 66));
    assert_eq!(
        rig.mem
            .read_obj::<u8>(GuestAddress(BUF + 0x2000 + 26))
            .unwrap(),
        7
    );
    let c = stats.snapshot();
    assert_eq!((c.rx_bad_chains, c.rx_oversize, c.rx_frames), (2, 1, 1));
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn runt_reads_from_the_backend_are_counted_and_skipped() {
    let (rig, net) = Rig::new();
    let (mut t, [rx, _], stats) = started(&rig, net);
    add_rx(&rx, 0, &[desc(BUF, 2048, WRITE, 0)]);
    rig.peer.send(&[1, 2, 3]).unwrap();
    rig.peer.send(&frame(10, 4)).unwrap();
    t.process_host_event(false);
    assert_eq!(used_entry(&rig.mem, &rx, 0), (0, 36));
    assert_eq!(stats.snapshot().rx_errors, 1);
}

#[test]
fn mac_and_link_status_are_in_config_space() {
    let (rig, net) = Rig::new();
    let (mut t, _, _) = started(&rig, net);
    let mut mac = [0u8; 6];
    t.read(0x100, &mut mac);
    assert_eq!(mac, MAC.0);
    let mut status = [0u8; 2];
    t.read(0x106, &mut status);
    assert_eq!(u16::from_le_bytes(status), 1, "VIRTIO_NET_S_LINK_UP");
    write_reg(&mut t, 0x14, 0);
    let features = read_reg(&mut t, 0x10);
    assert_ne!(features & (1 << VIRTIO_NET_F_MAC), 0);
    assert_ne!(features & (1 << VIRTIO_NET_F_STATUS), 0);
    // The MAC is read-only for a modern driver.
    t.write(0x100, &[0xff; 6]);
    t.read(0x100, &mut mac);
    assert_eq!(mac, MAC.0);
}

#[test]
fn activation_applies_the_accepted_offloads() {
    let (rig, net) = Rig::new();
    let _ = start(
        &rig,
        net,
        (1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_TSO4),
    );
    assert_eq!(
        *rig.offload.lock().unwrap(),
        Some(libc::TUN_F_CSUM | libc::TUN_F_TSO4)
    );
}

#[test]
fn multicast_macs_are_refused() {
    let (ours, _peer) = UnixDatagram::pair().unwrap();
    let backend = SocketBackend {
        sock: ours,
        offload: Arc::default(),
    };
    assert!(Net::with_backend(backend, MacAddr([1, 0, 0, 0, 0, 0])).is_err());
}

/// Through the event manager, as the VMM runs it: with no receive buffers the device stops
/// watching the backend (no busy loop) and starts again once the guest adds buffers.
#[test]
fn event_loop_stops_reading_while_the_guest_has_no_buffers() {
    let (rig, net) = Rig::new();
    let (t, [rx, _], stats) = started(&rig, net);
    let t = Arc::new(Mutex::new(t));
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    manager.add_subscriber(t.clone());
    rig.peer.send(&frame(60, 1)).unwrap();
    rig.peer.send(&frame(60, 2)).unwrap();
    assert_eq!(manager.run_with_timeout(200).unwrap(), 1);
    // One frame is held; the fd is no longer watched although the socket still has data.
    assert_eq!(manager.run_with_timeout(200).unwrap(), 0);
    add_rx(&rx, 0, &[desc(BUF, 2048, WRITE, 0)]);
    add_rx(&rx, 1, &[desc(BUF + 0x1000, 2048, WRITE, 0)]);
    t.lock().unwrap().queue_events()[RX_QUEUE].write(1).unwrap();
    assert_eq!(manager.run_with_timeout(200).unwrap(), 1);
    assert_eq!(used_idx(&rig.mem, &rx), 2);
    assert_eq!(stats.snapshot().rx_frames, 2);
    // Watching again: a new frame with no buffer left is read and held.
    rig.peer.send(&frame(60, 3)).unwrap();
    assert_eq!(manager.run_with_timeout(200).unwrap(), 1);
    assert_eq!(manager.run_with_timeout(200).unwrap(), 0);
}

fn segment() -> impl Strategy<Value = Segment> {
    (
        any::<u64>(),
        prop_oneof![0u32..100, 0u32..70000, any::<u32>()],
    )
        .prop_map(|(addr, len)| Segment {
            addr: GuestAddress(addr),
            len,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The transmit and receive checks only pass chains that are safe to use.
    #[test]
    fn chain_checks_only_pass_usable_chains(
        readable in proptest::collection::vec(segment(), 0..4),
        writable in proptest::collection::vec(segment(), 0..4),
        frame_len in 0usize..70000,
    ) {
        let layout = ChainLayout { readable, writable };
        if let TxVerdict::Send(len) = check_tx(&layout) {
            prop_assert!(layout.writable.is_empty());
            prop_assert!((VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&len));
            prop_assert_eq!(len as u64, layout.readable_len());
        }
        match check_rx(&layout, frame_len) {
            RxVerdict::Deliver => {
                prop_assert!(layout.readable.is_empty());
                prop_assert!(layout.writable_len() >= frame_len as u64);
                prop_assert!(layout.writable_len() >= VNET_HDR_LEN as u64);
            }
            RxVerdict::FrameTooBig => prop_assert!(layout.writable_len() < frame_len as u64),
            RxVerdict::BadChain => {}
        }
    }

    /// Random descriptor tables and rings on both queues with frames flowing both ways: the
    /// device never panics or hangs, and everything it sends is a whole frame it was given.
    #[test]
    fn garbage_rings_never_break_the_device(
        tables in proptest::collection::vec(any::<u8>(), 2 * 16 * 16),
        rings in proptest::collection::vec(0u16..20, 32),
        idx in (0u16..40, 0u16..40),
        frames in proptest::collection::vec(0usize..3000, 0..4),
    ) {
        let (rig, net) = Rig::new();
        let (mut t, [rx, tx], _) = started(&rig, net);
        for (q, part) in [(&rx, 0), (&tx, 1)] {
            rig.mem
                .write_slice(&tables[part * 256..(part + 1) * 256], q.desc_table_addr())
                .unwrap();
            for i in 0..16 {
                q.avail().ring().ref_at(i).unwrap().store(rings[part * 16 + i]);
            }
        }
        rx.avail().idx().store(idx.0);
        tx.avail().idx().store(idx.1);
        for len in frames {
            let _ = rig.peer.send(&frame(len, 0x42));
        }
        t.process_host_event(false);
        t.process_queue_event(RX_QUEUE);
        t.process_queue_event(TX_QUEUE);
        t.process_host_event(true);
        let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
        while let Ok(n) = rig.peer.recv(&mut buf) {
            prop_assert!((VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&n));
        }
    }
}

/// Tests with a real TAP device (root only).
mod tap {
    use super::*;
    use crate::devices::virtio::tap::Tap;
    use kumo_testkit::{Netdev, PacketSocket, unique_name};

    /// A TAP device created for one test and deleted when it ends, pass or fail.
    fn create_tap() -> Netdev {
        Netdev::tap(unique_name("kvt")).unwrap_or_else(|e| panic!("creating the TAP: {e}"))
    }

    /// An AF_PACKET socket bound to `ifname`: what the VPC switch uses.
    fn packet_socket(ifname: &str) -> PacketSocket {
        PacketSocket::bind(ifname).unwrap_or_else(|e| panic!("AF_PACKET socket on {ifname}: {e}"))
    }

    /// The next frame with our test ethertype on `packet`, within two seconds.
    fn recv_test_frame(packet: &PacketSocket) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 70000];
        while Instant::now() < deadline {
            let Some(n) = packet.try_recv(&mut buf) else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let f = &buf[..n];
            if f.len() >= 14 && f[12..14] == [0x88, 0xb5] {
                return Some(f.to_vec());
            }
        }
        None
    }

    fn read_tap_frame(tap: &Tap) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        while Instant::now() < deadline {
            match tap.read_frame(&mut buf) {
                Ok(n)
                    if n >= VNET_HDR_LEN + 14
                        && buf[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == [0x88, 0xb5] =>
                {
                    return Some(buf[..n].to_vec());
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        None
    }

    #[test]
    fn tap_exchanges_frames_with_an_af_packet_socket() {
        if !require_root("virtio::net_tests::tap::tap_exchanges_frames_with_an_af_packet_socket") {
            return;
        }
        let guard = create_tap();
        let tap = Tap::open(guard.name()).unwrap();
        let packet = packet_socket(guard.name());

        let out = frame(200, 0x11);
        assert_eq!(tap.write_frame(&out).unwrap(), out.len());
        let seen = recv_test_frame(&packet).expect("frame from the TAP on AF_PACKET");
        assert_eq!(
            &seen[..],
            &out[VNET_HDR_LEN..],
            "vnet header stripped on the wire"
        );

        let inbound = &frame(300, 0x22)[VNET_HDR_LEN..];
        assert_eq!(packet.send(inbound).expect("send"), inbound.len());
        let got = read_tap_frame(&tap).expect("frame from AF_PACKET on the TAP");
        assert_eq!(&got[VNET_HDR_LEN..], inbound);
        assert_eq!(got[0], 0, "no offload flags on a plain frame");
    }

    #[test]
    fn net_device_moves_frames_between_guest_and_tap() {
        if !require_root("virtio::net_tests::tap::net_device_moves_frames_between_guest_and_tap") {
            return;
        }
        let guard = create_tap();
        let mem = guest_memory();
        let net = Net::new(guard.name(), MAC).unwrap();
        let stats = net.stats();
        let packet = packet_socket(guard.name());
        let mut t = MmioTransport::new(Box::new(net), mem.clone()).unwrap();
        negotiate(
            &mut t,
            (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_GUEST_CSUM),
        );
        let rx = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        setup_queue(&mut t, 0, &rx);
        setup_queue(&mut t, 1, &tx);
        driver_ok(&mut t);
        t.process_queue_event(TX_QUEUE);
        assert_eq!(
            t.status() & VIRTIO_CONFIG_S_NEEDS_RESET,
            0,
            "TUNSETOFFLOAD worked"
        );

        // Guest to host.
        let out = frame(64, 0x33);
        mem.write_slice(&out, GuestAddress(BUF)).unwrap();
        send_tx(&mut t, &mem, &tx, &[desc(BUF, out.len() as u32, 0, 0)]);
        let seen = recv_test_frame(&packet).expect("guest frame on the TAP");
        assert_eq!(&seen[..], &out[VNET_HDR_LEN..]);

        // Host to guest.
        add_rx(&rx, 0, &[desc(BUF + 0x1_0000, 2048, WRITE, 0)]);
        let inbound = &frame(100, 0x44)[VNET_HDR_LEN..];
        assert_eq!(packet.send(inbound).expect("send"), inbound.len());
        let deadline = Instant::now() + Duration::from_secs(2);
        while used_idx(&mem, &rx) == 0 && Instant::now() < deadline {
            t.process_host_event(false);
            std::thread::sleep(Duration::from_millis(5));
        }
        let (_, len) = used_entry(&mem, &rx, 0);
        assert_eq!(len as usize, VNET_HDR_LEN + inbound.len());
        let mut got = vec![0u8; inbound.len()];
        mem.read_slice(&mut got, GuestAddress(BUF + 0x1_0000 + VNET_HDR_LEN as u64))
            .unwrap();
        assert_eq!(&got[..], inbound);
        let c = stats.snapshot();
        assert_eq!((c.tx_frames, c.rx_frames), (1, 1));
    }

    #[test]
    fn a_missing_tap_is_a_clear_error() {
        let err = Net::new("kumo-missing0", MAC).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
