//! Why the switch drops packets, and how many it dropped for each reason.
//!
//! Every frame the switch does not deliver is counted under exactly one [`DropReason`]; policy
//! drops (security groups, NACLs) also produce a flow-log record with a sentence a user can read.

use std::collections::BTreeMap;
use std::fmt;

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than its headers claim.
    Truncated,
    /// An IPv4 header that is not one (version, IHL).
    BadIpHeader,
    BadIpChecksum,
    /// TCP, UDP or ICMP checksum wrong.
    BadL4Checksum,
    /// IPv4 fragments are not carried.
    Fragment,
    /// Neither IPv4, ARP nor IPv6.
    UnknownEthertype,
    /// 802.1Q/802.1ad tagged frames.
    VlanTagged,
    /// ARP that is not Ethernet/IPv4.
    BadArp,
    /// IPv6 (kumo VPCs are IPv4-only for now).
    Ipv6,
    /// Source MAC is not the ENI's.
    SpoofedMac,
    /// Source IP is not the ENI's.
    SpoofedIp,
    /// The frame arrived on a port with no ENI.
    UnknownPort,
    /// No route in the subnet's route table.
    NoRoute,
    /// A blackhole route.
    Blackhole,
    /// Addressed to a private address no ENI has.
    NoSuchAddress,
    /// TTL would reach zero.
    TtlExpired,
    /// A security group has no rule for it.
    SecurityGroup,
    /// A network ACL denied it.
    NetworkAcl,
    /// The connection table is full.
    ConntrackFull,
    /// Broadcast or multicast IP traffic the switch does not serve.
    Broadcast,
    /// Frame sent to a MAC that is not the VPC router's.
    WrongDestinationMac,
    /// The instance metadata service is not available.
    NoMetadataService,
    /// Link-local traffic other than the metadata service and DNS.
    LinkLocal,
    /// The internet gateway could not translate it (no public address, no igw route).
    NoInternetGateway,
    /// Malformed DHCP or DNS request.
    BadRequest,
    /// Too many packets for the switch's own services (ARP, DHCP, DNS, metadata) from one port.
    RateLimited,
    /// The kernel refused to send it (socket buffer full, netdev down).
    TxFailed,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadIpHeader => "bad-ip-header",
            DropReason::BadIpChecksum => "bad-ip-checksum",
            DropReason::BadL4Checksum => "bad-l4-checksum",
            DropReason::Fragment => "ip-fragment",
            DropReason::UnknownEthertype => "unknown-ethertype",
            DropReason::VlanTagged => "vlan-tagged",
            DropReason::BadArp => "bad-arp",
            DropReason::Ipv6 => "ipv6",
            DropReason::SpoofedMac => "spoofed-source-mac",
            DropReason::SpoofedIp => "spoofed-source-ip",
            DropReason::UnknownPort => "unknown-port",
            DropReason::NoRoute => "no-route",
            DropReason::Blackhole => "blackhole-route",
            DropReason::NoSuchAddress => "no-such-address",
            DropReason::TtlExpired => "ttl-expired",
            DropReason::SecurityGroup => "security-group",
            DropReason::NetworkAcl => "network-acl",
            DropReason::ConntrackFull => "conntrack-full",
            DropReason::Broadcast => "broadcast",
            DropReason::WrongDestinationMac => "wrong-destination-mac",
            DropReason::NoMetadataService => "no-metadata-service",
            DropReason::LinkLocal => "link-local",
            DropReason::NoInternetGateway => "no-internet-gateway",
            DropReason::BadRequest => "bad-request",
            DropReason::RateLimited => "rate-limited",
            DropReason::TxFailed => "tx-failed",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Packet counters of a switch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_frames: u64,
    pub forwarded: u64,
    pub arp_replies: u64,
    pub dhcp_replies: u64,
    pub dns_replies: u64,
    pub metadata_packets: u64,
    pub dropped: BTreeMap<DropReason, u64>,
}

impl Counters {
    pub fn drop(&mut self, r: DropReason) {
        *self.dropped.entry(r).or_default() += 1;
    }

    pub fn dropped(&self, r: DropReason) -> u64 {
        self.dropped.get(&r).copied().unwrap_or(0)
    }

    pub fn total_dropped(&self) -> u64 {
        self.dropped.values().sum()
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rx={} forwarded={} arp={} dhcp={} dns={} metadata={}",
            self.rx_frames,
            self.forwarded,
            self.arp_replies,
            self.dhcp_replies,
            self.dns_replies,
            self.metadata_packets
        )?;
        for (r, n) in &self.dropped {
            write!(f, " drop:{r}={n}")?;
        }
        Ok(())
    }
}
