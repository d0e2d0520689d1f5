//! The switch's contact with the kernel: AF_PACKET sockets on port netdevs and the netdev
//! settings that keep the host's own IP stack out of a VPC.

pub mod netdev;
pub mod packet_socket;

pub use packet_socket::{PacketSocket, RxBatch};

/// Errors of kernel-facing operations, each saying what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("netdev {0:?} not found: create the TAP or veth first (ip link show {0})")]
    NoSuchNetdev(String),
    #[error("netdev name {0:?} is invalid (1-15 bytes, no '/', no NUL)")]
    BadName(String),
    #[error("{what} on {netdev}: {source} (AF_PACKET needs root or CAP_NET_RAW)")]
    Socket {
        what: &'static str,
        netdev: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "netdev {0} has an IPv4 address: a switch port's netdev must have none, or the host answers the VPC's traffic (ip addr flush dev {0})"
    )]
    HasAddress(String),
    #[error("setting {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
