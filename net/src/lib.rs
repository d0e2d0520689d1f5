//! kumo-net: the userspace VPC switch.
//!
//! Owns the packet path between instances' network interfaces: ports, ARP, DHCP, routing,
//! network ACLs, security groups, the instance metadata service and flow logs.
//!
//! Layers, from the wire up:
//! - [`sys`]: AF_PACKET sockets on TAP or veth netdevs (virtio-net headers, batched
//!   `recvmmsg`/`sendmmsg`) and the netdev settings that keep the host out of the way;
//! - [`runtime`]: the switch thread that moves frames between those sockets and the [`Switch`];
//! - [`switch`]: the data path (one frame in, a decision out; no I/O);
//! - [`packet`], [`dhcp`], [`dns`], [`imds`]: parsers and the switch's own services;
//! - [`policy`]: security groups, network ACLs, connection tracking;
//! - [`model`]: VPCs, subnets, route tables, gateways, ENIs with EC2's rules;
//! - [`flow_log`], [`counters`]: what happened to every packet, and why;
//! - [`config`]: the JSON description the standalone switch (`examples/switch.rs`) runs from.

pub mod addr;
pub mod config;
pub mod counters;
pub mod dhcp;
pub mod dns;
pub mod flow_log;
pub mod imds;
pub mod model;
pub mod packet;
pub mod policy;
pub mod port_id;
pub mod runtime;
pub mod switch;
pub mod sys;

pub use addr::MacAddr;
pub use model::Model;
pub use port_id::PortId;
pub use switch::Switch;
