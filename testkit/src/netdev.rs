//! Network devices that tests make (veth pairs, TAP devices), deleted on drop.

use std::io;
use std::process::{Command, Stdio};

/// A network device in this network namespace made by a test; `ip link del` on drop (for a veth,
/// that deletes its peer too).
#[derive(Debug)]
pub struct Netdev {
    name: String,
}

impl Netdev {
    /// Takes charge of a device the test has just made.
    pub fn adopt(name: impl Into<String>) -> Netdev {
        Netdev { name: name.into() }
    }

    /// A persistent TAP device (`ip tuntap add dev NAME mode tap`), up, with IPv6 off so that
    /// the host sends nothing of its own on it (router solicitations, MLD).
    pub fn tap(name: impl Into<String>) -> io::Result<Netdev> {
        let name = name.into();
        crate::run(&["ip", "tuntap", "add", "dev", &name, "mode", "tap"])?;
        let tap = Netdev { name };
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", tap.name),
            "1",
        );
        crate::run(&["ip", "link", "set", "dev", &tap.name, "up"])?;
        Ok(tap)
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netdev {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
