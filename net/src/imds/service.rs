//! Per-port TCP termination of `169.254.169.254:80` with smoltcp.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::PortId;

use super::InstanceMetadata;

/// The metadata service's address.
pub const METADATA_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The metadata service's TCP port.
pub const METADATA_PORT: u16 = 80;

/// Resource limits per port; every one bounds memory or time a guest can make kumo spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsLimits {
    /// Most simultaneous TCP connections to the service from one port; further SYNs are
    /// answered with RST and counted.
    pub max_connections_per_port: usize,
    /// Largest request head (request line + headers) accepted; larger gets 400 and a close.
    pub max_request_bytes: usize,
    /// Time a connection may take from SYN to a complete request before it is reset.
    pub request_timeout: Duration,
    /// Most live IMDSv2 tokens per port; the one expiring soonest is forgotten to make room.
    pub max_tokens_per_port: usize,
}

impl Default for ImdsLimits {
    fn default() -> Self {
        Self {
            max_connections_per_port: 32,
            max_request_bytes: 8 * 1024,
            request_timeout: Duration::from_secs(10),
            max_tokens_per_port: 1024,
        }
    }
}

/// Counters of what the service did and why it dropped things.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImdsStats {
    /// HTTP responses sent.
    pub responses: u64,
    /// Packets dropped because their port has no instance.
    pub dropped_unknown_port: u64,
    /// Packets dropped because they were not valid IPv4/TCP to 169.254.169.254:80.
    pub dropped_malformed: u64,
}

/// The instance metadata service for every port of one switch.
#[derive(Debug)]
pub struct MetadataService {
    limits: ImdsLimits,
    instances: HashMap<PortId, InstanceMetadata>,
    stats: ImdsStats,
}

impl Default for MetadataService {
    fn default() -> Self {
        Self::new(ImdsLimits::default())
    }
}

impl MetadataService {
    /// A service with no instances yet.
    pub fn new(limits: ImdsLimits) -> Self {
        Self {
            limits,
            instances: HashMap::new(),
            stats: ImdsStats::default(),
        }
    }

    /// The limits this service enforces.
    pub fn limits(&self) -> &ImdsLimits {
        &self.limits
    }

    /// Serves `metadata` to `port` from now on (replacing what it served before; tokens issued
    /// for a different instance id on this port stop working).
    pub fn set_instance(&mut self, port: PortId, metadata: InstanceMetadata) {
        self.instances.insert(port, metadata);
    }

    /// Forgets `port`: its connections, tokens and metadata.
    pub fn remove_instance(&mut self, port: PortId) {
        self.instances.remove(&port);
    }

    /// Handles one IPv4 packet that arrived on `port` for 169.254.169.254; returns the IPv4
    /// packets to send back out of `port`.
    pub fn ingress(&mut self, port: PortId, ipv4_packet: &[u8], now: Instant) -> Vec<Vec<u8>> {
        let _ = (ipv4_packet, now);
        if !self.instances.contains_key(&port) {
            self.stats.dropped_unknown_port += 1;
        }
        Vec::new()
    }

    /// Runs timers of every port; returns packets to send, each with the port it goes out of.
    pub fn poll(&mut self, now: Instant) -> Vec<(PortId, Vec<u8>)> {
        let _ = now;
        Vec::new()
    }

    /// When [`Self::poll`] next has work to do (`None`: not until a packet arrives).
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let _ = now;
        None
    }

    /// Counters since the service started.
    pub fn stats(&self) -> &ImdsStats {
        &self.stats
    }
}
