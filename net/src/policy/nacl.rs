//! Network ACLs: stateless, numbered allow/deny rules per subnet, evaluated in ascending rule
//! number; the first rule that matches decides, and `*` (deny everything) closes each list.
//!
//! As on EC2: a VPC's default NACL allows all traffic in and out (rule 100 each way); a new custom
//! NACL has only the `*` rules, so it denies everything until rules are added. Inbound rules match
//! the packet's source address, outbound rules its destination; for TCP and UDP the port range
//! matches the destination port (so replies need an ephemeral-port rule, the classic NACL trap).
//! NACLs apply where traffic crosses a subnet boundary, not between two ENIs of one subnet.

use ipnet::Ipv4Net;

use super::{Direction, L4, Packet4, Protocol};

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    Allow,
    Deny,
}

/// One numbered NACL entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NaclEntry {
    /// 1..=32766; lower numbers are evaluated first.
    pub rule_number: u16,
    pub direction: Direction,
    pub protocol: Protocol,
    /// TCP/UDP destination port range (inclusive); `None` = all ports.
    pub port_range: Option<(u16, u16)>,
    /// ICMP type and code (-1 = any); `None` = any.
    pub icmp_type_code: Option<(i16, i16)>,
    pub cidr: Ipv4Net,
    pub action: RuleAction,
}

/// An entry EC2 would reject.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NaclError {
    #[error("invalid rule number {0}: NACL rule numbers are 1-32766 (InvalidParameterValue)")]
    RuleNumber(u16),
    #[error(
        "network ACL {acl} already has an {direction} rule {rule_number} (NetworkAclEntryAlreadyExists)"
    )]
    Exists {
        acl: String,
        direction: &'static str,
        rule_number: u16,
    },
    #[error(
        "network ACL {acl} has no {direction} rule {rule_number} (InvalidNetworkAclEntry.NotFound)"
    )]
    NotFound {
        acl: String,
        direction: &'static str,
        rule_number: u16,
    },
    #[error("invalid port range {0}-{1}: from must be <= to (InvalidParameterValue)")]
    PortRange(u16, u16),
}

/// A network ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAcl {
    pub id: String,
    pub vpc_id: String,
    pub is_default: bool,
    /// Kept sorted by (direction, rule number).
    entries: Vec<NaclEntry>,
}

/// The outcome of a NACL decision: which rule decided (None = the `*` rule) and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NaclDecision {
    pub rule_number: Option<u16>,
    pub action: RuleAction,
}

impl NetworkAcl {
    /// A custom NACL: denies everything until entries are added.
    pub fn new_custom(id: String, vpc_id: String) -> NetworkAcl {
        NetworkAcl {
            id,
            vpc_id,
            is_default: false,
            entries: Vec::new(),
        }
    }

    /// A VPC's default NACL: rule 100 allows everything, both ways.
    pub fn new_default(id: String, vpc_id: String) -> NetworkAcl {
        let mut acl = NetworkAcl {
            id,
            vpc_id,
            is_default: true,
            entries: Vec::new(),
        };
        for direction in [Direction::Inbound, Direction::Outbound] {
            acl.entries.push(NaclEntry {
                rule_number: 100,
                direction,
                protocol: Protocol::All,
                port_range: None,
                icmp_type_code: None,
                cidr: Ipv4Net::default(),
                action: RuleAction::Allow,
            });
        }
        acl
    }

    pub fn entries(&self) -> &[NaclEntry] {
        &self.entries
    }

    /// Adds an entry (`CreateNetworkAclEntry`).
    pub fn add_entry(&mut self, entry: NaclEntry) -> Result<(), NaclError> {
        if entry.rule_number == 0 || entry.rule_number > 32766 {
            return Err(NaclError::RuleNumber(entry.rule_number));
        }
        if let Some((a, b)) = entry.port_range
            && a > b
        {
            return Err(NaclError::PortRange(a, b));
        }
        if self
            .entries
            .iter()
            .any(|e| e.direction == entry.direction && e.rule_number == entry.rule_number)
        {
            return Err(NaclError::Exists {
                acl: self.id.clone(),
                direction: entry.direction.word(),
                rule_number: entry.rule_number,
            });
        }
        self.entries.push(entry);
        self.entries
            .sort_by_key(|e| (e.direction == Direction::Outbound, e.rule_number));
        Ok(())
    }

    /// Replaces an entry (`ReplaceNetworkAclEntry`).
    pub fn replace_entry(&mut self, entry: NaclEntry) -> Result<(), NaclError> {
        self.delete_entry(entry.direction, entry.rule_number)?;
        self.add_entry(entry)
    }

    /// Deletes an entry (`DeleteNetworkAclEntry`).
    pub fn delete_entry(
        &mut self,
        direction: Direction,
        rule_number: u16,
    ) -> Result<(), NaclError> {
        let before = self.entries.len();
        self.entries
            .retain(|e| !(e.direction == direction && e.rule_number == rule_number));
        if self.entries.len() == before {
            return Err(NaclError::NotFound {
                acl: self.id.clone(),
                direction: direction.word(),
                rule_number,
            });
        }
        Ok(())
    }

    /// Evaluates `pkt` crossing the subnet boundary in `direction`.
    pub fn decide(&self, direction: Direction, pkt: &Packet4) -> NaclDecision {
        let remote = match direction {
            Direction::Inbound => pkt.src,
            Direction::Outbound => pkt.dst,
        };
        for e in self.entries.iter().filter(|e| e.direction == direction) {
            if !e.protocol.matches(pkt.protocol) || !e.cidr.contains(&remote) {
                continue;
            }
            if e.protocol.has_ports()
                && let Some((lo, hi)) = e.port_range
            {
                match pkt.dst_port() {
                    Some(p) if (lo..=hi).contains(&p) => {}
                    _ => continue,
                }
            }
            if e.protocol == Protocol::Icmp
                && let Some((t, c)) = e.icmp_type_code
                && let L4::Icmp {
                    icmp_type, code, ..
                } = pkt.l4
                && ((t != -1 && t != i16::from(icmp_type)) || (c != -1 && c != i16::from(code)))
            {
                continue;
            }
            return NaclDecision {
                rule_number: Some(e.rule_number),
                action: e.action,
            };
        }
        NaclDecision {
            rule_number: None,
            action: RuleAction::Deny,
        }
    }

    /// `Ok(())` if allowed, else a readable reason:
    /// `acl-0abc: inbound rule 90 denies tcp/22 from 10.0.2.5`.
    pub fn check(&self, direction: Direction, pkt: &Packet4) -> Result<(), String> {
        let d = self.decide(direction, pkt);
        if d.action == RuleAction::Allow {
            return Ok(());
        }
        let (prep, remote) = match direction {
            Direction::Inbound => ("from", pkt.src),
            Direction::Outbound => ("to", pkt.dst),
        };
        Err(match d.rule_number {
            Some(n) => format!(
                "{}: {} rule {n} denies {} {prep} {remote}",
                self.id,
                direction.word(),
                pkt.service()
            ),
            None => format!(
                "{}: no {} rule allows {} {prep} {remote} (rule * denies)",
                self.id,
                direction.word(),
                pkt.service()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::TcpFlags;

    fn tcp(src: &str, dst: &str, dport: u16) -> Packet4 {
        Packet4 {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: 6,
            l4: L4::Tcp {
                src_port: 40000,
                dst_port: dport,
                flags: TcpFlags::default(),
            },
        }
    }

    fn entry(
        n: u16,
        dir: Direction,
        p: Protocol,
        ports: Option<(u16, u16)>,
        cidr: &str,
        a: RuleAction,
    ) -> NaclEntry {
        NaclEntry {
            rule_number: n,
            direction: dir,
            protocol: p,
            port_range: ports,
            icmp_type_code: None,
            cidr: cidr.parse().unwrap(),
            action: a,
        }
    }

    #[test]
    fn default_allows_custom_denies() {
        let d = NetworkAcl::new_default("acl-d".into(), "vpc".into());
        let c = NetworkAcl::new_custom("acl-c".into(), "vpc".into());
        let p = tcp("10.0.2.5", "10.0.1.5", 22);
        assert!(d.check(Direction::Inbound, &p).is_ok());
        assert!(d.check(Direction::Outbound, &p).is_ok());
        assert_eq!(
            c.check(Direction::Inbound, &p),
            Err("acl-c: no inbound rule allows tcp/22 from 10.0.2.5 (rule * denies)".into())
        );
    }

    #[test]
    fn lowest_number_wins() {
        let mut acl = NetworkAcl::new_custom("acl-1".into(), "vpc".into());
        acl.add_entry(entry(
            200,
            Direction::Inbound,
            Protocol::All,
            None,
            "0.0.0.0/0",
            RuleAction::Allow,
        ))
        .unwrap();
        acl.add_entry(entry(
            100,
            Direction::Inbound,
            Protocol::Tcp,
            Some((22, 22)),
            "10.0.2.0/24",
            RuleAction::Deny,
        ))
        .unwrap();
        assert_eq!(
            acl.check(Direction::Inbound, &tcp("10.0.2.5", "10.0.1.5", 22)),
            Err("acl-1: inbound rule 100 denies tcp/22 from 10.0.2.5".into())
        );
        assert!(
            acl.check(Direction::Inbound, &tcp("10.0.3.5", "10.0.1.5", 22))
                .is_ok()
        );
        assert!(
            acl.check(Direction::Inbound, &tcp("10.0.2.5", "10.0.1.5", 80))
                .is_ok()
        );
        // Outbound has no rules: denied.
        assert!(
            acl.check(Direction::Outbound, &tcp("10.0.1.5", "10.0.2.5", 80))
                .is_err()
        );
        // Deleting the deny opens port 22.
        acl.delete_entry(Direction::Inbound, 100).unwrap();
        assert!(
            acl.check(Direction::Inbound, &tcp("10.0.2.5", "10.0.1.5", 22))
                .is_ok()
        );
    }

    #[test]
    fn entry_validation() {
        let mut acl = NetworkAcl::new_custom("acl-1".into(), "vpc".into());
        let e = entry(
            0,
            Direction::Inbound,
            Protocol::All,
            None,
            "0.0.0.0/0",
            RuleAction::Allow,
        );
        assert_eq!(acl.add_entry(e), Err(NaclError::RuleNumber(0)));
        let e = entry(
            5,
            Direction::Inbound,
            Protocol::All,
            None,
            "0.0.0.0/0",
            RuleAction::Allow,
        );
        acl.add_entry(e.clone()).unwrap();
        assert!(matches!(
            acl.add_entry(e.clone()),
            Err(NaclError::Exists { .. })
        ));
        // Same number, other direction, is fine.
        let mut out = e;
        out.direction = Direction::Outbound;
        acl.add_entry(out).unwrap();
        assert!(acl.delete_entry(Direction::Inbound, 6).is_err());
    }
}
