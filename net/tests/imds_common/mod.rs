//! Shared by the metadata-service tests: a sample instance, and a hand-written TCP client that
//! talks to [`MetadataService`] in raw IPv4 packets (SYN, handshake, request, ACKs, FIN), so
//! the tests see exactly what the service puts on the wire.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use etherparse::PacketBuilder;
use kumo_net::PortId;
use kumo_net::imds::{
    HttpEndpoint, HttpTokens, InstanceMetadata, METADATA_IPV4, METADATA_PORT, MetadataService,
    NetworkInterfaceMetadata, PublicKey, SecurityGroupRef,
};
use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};

/// The instance most tests serve: one ENI in 10.0.1.0/24 of VPC 10.0.0.0/16.
pub fn sample_metadata() -> InstanceMetadata {
    InstanceMetadata {
        instance_id: "i-0123456789abcdef0".into(),
        ami_id: "ami-0fedcba9876543210".into(),
        ami_launch_index: 0,
        reservation_id: "r-0aaaabbbbccccdddd".into(),
        instance_type: "t3.micro".into(),
        architecture: "x86_64".into(),
        account_id: "123456789012".into(),
        region: "us-east-1".into(),
        availability_zone: "us-east-1a".into(),
        availability_zone_id: Some("use1-az1".into()),
        hostname: "ip-10-0-1-5.ec2.internal".into(),
        launch_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_210_096),
        interfaces: vec![NetworkInterfaceMetadata {
            device_number: 0,
            interface_id: "eni-0123456789abcdef0".into(),
            mac: [0x02, 0x4b, 0x55, 0x00, 0x01, 0x05],
            local_ipv4s: vec![Ipv4Addr::new(10, 0, 1, 5)],
            local_hostname: "ip-10-0-1-5.ec2.internal".into(),
            public_ipv4s: vec![],
            public_hostname: None,
            owner_id: "123456789012".into(),
            security_groups: vec![
                SecurityGroupRef {
                    id: "sg-0aaaaaaaaaaaaaaaa".into(),
                    name: "default".into(),
                },
                SecurityGroupRef {
                    id: "sg-0bbbbbbbbbbbbbbbb".into(),
                    name: "web".into(),
                },
            ],
            subnet_id: "subnet-0123456789abcdef0".into(),
            subnet_ipv4_cidr_block: "10.0.1.0/24".parse().unwrap(),
            vpc_id: "vpc-0123456789abcdef0".into(),
            vpc_ipv4_cidr_blocks: vec!["10.0.0.0/16".parse().unwrap()],
        }],
        block_device_mappings: vec![
            ("ami".into(), "/dev/xvda".into()),
            ("root".into(), "/dev/xvda".into()),
        ],
        public_keys: vec![PublicKey {
            name: "my-key".into(),
            openssh_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKumoTestKeyOnly my-key".into(),
        }],
        user_data: Some(b"#!/bin/sh\necho hello from user-data\n".to_vec()),
        http_tokens: HttpTokens::Optional,
        http_endpoint: HttpEndpoint::Enabled,
        http_put_response_hop_limit: 1,
    }
}

/// What one packet from the service said.
#[derive(Debug, Clone)]
pub struct Segment {
    pub ttl: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: Vec<u8>,
}

/// Parses a packet the service returned, checking its IPv4 and TCP checksums.
pub fn parse_segment(packet: &[u8]) -> Segment {
    let ip = Ipv4Packet::new_checked(packet).expect("valid IPv4 packet");
    assert!(ip.verify_checksum(), "IPv4 header checksum");
    let tcp = TcpPacket::new_checked(ip.payload()).expect("valid TCP segment");
    assert!(
        tcp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ),
        "TCP checksum"
    );
    Segment {
        ttl: ip.hop_limit(),
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        src_port: tcp.src_port(),
        dst_port: tcp.dst_port(),
        seq: tcp.seq_number().0 as u32,
        ack: tcp.ack().then(|| tcp.ack_number().0 as u32),
        syn: tcp.syn(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload: tcp.payload().to_vec(),
    }
}

/// A minimal TCP client in raw packets: enough to open a connection, send a request, take the
/// response in order, and close.
#[derive(Debug)]
pub struct TcpClient {
    pub src: Ipv4Addr,
    pub src_port: u16,
    snd_nxt: u32,
    rcv_nxt: u32,
    pub established: bool,
    /// Response bytes received in order.
    pub received: Vec<u8>,
    pub fin_received: bool,
    pub rst_received: bool,
    /// TTL of every segment the service sent this client.
    pub ttls: Vec<u8>,
    /// Every segment the service sent this client.
    pub segments: Vec<Segment>,
}

impl TcpClient {
    pub fn new(src: Ipv4Addr, src_port: u16) -> Self {
        Self {
            src,
            src_port,
            snd_nxt: 0x1000_0000u32.wrapping_add(u32::from(src_port) << 8),
            rcv_nxt: 0,
            established: false,
            received: Vec::new(),
            fin_received: false,
            rst_received: false,
            ttls: Vec::new(),
            segments: Vec::new(),
        }
    }

    fn builder(&self) -> etherparse::PacketBuilderStep<etherparse::TcpHeader> {
        PacketBuilder::ipv4(self.src.octets(), METADATA_IPV4.octets(), 64).tcp(
            self.src_port,
            METADATA_PORT,
            self.snd_nxt,
            64240,
        )
    }

    pub fn syn(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.builder().syn().write(&mut out, &[]).unwrap();
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        out
    }

    pub fn data(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.builder()
            .ack(self.rcv_nxt)
            .psh()
            .write(&mut out, bytes)
            .unwrap();
        self.snd_nxt = self.snd_nxt.wrapping_add(bytes.len() as u32);
        out
    }

    pub fn ack(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.builder()
            .ack(self.rcv_nxt)
            .write(&mut out, &[])
            .unwrap();
        out
    }

    pub fn fin(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.builder()
            .ack(self.rcv_nxt)
            .fin()
            .write(&mut out, &[])
            .unwrap();
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        out
    }

    /// Takes the service's packets for this client; returns the ACK to send back, if any.
    pub fn take(&mut self, packets: &[Vec<u8>]) -> Option<Vec<u8>> {
        let mut must_ack = false;
        for packet in packets {
            let seg = parse_segment(packet);
            if seg.dst != self.src || seg.dst_port != self.src_port {
                continue;
            }
            assert_eq!(seg.src, METADATA_IPV4);
            assert_eq!(seg.src_port, METADATA_PORT);
            self.ttls.push(seg.ttl);
            self.segments.push(seg.clone());
            if seg.rst {
                self.rst_received = true;
                continue;
            }
            if seg.syn {
                self.rcv_nxt = seg.seq.wrapping_add(1);
                self.established = true;
                must_ack = true;
                continue;
            }
            if seg.seq == self.rcv_nxt {
                self.received.extend_from_slice(&seg.payload);
                self.rcv_nxt = self.rcv_nxt.wrapping_add(seg.payload.len() as u32);
                if seg.fin {
                    self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
                    self.fin_received = true;
                }
                must_ack |= !seg.payload.is_empty() || seg.fin;
            } else if !seg.payload.is_empty() || seg.fin {
                must_ack = true; // out of order or duplicate: re-ACK what we have
            }
        }
        must_ack.then(|| self.ack())
    }

    /// The response as text (lossy), once received.
    pub fn response_text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

/// Sends `packet` into `service` on `port`, then keeps ACKing what comes back until the
/// exchange is quiet. Returns everything the service sent.
pub fn exchange(
    service: &mut MetadataService,
    port: PortId,
    client: &mut TcpClient,
    packet: Vec<u8>,
    now: Instant,
) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    let mut next = Some(packet);
    let mut rounds = 0;
    while let Some(packet) = next.take() {
        rounds += 1;
        assert!(rounds < 1000, "exchange does not settle");
        let out = service.ingress(port, &packet, now);
        next = client.take(&out);
        all.extend(out);
    }
    all
}

/// Opens a connection, sends `request`, reads the response to the end, and closes: one full
/// HTTP exchange over raw TCP. Returns the client (response, TTLs, flags).
pub fn http_exchange(
    service: &mut MetadataService,
    port: PortId,
    src: Ipv4Addr,
    src_port: u16,
    request: &str,
    now: Instant,
) -> TcpClient {
    let mut client = TcpClient::new(src, src_port);
    let syn = client.syn();
    exchange(service, port, &mut client, syn, now);
    assert!(client.established, "no SYN-ACK: {:?}", client.segments);
    let data = client.data(request.as_bytes());
    exchange(service, port, &mut client, data, now);
    assert!(
        client.fin_received,
        "the service closes after its response: {:?} {:?}",
        client.segments,
        service.stats()
    );
    let fin = client.fin();
    exchange(service, port, &mut client, fin, now);
    client
}

/// Splits an HTTP response into status, headers (lowercased names) and body.
pub fn split_response(raw: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("complete response head");
    let head = std::str::from_utf8(&raw[..head_end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").expect("header line");
            (name.to_ascii_lowercase(), value.to_owned())
        })
        .collect();
    (status, headers, raw[head_end + 4..].to_vec())
}
