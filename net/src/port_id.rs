//! The identity of a switch port: one per ENI, and the only trustworthy way to know who sent a
//! frame (VPC address ranges may overlap, so a source address alone proves nothing).

use std::fmt;

/// A switch port's number, unique within one switch for the switch's lifetime.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PortId(pub u32);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port{}", self.0)
    }
}
