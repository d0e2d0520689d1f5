//! The switch's decisions on crafted frames, without a network (runs anywhere, no root):
//! ARP, DHCP, stateful security groups and what rule changes do to existing flows, TTL, the
//! internet gateway's NAT, and fuzzing of the whole data path.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use kumo_net::config::SwitchConfig;
use kumo_net::counters::DropReason;
use kumo_net::packet::{self, Arp, FrameKind, VnetHdr};
use kumo_net::policy::Protocol;
use kumo_net::policy::security_group::{Peer, SgRule};
use kumo_net::switch::{ROUTER_MAC, Switch, Verdict};
use kumo_net::{MacAddr, PortId};
use proptest::prelude::*;
use serde_json::json;

const CLIENT: PortId = PortId(1);
const SERVER: PortId = PortId(2);
const OTHER: PortId = PortId(3);
const GATEWAY: PortId = PortId(4);
const CLIENT_MAC: MacAddr = MacAddr([2, 0, 10, 0, 1, 5]);
const SERVER_MAC: MacAddr = MacAddr([2, 0, 10, 0, 2, 5]);
const HOST_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xfe]);

fn switch() -> Switch {
    let cfg = json!({
        "internet_gateway": {"netdev": "gw", "host_ip": "198.18.0.1", "public_cidr": "198.18.0.0/24"},
        "vpcs": [{
            "id": "vpc-00000000000000001", "cidr": "10.0.0.0/16", "internet_gateway": true,
            "main_routes": [{"destination": "0.0.0.0/0", "target": "igw"}],
            "security_groups": [
                {"id": "sg-0000000000000c11e", "name": "client"},
                {"id": "sg-00000000000005e7e", "name": "server", "ingress": [
                    {"protocol": "tcp", "port": 22, "cidr": "10.0.1.0/24"},
                    {"protocol": "tcp", "port": 22, "cidr": "198.18.0.1/32"}]}
            ],
            "subnets": [{"id": "subnet-0000000000000000a", "cidr": "10.0.1.0/24"},
                        {"id": "subnet-0000000000000000b", "cidr": "10.0.2.0/24"}]
        }],
        "ports": [
            {"netdev": "a", "subnet": "subnet-0000000000000000a", "mac": CLIENT_MAC.to_string(),
             "private_ip": "10.0.1.5", "security_groups": ["client"]},
            {"netdev": "b", "subnet": "subnet-0000000000000000b", "mac": SERVER_MAC.to_string(),
             "private_ip": "10.0.2.5", "security_groups": ["server"], "public_ip": "198.18.0.10"},
            {"netdev": "c", "subnet": "subnet-0000000000000000a", "mac": "02:00:0a:00:01:06",
             "private_ip": "10.0.1.6"}
        ]
    });
    let (sw, plans) = SwitchConfig::from_json(&cfg.to_string())
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(plans.len(), 4);
    assert_eq!(plans[3].port, GATEWAY);
    sw
}

fn tcp(
    src_mac: MacAddr,
    src: (&str, u16),
    dst: (&str, u16),
    syn: bool,
    ack: bool,
    ttl: u8,
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(src_mac.0, ROUTER_MAC.0)
        .ipv4(
            src.0.parse::<Ipv4Addr>().unwrap().octets(),
            dst.0.parse::<Ipv4Addr>().unwrap().octets(),
            ttl,
        )
        .tcp(src.1, dst.1, 1000, 65535);
    let b = if syn { b.syn() } else { b };
    let b = if ack { b.ack(1) } else { b };
    let mut v = Vec::new();
    b.write(&mut v, b"data").unwrap();
    v
}

fn decide(sw: &mut Switch, now: Instant, port: PortId, mut frame: Vec<u8>) -> (Verdict, Vec<u8>) {
    let v = sw.handle_frame(now, port, &VnetHdr::default(), &mut frame);
    (v, frame)
}

#[test]
fn arp_is_answered_by_the_router() {
    let mut sw = switch();
    let now = Instant::now();
    let ask = |target: &str| {
        packet::build_arp(
            MacAddr::BROADCAST,
            CLIENT_MAC,
            &Arp {
                operation: Arp::REQUEST,
                sender_mac: CLIENT_MAC,
                sender_ip: "10.0.1.5".parse().unwrap(),
                target_mac: MacAddr::ZERO,
                target_ip: target.parse().unwrap(),
            },
        )
    };
    for target in [
        "10.0.1.1",
        "10.0.1.6",
        "10.0.2.5",
        "169.254.169.254",
        "10.0.0.2",
    ] {
        let (v, _) = decide(&mut sw, now, CLIENT, ask(target));
        assert_eq!(v, Verdict::Consumed);
        let out = sw.take_generated();
        assert_eq!(out.len(), 1, "no answer for {target}");
        let f = packet::parse_frame(&out[0].1, &VnetHdr::default()).unwrap();
        let FrameKind::Arp(reply) = f.kind else {
            panic!()
        };
        assert_eq!(reply.operation, Arp::REPLY);
        assert_eq!(reply.sender_mac, ROUTER_MAC);
        assert_eq!(reply.sender_ip, target.parse::<Ipv4Addr>().unwrap());
        assert_eq!(f.dst_mac, CLIENT_MAC);
    }
    // Its own address (duplicate address detection) and unused addresses: silence.
    for target in ["10.0.1.5", "10.0.1.77"] {
        decide(&mut sw, now, CLIENT, ask(target));
        assert!(sw.take_generated().is_empty(), "answered {target}");
    }
}

#[test]
fn dhcp_discover_gets_an_offer_from_the_router() {
    let mut sw = switch();
    let msg = kumo_net::dhcp::client_message(
        dhcproto::v4::MessageType::Discover,
        CLIENT_MAC,
        9,
        None,
        true,
    );
    let frame = packet::build_udp(
        CLIENT_MAC,
        MacAddr::BROADCAST,
        (Ipv4Addr::UNSPECIFIED, 68),
        (Ipv4Addr::BROADCAST, 67),
        &msg,
    );
    decide(&mut sw, Instant::now(), CLIENT, frame);
    let out = sw.take_generated();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, CLIENT);
    let f = packet::parse_frame(&out[0].1, &VnetHdr::default()).unwrap();
    assert_eq!(f.src_mac, ROUTER_MAC);
    let FrameKind::Ipv4(info) = f.kind else {
        panic!()
    };
    assert_eq!(info.pkt.src, Ipv4Addr::new(10, 0, 1, 1));
    assert_eq!(info.pkt.src_port(), Some(67));
    // A DHCP message for another MAC is not answered.
    let msg = kumo_net::dhcp::client_message(
        dhcproto::v4::MessageType::Discover,
        MacAddr([2, 9, 9, 9, 9, 9]),
        9,
        None,
        true,
    );
    let frame = packet::build_udp(
        CLIENT_MAC,
        MacAddr::BROADCAST,
        (Ipv4Addr::UNSPECIFIED, 68),
        (Ipv4Addr::BROADCAST, 67),
        &msg,
    );
    decide(&mut sw, Instant::now(), CLIENT, frame);
    assert!(sw.take_generated().is_empty());
    assert_eq!(sw.counters().dropped(DropReason::BadRequest), 1);
}

#[test]
fn routed_packets_get_new_macs_and_ttl() {
    let mut sw = switch();
    let (v, out) = decide(
        &mut sw,
        Instant::now(),
        CLIENT,
        tcp(
            CLIENT_MAC,
            ("10.0.1.5", 40000),
            ("10.0.2.5", 22),
            true,
            false,
            64,
        ),
    );
    assert_eq!(v, Verdict::Forward(SERVER, VnetHdr::default()));
    let f = packet::parse_frame(&out, &VnetHdr::default()).expect("checksums still valid");
    assert_eq!((f.src_mac, f.dst_mac), (ROUTER_MAC, SERVER_MAC));
    let FrameKind::Ipv4(info) = f.kind else {
        panic!()
    };
    assert_eq!(info.ttl, 63);
    // TTL 1 cannot be routed.
    let (v, _) = decide(
        &mut sw,
        Instant::now(),
        CLIENT,
        tcp(
            CLIENT_MAC,
            ("10.0.1.5", 40001),
            ("10.0.2.5", 22),
            true,
            false,
            1,
        ),
    );
    assert_eq!(v, Verdict::Consumed);
    assert_eq!(sw.counters().dropped(DropReason::TtlExpired), 1);
}

/// EC2's documented behaviour: removing a rule does not cut flows it already allowed; new
/// flows are decided by the rules in force.
#[test]
fn rule_changes_and_tracked_flows() {
    let mut sw = switch();
    let t0 = Instant::now();
    let syn = tcp(
        CLIENT_MAC,
        ("10.0.1.5", 40000),
        ("10.0.2.5", 22),
        true,
        false,
        64,
    );
    assert!(matches!(
        decide(&mut sw, t0, CLIENT, syn).0,
        Verdict::Forward(SERVER, _)
    ));
    // The reply passes the client's group although it has no inbound rule (stateful).
    let synack = tcp(
        SERVER_MAC,
        ("10.0.2.5", 22),
        ("10.0.1.5", 40000),
        true,
        true,
        64,
    );
    assert!(matches!(
        decide(&mut sw, t0, SERVER, synack).0,
        Verdict::Forward(CLIENT, _)
    ));
    // Revoke the rule that let the flow in.
    let rule = SgRule {
        protocol: Protocol::Tcp,
        from_port: 22,
        to_port: 22,
        peer: Peer::Cidr("10.0.1.0/24".parse().unwrap()),
        description: None,
    };
    sw.model_mut()
        .revoke("sg-00000000000005e7e", true, &rule)
        .unwrap();
    // The established flow goes on...
    let ack = tcp(
        CLIENT_MAC,
        ("10.0.1.5", 40000),
        ("10.0.2.5", 22),
        false,
        true,
        64,
    );
    let later = t0 + Duration::from_secs(60);
    assert!(matches!(
        decide(&mut sw, later, CLIENT, ack.clone()).0,
        Verdict::Forward(SERVER, _)
    ));
    // ...a new one does not.
    let syn2 = tcp(
        CLIENT_MAC,
        ("10.0.1.5", 40001),
        ("10.0.2.5", 22),
        true,
        false,
        64,
    );
    assert_eq!(
        decide(&mut sw, later, CLIENT, syn2.clone()).0,
        Verdict::Consumed
    );
    assert_eq!(sw.counters().dropped(DropReason::SecurityGroup), 1);
    // An idle established flow is forgotten after EC2's 432000 s timeout.
    let much_later = later + Duration::from_secs(432_001);
    assert_eq!(
        decide(&mut sw, much_later, CLIENT, ack).0,
        Verdict::Consumed
    );
    // Adding the rule back applies to the next packet.
    sw.model_mut()
        .authorize_ingress("sg-00000000000005e7e", rule)
        .unwrap();
    assert!(matches!(
        decide(&mut sw, much_later, CLIENT, syn2).0,
        Verdict::Forward(SERVER, _)
    ));
}

/// ICMP errors about a tracked flow pass the groups (EC2 does the same), others do not.
#[test]
fn icmp_errors_of_tracked_flows_pass() {
    let mut sw = switch();
    let now = Instant::now();
    let syn = tcp(
        CLIENT_MAC,
        ("10.0.1.5", 40000),
        ("10.0.2.5", 22),
        true,
        false,
        64,
    );
    let quoted = syn[14..14 + 28].to_vec();
    assert!(matches!(
        decide(&mut sw, now, CLIENT, syn).0,
        Verdict::Forward(SERVER, _)
    ));
    let unreachable = |quote: &[u8]| {
        let b = etherparse::PacketBuilder::ethernet2(SERVER_MAC.0, ROUTER_MAC.0)
            .ipv4([10, 0, 2, 5], [10, 0, 1, 5], 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ));
        let mut v = Vec::new();
        b.write(&mut v, quote).unwrap();
        v
    };
    // The client's group has no inbound rules at all: only relatedness lets this in.
    let (v, _) = decide(&mut sw, now, SERVER, unreachable(&quoted));
    assert!(
        matches!(v, Verdict::Forward(CLIENT, _)),
        "{}",
        sw.counters()
    );
    // An error about a flow that never existed is dropped.
    let mut other = quoted.clone();
    other[20] = 0x12; // another source port in the quoted TCP header
    let (v, _) = decide(&mut sw, now, SERVER, unreachable(&other));
    assert_eq!(v, Verdict::Consumed);
    assert_eq!(sw.counters().dropped(DropReason::SecurityGroup), 1);
}

#[test]
fn spoofing_is_dropped() {
    let mut sw = switch();
    let now = Instant::now();
    let (v, _) = decide(
        &mut sw,
        now,
        CLIENT,
        tcp(
            CLIENT_MAC,
            ("10.0.1.99", 40000),
            ("10.0.2.5", 22),
            true,
            false,
            64,
        ),
    );
    assert_eq!(v, Verdict::Consumed);
    assert_eq!(sw.counters().dropped(DropReason::SpoofedIp), 1);
    let (v, _) = decide(
        &mut sw,
        now,
        CLIENT,
        tcp(
            SERVER_MAC,
            ("10.0.1.5", 40000),
            ("10.0.2.5", 22),
            true,
            false,
            64,
        ),
    );
    assert_eq!(v, Verdict::Consumed);
    assert_eq!(sw.counters().dropped(DropReason::SpoofedMac), 1);
    // A port is who it is: the server's port cannot speak for the client's address.
    let (v, _) = decide(
        &mut sw,
        now,
        SERVER,
        tcp(
            SERVER_MAC,
            ("10.0.1.5", 22),
            ("10.0.1.6", 22),
            true,
            false,
            64,
        ),
    );
    assert_eq!(v, Verdict::Consumed);
    assert_eq!(sw.counters().dropped(DropReason::SpoofedIp), 2);
    let _ = OTHER;
}

#[test]
fn internet_gateway_translates_one_to_one() {
    let mut sw = switch();
    let now = Instant::now();
    // The host asks for the public address; the gateway answers and learns the host's MAC.
    let arp = packet::build_arp(
        MacAddr::BROADCAST,
        HOST_MAC,
        &Arp {
            operation: Arp::REQUEST,
            sender_mac: HOST_MAC,
            sender_ip: "198.18.0.1".parse().unwrap(),
            target_mac: MacAddr::ZERO,
            target_ip: "198.18.0.10".parse().unwrap(),
        },
    );
    decide(&mut sw, now, GATEWAY, arp);
    assert_eq!(sw.take_generated().len(), 1);
    // In: 198.18.0.1 -> 198.18.0.10:22 becomes 198.18.0.1 -> 10.0.2.5:22.
    let mut syn = tcp(
        HOST_MAC,
        ("198.18.0.1", 50000),
        ("198.18.0.10", 22),
        true,
        false,
        64,
    );
    syn[6..12].copy_from_slice(&HOST_MAC.0);
    let (v, out) = decide(&mut sw, now, GATEWAY, syn);
    assert!(
        matches!(v, Verdict::Forward(SERVER, _)),
        "{v:?} {}",
        sw.counters()
    );
    let f = packet::parse_frame(&out, &VnetHdr::default()).expect("valid checksums after NAT");
    let FrameKind::Ipv4(info) = f.kind else {
        panic!()
    };
    assert_eq!(
        (info.pkt.src, info.pkt.dst),
        ("198.18.0.1".parse().unwrap(), "10.0.2.5".parse().unwrap())
    );
    // Out: the reply leaves as the public address, to the host's MAC.
    let synack = tcp(
        SERVER_MAC,
        ("10.0.2.5", 22),
        ("198.18.0.1", 50000),
        true,
        true,
        64,
    );
    let (v, out) = decide(&mut sw, now, SERVER, synack);
    assert!(matches!(v, Verdict::Forward(GATEWAY, _)));
    let f = packet::parse_frame(&out, &VnetHdr::default()).expect("valid checksums after NAT");
    assert_eq!(f.dst_mac, HOST_MAC);
    let FrameKind::Ipv4(info) = f.kind else {
        panic!()
    };
    assert_eq!(info.pkt.src, "198.18.0.10".parse::<Ipv4Addr>().unwrap());
    // The client has no public address: its traffic to the host is dropped, with the reason.
    let (v, _) = decide(
        &mut sw,
        now,
        CLIENT,
        tcp(
            CLIENT_MAC,
            ("10.0.1.5", 40000),
            ("198.18.0.1", 80),
            true,
            false,
            64,
        ),
    );
    assert_eq!(v, Verdict::Consumed);
    assert_eq!(sw.counters().dropped(DropReason::NoInternetGateway), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Whatever a guest or the host side sends, the switch neither panics nor forwards a frame
    /// it could not parse.
    #[test]
    fn any_frame_on_any_port(data in proptest::collection::vec(any::<u8>(), 0..300), port in 1u32..6, flags in any::<u8>(), gso in any::<u8>(), keep_header in any::<bool>()) {
        let mut sw = switch();
        let mut frame = data;
        if keep_header && frame.len() >= 34 {
            // Make it look like a plausible IPv4 frame from the client to get past the first checks.
            frame[..14].copy_from_slice(&[&ROUTER_MAC.0[..], &CLIENT_MAC.0[..], &[8, 0]].concat());
            frame[14] = 0x45;
        }
        let vnet = VnetHdr { flags, gso_type: gso, gso_size: 1400, ..Default::default() };
        let v = sw.handle_frame(Instant::now(), PortId(port), &vnet, &mut frame);
        if let Verdict::Forward(..) = v {
            prop_assert!(packet::parse_frame(&frame, &vnet).is_ok());
        }
        let _ = sw.take_generated();
        sw.poll(Instant::now());
    }
}
