//! Link-layer addresses and the small helpers the rest of the switch shares: MAC addresses with
//! their textual form, EC2-style resource ids, and a cheap source of randomness for ids and MACs.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// An Ethernet MAC address, written as `02:00:0a:00:01:05`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// True for a multicast or broadcast address (the group bit of the first octet).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// A random locally administered unicast address (`x2:..`, `x6:..`, ...).
    pub fn random_local() -> MacAddr {
        let r = random_u64().to_be_bytes();
        let mut m = [r[0], r[1], r[2], r[3], r[4], r[5]];
        m[0] = (m[0] & 0xfc) | 0x02;
        MacAddr(m)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A MAC address that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets like 02:00:0a:00:01:05")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(|| MacParseError(s.to_string()))?;
            if p.len() != 2 {
                return Err(MacParseError(s.to_string()));
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| MacParseError(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(MacParseError(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// 64 random bits: std's per-process random hasher keys mixed with a counter. Good enough for
/// resource ids and MAC addresses (not for secrets).
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A new EC2-style id: `prefix` + `-` + 17 lowercase hex digits (`vpc-0a1b2c3d4e5f60718`).
pub fn new_id(prefix: &str) -> String {
    let a = random_u64();
    let b = random_u64();
    let hex = format!("{a:016x}{b:016x}");
    format!("{prefix}-{}", &hex[..17])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m: MacAddr = "02:00:0a:00:01:05".parse().unwrap();
        assert_eq!(m.0, [2, 0, 10, 0, 1, 5]);
        assert_eq!(m.to_string(), "02:00:0a:00:01:05");
        assert!("02:00:0a:00:01".parse::<MacAddr>().is_err());
        assert!("02:00:0a:00:01:05:07".parse::<MacAddr>().is_err());
        assert!("zz:00:0a:00:01:05".parse::<MacAddr>().is_err());
    }

    #[test]
    fn random_mac_is_local_unicast() {
        for _ in 0..100 {
            let m = MacAddr::random_local();
            assert!(!m.is_multicast());
            assert_eq!(m.0[0] & 2, 2);
        }
    }

    #[test]
    fn ids_look_like_ec2() {
        let id = new_id("vpc");
        assert_eq!(id.len(), 4 + 17);
        assert!(
            id[4..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_uppercase())
        );
        assert_ne!(new_id("sg"), new_id("sg"));
    }
}
