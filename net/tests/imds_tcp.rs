//! The metadata service's TCP termination, driven with real TCP/IPv4 packets: handshake,
//! request, response, close; the PUT hop limit on the wire; per-port isolation; limits,
//! timeouts and malformed packets.

mod imds_common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use imds_common::{
    TcpClient, exchange, http_exchange, parse_segment, sample_metadata, split_response,
};
use kumo_net::PortId;
use kumo_net::imds::{ImdsLimits, METADATA_IPV4, MetadataService};
use proptest::prelude::*;

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const PORT: PortId = PortId(7);

fn service() -> MetadataService {
    let mut service = MetadataService::default();
    service.set_instance(PORT, sample_metadata());
    service
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn imdsv1_get_over_tcp() {
    let mut service = service();
    let now = Instant::now();
    let client = http_exchange(
        &mut service,
        PORT,
        GUEST,
        40000,
        "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
        now,
    );
    let (status, headers, body) = split_response(&client.received);
    assert_eq!(status, 200);
    assert_eq!(body, b"i-0123456789abcdef0");
    assert_eq!(header(&headers, "content-type"), Some("text/plain"));
    assert_eq!(header(&headers, "content-length"), Some("19"));
    assert_eq!(header(&headers, "server"), Some("EC2ws"));
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert!(client.fin_received);
    assert!(!client.rst_received);
    // The SYN-ACK and everything after come from 169.254.169.254:80 to the guest's address.
    let synack = &client.segments[0];
    assert!(synack.syn && synack.ack.is_some());
    assert_eq!(synack.src, METADATA_IPV4);
    assert_eq!(synack.dst, GUEST);
    assert!(
        client.ttls.iter().all(|&ttl| ttl == 64),
        "{:?}",
        client.ttls
    );
    assert_eq!(
        service.connection_count(PORT),
        0,
        "closed connections are reclaimed"
    );
    let stats = service.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.responses_by_status.get(&200), Some(&1));
}

#[test]
fn imdsv2_over_tcp_and_the_put_response_hop_limit() {
    let mut service = service();
    let now = Instant::now();
    let put = http_exchange(
        &mut service,
        PORT,
        GUEST,
        40001,
        "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n",
        now,
    );
    let (status, headers, token) = split_response(&put.received);
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "x-aws-ec2-metadata-token-ttl-seconds"),
        Some("21600")
    );
    let token = String::from_utf8(token).unwrap();
    // Every packet carrying the token response has TTL = HttpPutResponseHopLimit (1): a
    // container one routed hop away never sees it, as on EC2.
    let data_ttls: Vec<u8> = put
        .segments
        .iter()
        .filter(|s| !s.payload.is_empty())
        .map(|s| s.ttl)
        .collect();
    assert!(!data_ttls.is_empty());
    assert!(data_ttls.iter().all(|&ttl| ttl == 1), "{data_ttls:?}");
    assert_eq!(service.stats().tokens_issued, 1);

    let get = http_exchange(
        &mut service,
        PORT,
        GUEST,
        40002,
        &format!(
            "GET /latest/meta-data/local-ipv4 HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"
        ),
        now + Duration::from_secs(1),
    );
    let (status, headers, body) = split_response(&get.received);
    assert_eq!(status, 200);
    assert_eq!(body, b"10.0.1.5");
    assert_eq!(
        header(&headers, "x-aws-ec2-metadata-token-ttl-seconds"),
        Some("21599")
    );
    assert!(
        get.ttls.iter().all(|&ttl| ttl == 64),
        "GETs use the normal TTL"
    );
}

#[test]
fn hop_limit_2_on_the_wire() {
    let mut service = MetadataService::default();
    let mut metadata = sample_metadata();
    metadata.http_put_response_hop_limit = 2;
    service.set_instance(PORT, metadata);
    let put = http_exchange(
        &mut service,
        PORT,
        GUEST,
        40003,
        "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
        Instant::now(),
    );
    assert_eq!(split_response(&put.received).0, 200);
    assert!(
        put.segments
            .iter()
            .filter(|s| !s.payload.is_empty())
            .all(|s| s.ttl == 2)
    );
}

#[test]
fn each_port_sees_only_its_own_instance_even_with_the_same_address() {
    let mut service = MetadataService::default();
    let (port_a, port_b) = (PortId(1), PortId(2));
    let a = sample_metadata();
    let mut b = sample_metadata();
    b.instance_id = "i-0bbbbbbbbbbbbbbbb".into();
    b.interfaces[0].vpc_id = "vpc-0bbbbbbbbbbbbbbbb".into();
    service.set_instance(port_a, a);
    service.set_instance(port_b, b);
    let now = Instant::now();

    // Same source address and port on both ports (overlapping VPCs).
    let get = "GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n";
    let from_a = http_exchange(&mut service, port_a, GUEST, 41000, get, now);
    let from_b = http_exchange(&mut service, port_b, GUEST, 41000, get, now);
    assert_eq!(split_response(&from_a.received).2, b"i-0123456789abcdef0");
    assert_eq!(split_response(&from_b.received).2, b"i-0bbbbbbbbbbbbbbbb");

    // A token from port A is worthless on port B.
    let put = http_exchange(
        &mut service,
        port_a,
        GUEST,
        41001,
        "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
        now,
    );
    let token = String::from_utf8(split_response(&put.received).2).unwrap();
    let with_token = format!(
        "GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"
    );
    let on_b = http_exchange(&mut service, port_b, GUEST, 41002, &with_token, now);
    assert_eq!(split_response(&on_b.received).0, 401);
    let on_a = http_exchange(&mut service, port_a, GUEST, 41003, &with_token, now);
    assert_eq!(split_response(&on_a.received).0, 200);
}

#[test]
fn ports_without_an_instance_get_nothing() {
    let mut service = service();
    let mut client = TcpClient::new(GUEST, 42000);
    let out = service.ingress(PortId(99), &client.syn(), Instant::now());
    assert!(out.is_empty());
    assert_eq!(service.stats().dropped_unknown_port, 1);

    // remove_instance forgets the port, open connections included.
    let mut client = TcpClient::new(GUEST, 42001);
    let syn = client.syn();
    exchange(&mut service, PORT, &mut client, syn, Instant::now());
    assert!(client.established);
    service.remove_instance(PORT);
    let data = client.data(b"GET / HTTP/1.1\r\n\r\n");
    assert!(service.ingress(PORT, &data, Instant::now()).is_empty());
    assert_eq!(service.stats().dropped_unknown_port, 2);
}

#[test]
fn a_retransmitted_syn_stays_with_its_connection() {
    let mut service = service();
    let now = Instant::now();
    // One finished connection first, so the next listener reuses its socket slot and comes
    // before the new connection in smoltcp's socket order.
    http_exchange(
        &mut service,
        PORT,
        GUEST,
        42049,
        "GET / HTTP/1.1\r\n\r\n",
        now,
    );
    let mut client = TcpClient::new(GUEST, 42050);
    let syn = client.syn();
    // The SYN-ACK is "lost": the client sends its SYN again, several times.
    let first = service.ingress(PORT, &syn, now);
    assert_eq!(first.len(), 1);
    for _ in 0..3 {
        let again = service.ingress(PORT, &syn, now + Duration::from_secs(1));
        assert!(again.iter().all(|p| !parse_segment(p).rst));
    }
    assert_eq!(
        service.connection_count(PORT),
        1,
        "no duplicate connections"
    );
    assert_eq!(service.stats().connections_accepted, 2);
    client.take(&first);
    let ack = client.ack();
    exchange(&mut service, PORT, &mut client, ack, now);
    let data = client.data(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n");
    exchange(&mut service, PORT, &mut client, data, now);
    assert_eq!(split_response(&client.received).0, 200);
}

#[test]
fn request_split_into_one_byte_segments() {
    let mut service = service();
    let now = Instant::now();
    let mut client = TcpClient::new(GUEST, 42100);
    let syn = client.syn();
    exchange(&mut service, PORT, &mut client, syn, now);
    for byte in b"GET /latest/meta-data/ami-id HTTP/1.0\r\n\r\n" {
        let data = client.data(&[*byte]);
        exchange(&mut service, PORT, &mut client, data, now);
    }
    let (status, _, body) = split_response(&client.received);
    assert_eq!(status, 200);
    assert_eq!(body, b"ami-0fedcba9876543210");
}

#[test]
fn large_user_data_spans_many_segments() {
    let mut service = MetadataService::default();
    let mut metadata = sample_metadata();
    // 64 KiB: larger than the socket's send buffer, so it is fed in as the client ACKs.
    let user_data: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    metadata.user_data = Some(user_data.clone());
    service.set_instance(PORT, metadata);
    let client = http_exchange(
        &mut service,
        PORT,
        GUEST,
        42200,
        "GET /latest/user-data HTTP/1.1\r\n\r\n",
        Instant::now(),
    );
    let (status, headers, body) = split_response(&client.received);
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(body, user_data);
    let data_segments = client
        .segments
        .iter()
        .filter(|s| !s.payload.is_empty())
        .count();
    assert!(data_segments > 40, "{data_segments} segments");
    assert!(
        client.segments.iter().all(|s| s.payload.len() <= 1460),
        "segments fit the 1500-byte MTU"
    );
}

#[test]
fn head_gets_headers_only() {
    let mut service = service();
    let client = http_exchange(
        &mut service,
        PORT,
        GUEST,
        42300,
        "HEAD /latest/meta-data/instance-id HTTP/1.1\r\n\r\n",
        Instant::now(),
    );
    let (status, headers, body) = split_response(&client.received);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-length"), Some("19"));
    assert!(body.is_empty());
}

#[test]
fn malformed_http_gets_400_and_a_close() {
    let mut service = service();
    let client = http_exchange(
        &mut service,
        PORT,
        GUEST,
        42400,
        "\u{1}\u{2} nonsense\r\n\r\n",
        Instant::now(),
    );
    let (status, headers, body) = split_response(&client.received);
    assert_eq!(status, 400);
    assert_eq!(header(&headers, "content-type"), Some("text/html"));
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains("400 - Bad Request")
    );
    assert_eq!(service.stats().requests_malformed, 1);
    assert_eq!(service.connection_count(PORT), 0);
}

#[test]
fn huge_headers_get_400_without_unbounded_buffering() {
    let mut service = service();
    let now = Instant::now();
    let mut client = TcpClient::new(GUEST, 42500);
    let syn = client.syn();
    exchange(&mut service, PORT, &mut client, syn, now);
    let data = client.data(b"GET / HTTP/1.1\r\n");
    exchange(&mut service, PORT, &mut client, data, now);
    // Keep sending header lines; the service answers 400 once the head passes 8 KiB.
    let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
    let mut sent = 0;
    while client.received.is_empty() && sent < 100 {
        let data = client.data(line.as_bytes());
        exchange(&mut service, PORT, &mut client, data, now);
        sent += 1;
    }
    assert!(sent <= 10, "answered after {sent} KB");
    let (status, _, _) = split_response(&client.received);
    assert_eq!(status, 400);
    assert!(client.fin_received);
    assert_eq!(service.stats().requests_malformed, 1);
}

#[test]
fn slowloris_connections_are_reset_at_the_request_deadline() {
    let mut service = service();
    let limits = service.limits().clone();
    let t0 = Instant::now();
    let mut client = TcpClient::new(GUEST, 42600);
    let syn = client.syn();
    exchange(&mut service, PORT, &mut client, syn, t0);
    // One header byte every second: never completes.
    let mut now = t0;
    for byte in b"GET / HTTP/1.1\r\nX-Slow: " {
        now += Duration::from_secs(1);
        if now >= t0 + limits.request_timeout {
            break;
        }
        let data = client.data(&[*byte]);
        exchange(&mut service, PORT, &mut client, data, now);
        assert_eq!(service.connection_count(PORT), 1);
    }
    let deadline = service.poll_at(now).expect("a deadline is pending");
    assert!(deadline <= t0 + limits.request_timeout);
    let out = service.poll(t0 + limits.request_timeout);
    let rst: Vec<_> = out
        .iter()
        .map(|(port, packet)| {
            assert_eq!(*port, PORT);
            parse_segment(packet)
        })
        .filter(|s| s.rst)
        .collect();
    assert_eq!(rst.len(), 1, "the connection is reset");
    assert_eq!(service.connection_count(PORT), 0);
    assert_eq!(service.stats().connections_timed_out, 1);
    assert!(client.received.is_empty());
}

#[test]
fn connections_beyond_the_limit_are_refused_with_rst() {
    let limits = ImdsLimits {
        max_connections_per_port: 4,
        ..ImdsLimits::default()
    };
    let mut service = MetadataService::new(limits);
    service.set_instance(PORT, sample_metadata());
    let now = Instant::now();
    let mut open = Vec::new();
    for i in 0..4 {
        let mut client = TcpClient::new(GUEST, 43000 + i);
        let syn = client.syn();
        exchange(&mut service, PORT, &mut client, syn, now);
        assert!(client.established);
        open.push(client);
    }
    assert_eq!(service.connection_count(PORT), 4);
    let mut extra = TcpClient::new(GUEST, 43100);
    let syn = extra.syn();
    exchange(&mut service, PORT, &mut extra, syn, now);
    assert!(extra.rst_received && !extra.established);
    assert_eq!(service.stats().connections_refused, 1);

    // Finishing one frees a slot.
    let mut first = open.remove(0);
    let data = first.data(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n");
    exchange(&mut service, PORT, &mut first, data, now);
    let fin = first.fin();
    exchange(&mut service, PORT, &mut first, fin, now);
    assert_eq!(split_response(&first.received).0, 200);
    assert_eq!(service.connection_count(PORT), 3);
    let mut again = TcpClient::new(GUEST, 43101);
    let syn = again.syn();
    exchange(&mut service, PORT, &mut again, syn, now);
    assert!(again.established);
}

#[test]
fn many_ports_many_connections_bounded() {
    let mut service = MetadataService::default();
    let limit = service.limits().max_connections_per_port;
    let now = Instant::now();
    for p in 0..8 {
        service.set_instance(PortId(p), sample_metadata());
        for i in 0..(limit as u16 + 10) {
            let mut client = TcpClient::new(GUEST, 44000 + i);
            let syn = client.syn();
            exchange(&mut service, PortId(p), &mut client, syn, now);
        }
        assert_eq!(service.connection_count(PortId(p)), limit);
    }
    assert_eq!(service.stats().connections_refused, 8 * 10);
    // Half-open connections all die at the request deadline.
    service.poll(now + service.limits().request_timeout);
    for p in 0..8 {
        assert_eq!(service.connection_count(PortId(p)), 0);
    }
}

#[test]
fn bad_packets_are_dropped_and_counted() {
    let mut service = service();
    let now = Instant::now();
    let mut client = TcpClient::new(GUEST, 45000);
    let syn = client.syn();

    // Truncated.
    assert!(service.ingress(PORT, &syn[..10], now).is_empty());
    assert!(service.ingress(PORT, &[], now).is_empty());
    // Bad IPv4 header checksum.
    let mut bad = syn.clone();
    bad[10] ^= 0xff;
    assert!(service.ingress(PORT, &bad, now).is_empty());
    // Bad TCP checksum.
    let mut bad = syn.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    bad[36] ^= 0x55; // TCP checksum field (20-byte IPv4 header + 16)
    assert!(service.ingress(PORT, &bad, now).is_empty());
    assert_eq!(service.stats().dropped_malformed, 4);

    // A fragment.
    let mut frag = syn.clone();
    frag[6] |= 0x20; // more fragments
    let checksum = ipv4_checksum(&frag[..20]);
    frag[10..12].copy_from_slice(&checksum.to_be_bytes());
    assert!(service.ingress(PORT, &frag, now).is_empty());
    assert_eq!(service.stats().dropped_fragments, 1);

    // UDP to the metadata address, TCP to another port, TCP to another address.
    let mut udp = Vec::new();
    PacketBuilder::ipv4(GUEST.octets(), METADATA_IPV4.octets(), 64)
        .udp(5000, 80)
        .write(&mut udp, b"hi")
        .unwrap();
    let mut port_443 = Vec::new();
    PacketBuilder::ipv4(GUEST.octets(), METADATA_IPV4.octets(), 64)
        .tcp(45001, 443, 1, 1000)
        .syn()
        .write(&mut port_443, &[])
        .unwrap();
    let mut elsewhere = Vec::new();
    PacketBuilder::ipv4(GUEST.octets(), [10, 0, 1, 9], 64)
        .tcp(45002, 80, 1, 1000)
        .syn()
        .write(&mut elsewhere, &[])
        .unwrap();
    for packet in [&udp, &port_443, &elsewhere] {
        assert!(service.ingress(PORT, packet, now).is_empty());
    }
    assert_eq!(service.stats().dropped_not_metadata, 3);

    // The port still works afterwards.
    let ok = http_exchange(
        &mut service,
        PORT,
        GUEST,
        45003,
        "GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n",
        now,
    );
    assert_eq!(split_response(&ok.received).0, 200);
}

#[test]
fn checksum_offloaded_packets_take_the_partial_checksum_entry() {
    let mut service = service();
    let now = Instant::now();
    let mut client = TcpClient::new(GUEST, 45500);
    let mut syn = client.syn();
    // As a guest with TX checksum offload sends it: the TCP checksum is not the real one.
    syn[36..38].copy_from_slice(&[0x12, 0x34]);
    assert!(service.ingress(PORT, &syn, now).is_empty());
    assert_eq!(service.stats().dropped_malformed, 1);
    let out = service.ingress_partial_checksum(PORT, &syn, now);
    client.take(&out);
    assert!(
        client.established,
        "the service filled in the checksum itself"
    );
}

#[test]
fn data_after_the_response_is_discarded() {
    let mut service = service();
    let now = Instant::now();
    let mut client = TcpClient::new(GUEST, 46000);
    let syn = client.syn();
    exchange(&mut service, PORT, &mut client, syn, now);
    // Two pipelined requests: EC2 answers the first and closes.
    let data = client.data(
        b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\nGET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n",
    );
    exchange(&mut service, PORT, &mut client, data, now);
    let more = client.data(b"garbage after close");
    exchange(&mut service, PORT, &mut client, more, now);
    let fin = client.fin();
    exchange(&mut service, PORT, &mut client, fin, now);
    let (status, _, body) = split_response(&client.received);
    assert_eq!(status, 200);
    assert_eq!(body, b"ami-0fedcba9876543210");
    assert_eq!(service.connection_count(PORT), 0);
}

#[test]
fn poll_at_is_none_when_idle() {
    let mut service = service();
    let now = Instant::now();
    assert_eq!(service.poll_at(now), None);
    assert!(service.poll(now + Duration::from_secs(100)).is_empty());
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum = 0u32;
    for (i, pair) in header.chunks(2).enumerate() {
        if i == 5 {
            continue; // the checksum field itself
        }
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Arbitrary bytes handed to ingress never panic and never produce a reply.
    #[test]
    fn arbitrary_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut service = service();
        let out = service.ingress(PORT, &bytes, Instant::now());
        // Only a valid TCP segment could be answered, and random bytes have valid checksums
        // with negligible probability.
        prop_assert!(out.len() <= 1);
    }

    /// Valid TCP segments with arbitrary flags, numbers and payloads never panic, whatever
    /// state the connection is in.
    #[test]
    fn arbitrary_segments_never_panic(
        segments in proptest::collection::vec(
            (any::<u32>(), any::<u32>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)),
            1..30,
        ),
        advance_ms in 0u64..20_000,
    ) {
        let mut service = service();
        let t0 = Instant::now();
        let mut client = TcpClient::new(GUEST, 47000);
        let syn = client.syn();
        exchange(&mut service, PORT, &mut client, syn, t0);
        for (i, (seq, ack, flags, payload)) in segments.into_iter().enumerate() {
            let mut builder = PacketBuilder::ipv4(GUEST.octets(), METADATA_IPV4.octets(), 64)
                .tcp(47000, 80, seq, 1000);
            if flags & 1 != 0 { builder = builder.syn(); }
            if flags & 2 != 0 { builder = builder.fin(); }
            if flags & 4 != 0 { builder = builder.rst(); }
            if flags & 8 != 0 { builder = builder.psh(); }
            if flags & 16 != 0 { builder = builder.ack(ack); }
            let mut packet = Vec::new();
            builder.write(&mut packet, &payload).unwrap();
            let now = t0 + Duration::from_millis(advance_ms * i as u64 / 30);
            let _ = service.ingress(PORT, &packet, now);
            let _ = service.poll(now);
        }
        let _ = service.poll(t0 + Duration::from_secs(120));
        prop_assert_eq!(service.connection_count(PORT), 0, "everything times out eventually");
    }
}
