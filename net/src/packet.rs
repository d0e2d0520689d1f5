//! Frame parsing and rewriting for the data path.
//!
//! [`parse_frame`] turns an Ethernet frame (as read from an AF_PACKET socket with its virtio-net
//! header) into a [`Frame`] summary, or a [`DropReason`] for anything the switch will not carry:
//! truncated or inconsistent headers, bad IPv4 header checksums, bad TCP/UDP/ICMP checksums
//! (when the kernel has not vouched for them), IP fragments, VLAN tags and unknown ethertypes.
//! Header fields are read with `etherparse`; the switch only rewrites a few bytes in place (MACs,
//! TTL, NAT addresses) with incremental checksum updates, so segmentation-offloaded packets
//! (one 64 KiB "super-packet" with a GSO virtio-net header) are forwarded whole.

use std::net::Ipv4Addr;

use etherparse::{ArpPacketSlice, Ipv4HeaderSlice, TcpHeaderSlice, UdpHeaderSlice};

use crate::addr::MacAddr;
use crate::counters::DropReason;
use crate::policy::{L4, Packet4, Protocol, TcpFlags};

pub const ETH_HDR: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;

/// The virtio-net header that AF_PACKET (PACKET_VNET_HDR) and TAP (IFF_VNET_HDR) put in front of
/// every frame: checksum and segmentation offload state. Little-endian on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub const LEN: usize = 10;
    /// VIRTIO_NET_HDR_F_NEEDS_CSUM: the L4 checksum field holds only the pseudo-header sum.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// VIRTIO_NET_HDR_F_DATA_VALID: the kernel already verified the checksum.
    pub const F_DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_ECN: u8 = 0x80;

    pub fn from_bytes(b: &[u8]) -> Option<VnetHdr> {
        if b.len() < Self::LEN {
            return None;
        }
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    pub fn is_gso(&self) -> bool {
        self.gso_type & !Self::GSO_ECN != Self::GSO_NONE
    }

    /// Whether the L4 checksum in the frame is to be trusted as-is or checked by us.
    pub fn l4_checksum_unverified(&self) -> bool {
        self.flags & (Self::F_NEEDS_CSUM | Self::F_DATA_VALID) == 0 && !self.is_gso()
    }
}

/// An ARP packet for IPv4 over Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl Arp {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;
}

/// Where the IPv4 parts of a frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Info {
    pub pkt: Packet4,
    /// Offset of the IPv4 header in the frame.
    pub ip_offset: usize,
    pub ip_header_len: usize,
    /// Offset of the transport header.
    pub l4_offset: usize,
    /// End of the IP packet in the frame (ethernet padding follows).
    pub ip_end: usize,
    pub ttl: u8,
}

impl Ipv4Info {
    /// The transport payload (after the TCP/UDP/ICMP header) range, for UDP services.
    pub fn udp_payload(&self) -> (usize, usize) {
        (self.l4_offset + 8, self.ip_end)
    }
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Arp(Arp),
    Ipv4(Ipv4Info),
    Ipv6,
}

/// A parsed Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub dst_mac: MacAddr,
    pub src_mac: MacAddr,
    pub kind: FrameKind,
}

fn mac_at(b: &[u8], i: usize) -> MacAddr {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[i..i + 6]);
    MacAddr(m)
}

/// Parses and validates one frame. Never panics, whatever the bytes.
pub fn parse_frame(buf: &[u8], vnet: &VnetHdr) -> Result<Frame, DropReason> {
    if buf.len() < ETH_HDR {
        return Err(DropReason::Truncated);
    }
    let dst_mac = mac_at(buf, 0);
    let src_mac = mac_at(buf, 6);
    let ethertype = u16::from_be_bytes([buf[12], buf[13]]);
    let kind = match ethertype {
        ETHERTYPE_ARP => FrameKind::Arp(parse_arp(&buf[ETH_HDR..])?),
        ETHERTYPE_IPV4 => FrameKind::Ipv4(parse_ipv4(buf, ETH_HDR, vnet)?),
        ETHERTYPE_IPV6 => FrameKind::Ipv6,
        ETHERTYPE_VLAN | 0x88a8 => return Err(DropReason::VlanTagged),
        _ => return Err(DropReason::UnknownEthertype),
    };
    Ok(Frame {
        dst_mac,
        src_mac,
        kind,
    })
}

fn parse_arp(b: &[u8]) -> Result<Arp, DropReason> {
    let arp = ArpPacketSlice::from_slice(b).map_err(|_| DropReason::Truncated)?;
    // Ethernet (1) / IPv4 (0x0800), 6-byte and 4-byte addresses only.
    if arp.hw_addr_type().0 != 1
        || arp.proto_addr_type().0 != ETHERTYPE_IPV4
        || arp.hw_addr_size() != 6
        || arp.proto_addr_size() != 4
    {
        return Err(DropReason::BadArp);
    }
    let ip4 = |s: &[u8]| Ipv4Addr::new(s[0], s[1], s[2], s[3]);
    let mac = |s: &[u8]| {
        let mut m = [0u8; 6];
        m.copy_from_slice(s);
        MacAddr(m)
    };
    Ok(Arp {
        operation: arp.operation().0,
        sender_mac: mac(arp.sender_hw_addr()),
        sender_ip: ip4(arp.sender_protocol_addr()),
        target_mac: mac(arp.target_hw_addr()),
        target_ip: ip4(arp.target_protocol_addr()),
    })
}

fn parse_ipv4(buf: &[u8], off: usize, vnet: &VnetHdr) -> Result<Ipv4Info, DropReason> {
    if buf.len() < off + 20 {
        return Err(DropReason::Truncated);
    }
    let ip = Ipv4HeaderSlice::from_slice(&buf[off..]).map_err(|_| DropReason::BadIpHeader)?;
    let hlen = usize::from(ip.ihl()) * 4;
    let total = usize::from(ip.total_len());
    if total < hlen || off + total > buf.len() {
        return Err(DropReason::Truncated);
    }
    let header = &buf[off..off + hlen];
    if checksum(header) != 0 {
        return Err(DropReason::BadIpChecksum);
    }
    if ip.more_fragments() || ip.fragments_offset().value() != 0 {
        return Err(DropReason::Fragment);
    }
    let src = ip.source_addr();
    let dst = ip.destination_addr();
    let protocol = ip.protocol().0;
    let l4_offset = off + hlen;
    let ip_end = off + total;
    let seg = &buf[l4_offset..ip_end];
    let verify = vnet.l4_checksum_unverified();
    let l4 = match protocol {
        Protocol::TCP => {
            let tcp = TcpHeaderSlice::from_slice(seg).map_err(|_| DropReason::Truncated)?;
            if verify && pseudo_checksum(src, dst, protocol, seg) != 0 {
                return Err(DropReason::BadL4Checksum);
            }
            L4::Tcp {
                src_port: tcp.source_port(),
                dst_port: tcp.destination_port(),
                flags: TcpFlags {
                    syn: tcp.syn(),
                    ack: tcp.ack(),
                    fin: tcp.fin(),
                    rst: tcp.rst(),
                },
            }
        }
        Protocol::UDP => {
            let udp = UdpHeaderSlice::from_slice(seg).map_err(|_| DropReason::Truncated)?;
            let ulen = usize::from(udp.length());
            if ulen < 8 || ulen > seg.len() {
                return Err(DropReason::Truncated);
            }
            if verify
                && udp.checksum() != 0
                && pseudo_checksum(src, dst, protocol, &seg[..ulen]) != 0
            {
                return Err(DropReason::BadL4Checksum);
            }
            L4::Udp {
                src_port: udp.source_port(),
                dst_port: udp.destination_port(),
            }
        }
        Protocol::ICMP => {
            if seg.len() < 8 {
                return Err(DropReason::Truncated);
            }
            if vnet.flags & VnetHdr::F_NEEDS_CSUM == 0 && checksum(seg) != 0 {
                return Err(DropReason::BadL4Checksum);
            }
            let icmp_type = seg[0];
            let echo_id = matches!(icmp_type, 0 | 8).then(|| u16::from_be_bytes([seg[4], seg[5]]));
            let related = if matches!(icmp_type, 3 | 4 | 5 | 11 | 12) {
                quoted_packet(&seg[8..])
            } else {
                None
            };
            L4::Icmp {
                icmp_type,
                code: seg[1],
                echo_id,
                related,
            }
        }
        _ => L4::Other,
    };
    Ok(Ipv4Info {
        pkt: Packet4 {
            src,
            dst,
            protocol,
            l4,
        },
        ip_offset: off,
        ip_header_len: hlen,
        l4_offset,
        ip_end,
        ttl: ip.ttl(),
    })
}

/// The header an ICMP error quotes (IPv4 header + at least 8 bytes of its payload).
fn quoted_packet(b: &[u8]) -> Option<crate::policy::Related> {
    let ip = Ipv4HeaderSlice::from_slice(b).ok()?;
    let hlen = usize::from(ip.ihl()) * 4;
    let l4 = b.get(hlen..hlen + 8)?;
    let protocol = ip.protocol().0;
    let (src_port, dst_port) = match protocol {
        Protocol::TCP | Protocol::UDP => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        Protocol::ICMP if matches!(l4[0], 0 | 8) => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    Some(crate::policy::Related {
        protocol,
        src: ip.source_addr(),
        dst: ip.destination_addr(),
        src_port,
        dst_port,
    })
}

/// The Internet checksum of `data`: 0 when `data` already includes a correct checksum (the
/// value is in native byte order; only compare it with 0).
pub fn checksum(data: &[u8]) -> u16 {
    etherparse::checksum::Sum16BitWords::new()
        .add_slice(data)
        .ones_complement()
}

/// The TCP/UDP checksum over the IPv4 pseudo-header and `segment`: 0 when correct (native byte
/// order, like [`checksum`]).
pub fn pseudo_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let len = segment.len() as u32;
    etherparse::checksum::Sum16BitWords::new()
        .add_4bytes(src.octets())
        .add_4bytes(dst.octets())
        .add_2bytes([0, protocol])
        .add_2bytes([(len >> 8) as u8, len as u8])
        .add_slice(segment)
        .ones_complement()
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// RFC 1624 incremental update of a complemented checksum when a 16-bit word changes from `old`
/// to `new`.
pub fn csum_update(csum: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!csum) + u32::from(!old) + u32::from(new))
}

/// The same for a checksum field holding a partial (uncomplemented) pseudo-header sum, as with
/// checksum offload (VIRTIO_NET_HDR_F_NEEDS_CSUM).
pub fn partial_csum_update(csum: u16, old: u16, new: u16) -> u16 {
    fold(u32::from(csum) + u32::from(!old) + u32::from(new))
}

fn word(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn put_word(b: &mut [u8], i: usize, v: u16) {
    b[i..i + 2].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites the Ethernet addresses of a frame.
pub fn set_macs(buf: &mut [u8], dst: MacAddr, src: MacAddr) {
    buf[0..6].copy_from_slice(&dst.0);
    buf[6..12].copy_from_slice(&src.0);
}

/// Decrements the TTL of the IPv4 packet at `ip_offset`, fixing the header checksum. Returns
/// false (and changes nothing) when the TTL would reach zero.
pub fn decrement_ttl(buf: &mut [u8], ip_offset: usize) -> bool {
    let ttl = buf[ip_offset + 8];
    if ttl <= 1 {
        return false;
    }
    let old = word(buf, ip_offset + 8);
    buf[ip_offset + 8] = ttl - 1;
    let new = word(buf, ip_offset + 8);
    let c = csum_update(word(buf, ip_offset + 10), old, new);
    put_word(buf, ip_offset + 10, c);
    true
}

/// Replaces the source (`source == true`) or destination IPv4 address of a packet, updating the
/// IP header checksum and the TCP/UDP checksum (full or offloaded-partial, per `vnet`).
pub fn rewrite_addr(buf: &mut [u8], info: &Ipv4Info, vnet: &VnetHdr, source: bool, new: Ipv4Addr) {
    let at = info.ip_offset + if source { 12 } else { 16 };
    let old_b: [u8; 4] = buf[at..at + 4].try_into().expect("4 bytes");
    let new_b = new.octets();
    buf[at..at + 4].copy_from_slice(&new_b);
    let mut ipc = word(buf, info.ip_offset + 10);
    let l4_csum_at = match info.pkt.protocol {
        Protocol::TCP => Some(info.l4_offset + 16),
        Protocol::UDP
            if word(buf, info.l4_offset + 6) != 0 || vnet.flags & VnetHdr::F_NEEDS_CSUM != 0 =>
        {
            Some(info.l4_offset + 6)
        }
        _ => None,
    };
    let partial = vnet.flags & VnetHdr::F_NEEDS_CSUM != 0;
    for i in [0usize, 2] {
        let o = u16::from_be_bytes([old_b[i], old_b[i + 1]]);
        let n = u16::from_be_bytes([new_b[i], new_b[i + 1]]);
        ipc = csum_update(ipc, o, n);
        if let Some(at) = l4_csum_at
            && at + 2 <= buf.len()
        {
            let c = word(buf, at);
            let c = if partial {
                partial_csum_update(c, o, n)
            } else {
                csum_update(c, o, n)
            };
            put_word(buf, at, c);
        }
    }
    put_word(buf, info.ip_offset + 10, ipc);
}

/// Builds an Ethernet + IPv4 + UDP frame.
pub fn build_udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .udp(src.1, dst.1);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut out, payload)
        .expect("writing to a Vec cannot fail for a valid UDP payload size");
    out
}

/// Builds an ARP frame (padded to the 60-byte Ethernet minimum).
pub fn build_arp(eth_dst: MacAddr, eth_src: MacAddr, arp: &Arp) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&eth_dst.0);
    f.extend_from_slice(&eth_src.0);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&arp.operation.to_be_bytes());
    f.extend_from_slice(&arp.sender_mac.0);
    f.extend_from_slice(&arp.sender_ip.octets());
    f.extend_from_slice(&arp.target_mac.0);
    f.extend_from_slice(&arp.target_ip.octets());
    f.resize(60, 0);
    f
}

/// Wraps an IPv4 packet in an Ethernet header.
pub fn ethernet_wrap(dst: MacAddr, src: MacAddr, ip_packet: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HDR + ip_packet.len());
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f.extend_from_slice(ip_packet);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn udp_frame() -> Vec<u8> {
        build_udp(
            MacAddr([2, 0, 0, 0, 0, 1]),
            MacAddr([2, 0, 0, 0, 0, 2]),
            ("10.0.1.5".parse().unwrap(), 5000),
            ("10.0.2.5".parse().unwrap(), 53),
            b"hello",
        )
    }

    #[test]
    fn parses_a_udp_frame() {
        let f = udp_frame();
        let p = parse_frame(&f, &VnetHdr::default()).unwrap();
        let FrameKind::Ipv4(info) = p.kind else {
            panic!()
        };
        assert_eq!(info.pkt.service(), "udp/53");
        assert_eq!(info.ttl, 64);
        assert_eq!(&f[info.udp_payload().0..info.udp_payload().1], b"hello");
    }

    #[test]
    fn bad_checksums_are_caught() {
        let mut f = udp_frame();
        f[ETH_HDR + 10] ^= 0xff;
        assert_eq!(
            parse_frame(&f, &VnetHdr::default()),
            Err(DropReason::BadIpChecksum)
        );
        let mut f = udp_frame();
        let last = f.len() - 1;
        f[last] ^= 0xff;
        assert_eq!(
            parse_frame(&f, &VnetHdr::default()),
            Err(DropReason::BadL4Checksum)
        );
        // ... unless the kernel vouched for it.
        let valid = VnetHdr {
            flags: VnetHdr::F_DATA_VALID,
            ..Default::default()
        };
        assert!(parse_frame(&f, &valid).is_ok());
    }

    #[test]
    fn fragments_and_unknown_types_are_dropped() {
        let mut f = udp_frame();
        // Set MF and fix the header checksum.
        let old = word(&f, ETH_HDR + 6);
        f[ETH_HDR + 6] |= 0x20;
        let c = csum_update(word(&f, ETH_HDR + 10), old, word(&f, ETH_HDR + 6));
        put_word(&mut f, ETH_HDR + 10, c);
        assert_eq!(
            parse_frame(&f, &VnetHdr::default()),
            Err(DropReason::Fragment)
        );
        let mut f = udp_frame();
        f[12] = 0x88;
        f[13] = 0xcc;
        assert_eq!(
            parse_frame(&f, &VnetHdr::default()),
            Err(DropReason::UnknownEthertype)
        );
        assert_eq!(
            parse_frame(&f[..10], &VnetHdr::default()),
            Err(DropReason::Truncated)
        );
        let f = udp_frame();
        assert_eq!(
            parse_frame(&f[..f.len() - 2], &VnetHdr::default()),
            Err(DropReason::Truncated)
        );
    }

    #[test]
    fn ttl_and_nat_rewrites_keep_checksums_valid() {
        let mut f = udp_frame();
        let FrameKind::Ipv4(info) = parse_frame(&f, &VnetHdr::default()).unwrap().kind else {
            panic!()
        };
        assert!(decrement_ttl(&mut f, info.ip_offset));
        rewrite_addr(
            &mut f,
            &info,
            &VnetHdr::default(),
            true,
            "198.18.0.9".parse().unwrap(),
        );
        rewrite_addr(
            &mut f,
            &info,
            &VnetHdr::default(),
            false,
            "172.16.3.4".parse().unwrap(),
        );
        let p = parse_frame(&f, &VnetHdr::default()).unwrap();
        let FrameKind::Ipv4(info2) = p.kind else {
            panic!()
        };
        assert_eq!(info2.ttl, 63);
        assert_eq!(info2.pkt.src, Ipv4Addr::new(198, 18, 0, 9));
        assert_eq!(info2.pkt.dst, Ipv4Addr::new(172, 16, 3, 4));
    }

    #[test]
    fn partial_checksum_rewrite_matches_a_fresh_pseudo_header_sum() {
        // With checksum offload the field holds fold(pseudo-header sum), uncomplemented.
        let src: Ipv4Addr = "10.0.1.5".parse().unwrap();
        let dst: Ipv4Addr = "10.0.2.5".parse().unwrap();
        let new: Ipv4Addr = "198.18.7.1".parse().unwrap();
        // etherparse sums in native byte order; the field value is big-endian.
        let pseudo = |s: Ipv4Addr| {
            let v = !pseudo_checksum(s, dst, 6, &[0u8; 20]);
            u16::from_be_bytes(v.to_ne_bytes())
        };
        let mut c = pseudo(src);
        for i in [0usize, 2] {
            let o = u16::from_be_bytes([src.octets()[i], src.octets()[i + 1]]);
            let n = u16::from_be_bytes([new.octets()[i], new.octets()[i + 1]]);
            c = partial_csum_update(c, o, n);
        }
        assert_eq!(c, pseudo(new));
    }

    #[test]
    fn ttl_one_is_not_forwarded() {
        let mut f = udp_frame();
        f[ETH_HDR + 8] = 1;
        assert!(!decrement_ttl(&mut f, ETH_HDR));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), flags in any::<u8>(), gso in any::<u8>()) {
            let v = VnetHdr { flags, gso_type: gso, ..Default::default() };
            let _ = parse_frame(&data, &v);
            let _ = VnetHdr::from_bytes(&data);
        }

        #[test]
        fn mutated_valid_frames_never_panic(pos in 0usize..47, val in any::<u8>(), cut in 0usize..47) {
            let mut f = udp_frame();
            let n = f.len();
            f[pos % n] = val;
            f.truncate(n - cut % n);
            if let Ok(p) = parse_frame(&f, &VnetHdr::default())
                && let FrameKind::Ipv4(info) = p.kind
            {
                // Any accepted packet can be rewritten without going out of bounds.
                prop_assert!(info.ip_end <= f.len());
                let _ = decrement_ttl(&mut f, info.ip_offset);
                rewrite_addr(&mut f, &info, &VnetHdr::default(), true, Ipv4Addr::new(1, 2, 3, 4));
            }
        }
    }
}
