//! Packet policy: security groups (stateful, per ENI), network ACLs (stateless, per subnet) and
//! the connection tracking that makes security groups stateful.
//!
//! Everything here is pure: a decision is a function of the rules, the packet's header summary
//! ([`Packet4`]) and the connection table, so it is unit-tested without a network.

pub mod conntrack;
pub mod nacl;
pub mod security_group;

use std::fmt;
use std::net::Ipv4Addr;

/// An IP protocol as EC2 names it in rules: `-1` (all), `tcp`, `udp`, `icmp` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
    Other(u8),
}

/// A protocol name EC2 would not accept.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid IP protocol {0:?}: use tcp, udp, icmp, -1 (all) or a protocol number 0-255 (InvalidParameterValue)"
)]
pub struct ProtocolParseError(pub String);

impl Protocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMP: u8 = 1;

    /// Parses EC2's `IpProtocol` / NACL `Protocol` values.
    pub fn parse(s: &str) -> Result<Protocol, ProtocolParseError> {
        match s.to_ascii_lowercase().as_str() {
            "-1" | "all" => Ok(Protocol::All),
            "tcp" | "6" => Ok(Protocol::Tcp),
            "udp" | "17" => Ok(Protocol::Udp),
            "icmp" | "1" => Ok(Protocol::Icmp),
            other => other
                .parse::<u8>()
                .map(Protocol::Other)
                .map_err(|_| ProtocolParseError(s.to_string())),
        }
    }

    /// Whether a packet of IP protocol `number` is covered.
    pub fn matches(self, number: u8) -> bool {
        match self {
            Protocol::All => true,
            Protocol::Tcp => number == Self::TCP,
            Protocol::Udp => number == Self::UDP,
            Protocol::Icmp => number == Self::ICMP,
            Protocol::Other(n) => n == number,
        }
    }

    /// Whether rules of this protocol carry a port range.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::All => f.write_str("-1"),
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Other(n) => write!(f, "{n}"),
        }
    }
}

/// Which way a packet crosses an ENI or a subnet boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Into the ENI / subnet.
    Inbound,
    /// Out of the ENI / subnet.
    Outbound,
}

impl Direction {
    pub fn word(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// The transport-layer part of a packet that policy looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: TcpFlags,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    Icmp {
        icmp_type: u8,
        code: u8,
        /// Echo identifier for echo requests and replies, which conntrack uses as a port.
        echo_id: Option<u16>,
        /// For ICMP errors (unreachable, time exceeded, parameter problem...): the header of
        /// the packet the error is about, so conntrack can let errors of tracked flows through.
        related: Option<Related>,
    },
    /// Any other IP protocol (no ports).
    Other,
}

/// The packet an ICMP error quotes: its protocol, addresses and ports (echo id for ICMP echo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Related {
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

/// The TCP flags conntrack follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// The header summary of one IPv4 packet that every policy decision works from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub l4: L4,
}

impl Packet4 {
    /// The destination port rules match against (TCP/UDP), if any.
    pub fn dst_port(&self) -> Option<u16> {
        match self.l4 {
            L4::Tcp { dst_port, .. } | L4::Udp { dst_port, .. } => Some(dst_port),
            _ => None,
        }
    }

    pub fn src_port(&self) -> Option<u16> {
        match self.l4 {
            L4::Tcp { src_port, .. } | L4::Udp { src_port, .. } => Some(src_port),
            _ => None,
        }
    }

    /// A short description of what the packet is, for reasons: `tcp/22`, `udp/53`,
    /// `icmp type 8 code 0`, `proto 47`.
    pub fn service(&self) -> String {
        match self.l4 {
            L4::Tcp { dst_port, .. } => format!("tcp/{dst_port}"),
            L4::Udp { dst_port, .. } => format!("udp/{dst_port}"),
            L4::Icmp {
                icmp_type, code, ..
            } => format!("icmp type {icmp_type} code {code}"),
            L4::Other => format!("proto {}", self.protocol),
        }
    }

    /// The packet with source and destination (addresses and ports) swapped: what a reply
    /// looks like.
    pub fn reversed(&self) -> Packet4 {
        let l4 = match self.l4 {
            L4::Tcp {
                src_port,
                dst_port,
                flags,
            } => L4::Tcp {
                src_port: dst_port,
                dst_port: src_port,
                flags,
            },
            L4::Udp { src_port, dst_port } => L4::Udp {
                src_port: dst_port,
                dst_port: src_port,
            },
            other => other,
        };
        Packet4 {
            src: self.dst,
            dst: self.src,
            protocol: self.protocol,
            l4,
        }
    }
}
