//! Connection tracking for security groups.
//!
//! Each ENI keeps its own table of flows, keyed from the ENI's point of view (protocol, local
//! address and port, remote address and port; ICMP echo uses its identifier as both ports). A
//! packet that belongs to a tracked flow passes the ENI's security groups in either direction
//! without looking at rules: that is what makes replies pass. A packet of no tracked flow is
//! checked against the rules of its direction, and starts a flow if allowed.
//!
//! Rule changes, as on EC2: adding a rule takes effect for the next packet. Removing a rule does
//! NOT cut flows it already let in: they keep passing until they go idle past the timeouts below
//! (or, for TCP, until FIN/RST close them). New flows are decided by the new rules at once.
//! (EC2 also leaves a few flows untracked, e.g. when 0.0.0.0/0 all-traffic rules exist both ways,
//! so removing such a rule cuts them immediately; kumo tracks every flow, so the only difference
//! is that such a flow lasts until it idles out.)
//!
//! Timeouts (EC2's defaults where it documents them): TCP established 432000 s (5 days); TCP
//! opening or closing 120 s; TCP after RST 5 s; UDP that has seen traffic both ways 180 s, one-way
//! 30 s; ICMP and other protocols 30 s. The table is bounded per switch; when it is full, new
//! flows are dropped with a counted reason (a flood cannot grow memory without bound).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::{Direction, L4, Packet4, Protocol};
use crate::PortId;

const TCP_ESTABLISHED: Duration = Duration::from_secs(432_000);
const TCP_TRANSITORY: Duration = Duration::from_secs(120);
const TCP_RESET: Duration = Duration::from_secs(5);
const UDP_STREAM: Duration = Duration::from_secs(180);
const UDP_ONE_WAY: Duration = Duration::from_secs(30);
const OTHER: Duration = Duration::from_secs(30);

/// A flow from one ENI's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub port: PortId,
    pub protocol: u8,
    pub local: (Ipv4Addr, u16),
    pub remote: (Ipv4Addr, u16),
}

impl ConnKey {
    /// The key of `pkt` as seen by the ENI on `port`, which it is `dir` for.
    pub fn new(port: PortId, dir: Direction, pkt: &Packet4) -> ConnKey {
        let (sp, dp) = match pkt.l4 {
            L4::Tcp {
                src_port, dst_port, ..
            }
            | L4::Udp { src_port, dst_port } => (src_port, dst_port),
            L4::Icmp {
                echo_id: Some(id), ..
            } => (id, id),
            _ => (0, 0),
        };
        let (local, remote) = match dir {
            Direction::Outbound => ((pkt.src, sp), (pkt.dst, dp)),
            Direction::Inbound => ((pkt.dst, dp), (pkt.src, sp)),
        };
        ConnKey {
            port,
            protocol: pkt.protocol,
            local,
            remote,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpState {
    Opening,
    Established,
    Closing,
    Reset,
}

#[derive(Debug, Clone)]
struct ConnEntry {
    origin: Direction,
    replied: bool,
    tcp: TcpState,
    expires: Instant,
}

/// The connection table was full: the new flow is refused.
#[derive(Debug, thiserror::Error)]
#[error("connection table full ({0} flows): new flow refused")]
pub struct TableFull(pub usize);

/// All tracked flows of a switch.
#[derive(Debug)]
pub struct ConnTable {
    map: HashMap<ConnKey, ConnEntry>,
    max_entries: usize,
    next_sweep: Option<Instant>,
}

impl Default for ConnTable {
    fn default() -> Self {
        ConnTable::new(262_144)
    }
}

impl ConnTable {
    pub fn new(max_entries: usize) -> ConnTable {
        ConnTable {
            map: HashMap::new(),
            max_entries,
            next_sweep: None,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// If `pkt` (going `dir` at the ENI of `key.port`) belongs to a live tracked flow, refreshes
    /// the flow and returns true.
    pub fn track_existing(
        &mut self,
        key: &ConnKey,
        dir: Direction,
        pkt: &Packet4,
        now: Instant,
    ) -> bool {
        let Some(e) = self.map.get_mut(key) else {
            return false;
        };
        if e.expires <= now {
            self.map.remove(key);
            return false;
        }
        if dir != e.origin {
            e.replied = true;
        }
        update(e, pkt, now);
        true
    }

    /// Whether `pkt`, an ICMP error crossing the ENI of `port` in `dir`, is about a live tracked
    /// flow of that ENI (EC2 lets such errors through, e.g. port unreachable, fragmentation
    /// needed).
    pub fn is_related(&self, port: PortId, dir: Direction, pkt: &Packet4, now: Instant) -> bool {
        let L4::Icmp {
            related: Some(r), ..
        } = pkt.l4
        else {
            return false;
        };
        // The quoted packet went the other way: for an inbound error, the ENI sent it.
        let (local, remote) = match dir {
            Direction::Inbound => ((r.src, r.src_port), (r.dst, r.dst_port)),
            Direction::Outbound => ((r.dst, r.dst_port), (r.src, r.src_port)),
        };
        let key = ConnKey {
            port,
            protocol: r.protocol,
            local,
            remote,
        };
        self.map.get(&key).is_some_and(|e| e.expires > now)
    }

    /// Starts tracking the flow `pkt` opens (after the rules allowed it).
    pub fn insert(
        &mut self,
        key: ConnKey,
        dir: Direction,
        pkt: &Packet4,
        now: Instant,
    ) -> Result<(), TableFull> {
        if self.map.len() >= self.max_entries {
            self.sweep(now);
            if self.map.len() >= self.max_entries {
                return Err(TableFull(self.max_entries));
            }
        }
        let mut e = ConnEntry {
            origin: dir,
            replied: false,
            tcp: TcpState::Opening,
            expires: now,
        };
        update(&mut e, pkt, now);
        self.map.insert(key, e);
        Ok(())
    }

    /// Drops expired flows; cheap to call often (it sweeps at most once a second).
    pub fn expire(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.sweep(now);
    }

    fn sweep(&mut self, now: Instant) {
        self.map.retain(|_, e| e.expires > now);
        self.next_sweep = Some(now + Duration::from_secs(1));
    }

    /// Forgets every flow of a port (the ENI went away).
    pub fn remove_port(&mut self, port: PortId) {
        self.map.retain(|k, _| k.port != port);
    }
}

fn update(e: &mut ConnEntry, pkt: &Packet4, now: Instant) {
    let timeout = match pkt.l4 {
        L4::Tcp { flags, .. } if pkt.protocol == Protocol::TCP => {
            if flags.rst {
                e.tcp = TcpState::Reset;
            } else if flags.fin {
                e.tcp = TcpState::Closing;
            } else if e.tcp == TcpState::Opening && e.replied && flags.ack && !flags.syn {
                e.tcp = TcpState::Established;
            }
            match e.tcp {
                TcpState::Established => TCP_ESTABLISHED,
                TcpState::Opening | TcpState::Closing => TCP_TRANSITORY,
                TcpState::Reset => TCP_RESET,
            }
        }
        L4::Udp { .. } => {
            if e.replied {
                UDP_STREAM
            } else {
                UDP_ONE_WAY
            }
        }
        _ => OTHER,
    };
    e.expires = now + timeout;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::TcpFlags;

    fn tcp(src: &str, sp: u16, dst: &str, dp: u16, flags: TcpFlags) -> Packet4 {
        Packet4 {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: 6,
            l4: L4::Tcp {
                src_port: sp,
                dst_port: dp,
                flags,
            },
        }
    }

    #[test]
    fn reply_matches_the_flow_key() {
        let out = tcp("10.0.1.5", 40000, "10.0.2.5", 22, TcpFlags::default());
        let reply = out.reversed();
        let p = PortId(1);
        assert_eq!(
            ConnKey::new(p, Direction::Outbound, &out),
            ConnKey::new(p, Direction::Inbound, &reply)
        );
    }

    #[test]
    fn tracked_flow_passes_then_expires() {
        let mut t = ConnTable::new(10);
        let now = Instant::now();
        let syn = TcpFlags {
            syn: true,
            ..Default::default()
        };
        let out = tcp("10.0.1.5", 40000, "10.0.2.5", 22, syn);
        let k = ConnKey::new(PortId(1), Direction::Outbound, &out);
        assert!(!t.track_existing(&k, Direction::Outbound, &out, now));
        t.insert(k, Direction::Outbound, &out, now).unwrap();
        let reply = out.reversed();
        let kr = ConnKey::new(PortId(1), Direction::Inbound, &reply);
        assert!(t.track_existing(&kr, Direction::Inbound, &reply, now));
        // Opening flows last 120 s.
        assert!(!t.track_existing(
            &kr,
            Direction::Inbound,
            &reply,
            now + Duration::from_secs(121)
        ));
    }

    #[test]
    fn table_is_bounded() {
        let mut t = ConnTable::new(2);
        let now = Instant::now();
        for (i, sp) in [1u16, 2, 3].into_iter().enumerate() {
            let p = tcp("10.0.1.5", sp, "10.0.2.5", 22, TcpFlags::default());
            let r = t.insert(
                ConnKey::new(PortId(1), Direction::Outbound, &p),
                Direction::Outbound,
                &p,
                now,
            );
            assert_eq!(r.is_ok(), i < 2);
        }
        t.remove_port(PortId(1));
        assert!(t.is_empty());
    }
}
