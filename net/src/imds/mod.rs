//! The instance metadata service (IMDS) at `169.254.169.254:80`, IMDSv1 and IMDSv2, as EC2 serves
//! it, terminated per switch port inside the switch.
//!
//! # Contract with the switch
//!
//! * The control plane calls [`MetadataService::set_instance`] with the port of an instance's
//!   primary ENI and its [`InstanceMetadata`], and [`MetadataService::remove_instance`] when the
//!   port goes away. A port without an instance gets no answer (its packets are counted and
//!   dropped).
//! * The switch hands [`MetadataService::ingress`] every IPv4 packet that came in on port `P`
//!   addressed to [`METADATA_IPV4`] (after its own anti-spoofing and policy), and sends each
//!   packet it returns back out of port `P`, framed as Ethernet from the VPC router's MAC to the
//!   ENI's MAC. The returned packets are complete IPv4 packets (all checksums filled in).
//!   Packets must carry valid IPv4 and TCP checksums; a packet the guest sent with TCP checksum
//!   offload (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) goes to [`MetadataService::ingress_partial_checksum`]
//!   instead, which computes the checksum itself.
//!   The switch must not decrement their TTL: the token PUT's answer carries
//!   `HttpPutResponseHopLimit` as its TTL, as on EC2, and a hop-limit of 1 only works if the
//!   guest sees exactly that.
//! * Timers (retransmission, keep-alive, the request deadline) run from
//!   [`MetadataService::poll`], which returns packets to send and the port for each;
//!   [`MetadataService::poll_at`] says when `poll` next has work, so the switch can sleep until
//!   then. All time comes from the caller's `now`, so tests drive the clock.
//!
//! Identity comes only from the port, never from the packet's source address: VPC ranges may
//! overlap, and one port sees only its own instance's metadata and tokens.
//!
//! # Layers
//!
//! * [`metadata`]: the data model ([`InstanceMetadata`]).
//! * [`http`]: a bounded, incremental HTTP/1.x request parser and the response writer.
//! * [`handler`]: the pure request -> response logic (paths, listings, tokens, 401/403/404/405).
//! * [`service`]: per-port TCP termination with smoltcp, connection limits and timeouts.

pub mod handler;
pub mod http;
pub mod metadata;
pub mod service;
pub mod tokens;

pub use handler::{MetadataRequest, MetadataResponse};
pub use metadata::{
    HttpEndpoint, HttpTokens, InstanceMetadata, NetworkInterfaceMetadata, PublicKey,
    SecurityGroupRef,
};
pub use service::{ImdsLimits, ImdsStats, METADATA_IPV4, METADATA_PORT, MetadataService};
