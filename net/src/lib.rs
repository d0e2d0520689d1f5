//! kumo-net: the userspace VPC switch.
//!
//! Owns the packet path between instances' network interfaces: ports, ARP, DHCP, routing,
//! network ACLs, security groups, the instance metadata service and flow logs.

pub mod imds;
pub mod port_id;

pub use port_id::PortId;
