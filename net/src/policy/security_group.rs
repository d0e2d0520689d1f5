//! Security groups: allow-only rules per ENI, evaluated against the packet's remote end.
//!
//! Semantics follow EC2:
//! - A group has inbound and outbound rules; each allows a protocol (`-1` all, tcp, udp, icmp or a
//!   number), a port range (TCP/UDP; for ICMP `from_port` is the type and `to_port` the code, -1
//!   meaning any) and a peer: a CIDR or another security group (every ENI of the same VPC that
//!   carries that group, by its private address).
//! - There are no deny rules: a packet passes a direction if ANY rule of ANY group on the ENI
//!   allows it (several groups on an ENI are the union of their rules).
//! - A new group has no inbound rules and one outbound rule allowing everything to 0.0.0.0/0.
//! - A VPC's `default` group allows all inbound traffic from members of itself and all outbound
//!   traffic.
//! - Groups are stateful; see [`super::conntrack`] for how replies pass and how rule changes
//!   apply to existing flows.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{Direction, L4, Packet4, Protocol};

/// The other end a rule allows: an address range or the members of a security group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Cidr(Ipv4Net),
    Group(String),
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgRule {
    pub protocol: Protocol,
    /// TCP/UDP: first port; ICMP: type (-1 any). Ignored for other protocols.
    pub from_port: i32,
    /// TCP/UDP: last port; ICMP: code (-1 any).
    pub to_port: i32,
    pub peer: Peer,
    pub description: Option<String>,
}

/// A rule EC2 would reject.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SgRuleError {
    #[error(
        "invalid port range {from}-{to} for {protocol}: ports are 0-65535 with from <= to (InvalidParameterValue)"
    )]
    PortRange {
        protocol: Protocol,
        from: i32,
        to: i32,
    },
    #[error("invalid ICMP type/code {from}/{to}: each is -1 or 0-255 (InvalidParameterValue)")]
    IcmpTypeCode { from: i32, to: i32 },
}

impl SgRule {
    /// A rule allowing everything from/to `cidr`.
    pub fn allow_all(cidr: Ipv4Net) -> SgRule {
        SgRule {
            protocol: Protocol::All,
            from_port: -1,
            to_port: -1,
            peer: Peer::Cidr(cidr),
            description: None,
        }
    }

    /// Checks the port fields as EC2 does.
    pub fn validate(&self) -> Result<(), SgRuleError> {
        let ports_ok = |lo: i32| {
            (lo..=65535).contains(&self.from_port)
                && (lo..=65535).contains(&self.to_port)
                && self.from_port <= self.to_port
        };
        match self.protocol {
            Protocol::Tcp | Protocol::Udp if !ports_ok(0) => Err(SgRuleError::PortRange {
                protocol: self.protocol,
                from: self.from_port,
                to: self.to_port,
            }),
            Protocol::Icmp
                if !(-1..=255).contains(&self.from_port) || !(-1..=255).contains(&self.to_port) =>
            {
                Err(SgRuleError::IcmpTypeCode {
                    from: self.from_port,
                    to: self.to_port,
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether the rule's protocol and ports cover `pkt` (the peer is checked separately).
    pub fn matches_service(&self, pkt: &Packet4) -> bool {
        if !self.protocol.matches(pkt.protocol) {
            return false;
        }
        match (self.protocol, pkt.l4) {
            (Protocol::Tcp | Protocol::Udp, _) => match pkt.dst_port() {
                Some(p) => (self.from_port..=self.to_port).contains(&i32::from(p)),
                None => false,
            },
            (
                Protocol::Icmp,
                L4::Icmp {
                    icmp_type, code, ..
                },
            ) => {
                (self.from_port == -1 || self.from_port == i32::from(icmp_type))
                    && (self.to_port == -1 || self.to_port == i32::from(code))
            }
            _ => true,
        }
    }
}

/// One security group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: String,
    pub vpc_id: String,
    pub ingress: Vec<SgRule>,
    pub egress: Vec<SgRule>,
}

impl SecurityGroup {
    /// A new group as `CreateSecurityGroup` makes it: no inbound rules, all outbound allowed.
    pub fn new(id: String, name: String, description: String, vpc_id: String) -> SecurityGroup {
        SecurityGroup {
            id,
            name,
            description,
            vpc_id,
            ingress: Vec::new(),
            egress: vec![SgRule::allow_all(Ipv4Net::default())],
        }
    }

    /// A VPC's default group: inbound from its own members, all outbound.
    pub fn new_default(id: String, vpc_id: String) -> SecurityGroup {
        let mut g = SecurityGroup::new(
            id.clone(),
            "default".into(),
            "default VPC security group".into(),
            vpc_id,
        );
        g.ingress.push(SgRule {
            protocol: Protocol::All,
            from_port: -1,
            to_port: -1,
            peer: Peer::Group(id),
            description: None,
        });
        g
    }

    pub fn rules(&self, dir: Direction) -> &[SgRule] {
        match dir {
            Direction::Inbound => &self.ingress,
            Direction::Outbound => &self.egress,
        }
    }
}

/// Decides one direction of one packet against the groups on an ENI.
///
/// `remote` is the packet's other end as the ENI sees it (the source for inbound, the
/// destination for outbound). `is_member(group_id, addr)` says whether `addr` is the private
/// address of an ENI in the same VPC that carries `group_id`.
///
/// Returns `Ok(())` when some rule allows it, else the reason a user reads in the flow log:
/// `sg-0abc: no inbound rule for tcp/22 from 10.0.2.5`.
pub fn evaluate(
    groups: &[&SecurityGroup],
    dir: Direction,
    pkt: &Packet4,
    is_member: impl Fn(&str, Ipv4Addr) -> bool,
) -> Result<(), String> {
    let remote = match dir {
        Direction::Inbound => pkt.src,
        Direction::Outbound => pkt.dst,
    };
    for g in groups {
        for rule in g.rules(dir) {
            if !rule.matches_service(pkt) {
                continue;
            }
            let peer_ok = match &rule.peer {
                Peer::Cidr(net) => net.contains(&remote),
                Peer::Group(id) => is_member(id, remote),
            };
            if peer_ok {
                return Ok(());
            }
        }
    }
    let ids: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
    let who = if ids.is_empty() {
        "no security group".to_string()
    } else {
        ids.join(", ")
    };
    let (word, prep) = match dir {
        Direction::Inbound => ("inbound", "from"),
        Direction::Outbound => ("outbound", "to"),
    };
    Err(format!(
        "{who}: no {word} rule for {} {prep} {remote}",
        pkt.service()
    ))
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

    fn icmp(src: &str, dst: &str, t: u8, c: u8) -> Packet4 {
        Packet4 {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: 1,
            l4: L4::Icmp {
                icmp_type: t,
                code: c,
                echo_id: Some(1),
                related: None,
            },
        }
    }

    fn rule(p: Protocol, from: i32, to: i32, peer: Peer) -> SgRule {
        SgRule {
            protocol: p,
            from_port: from,
            to_port: to,
            peer,
            description: None,
        }
    }

    fn no_members(_: &str, _: Ipv4Addr) -> bool {
        false
    }

    #[test]
    fn new_group_denies_inbound_allows_outbound() {
        let g = SecurityGroup::new("sg-1".into(), "web".into(), "d".into(), "vpc-1".into());
        let p = tcp("10.0.2.5", "10.0.1.5", 22);
        assert_eq!(
            evaluate(&[&g], Direction::Inbound, &p, no_members),
            Err("sg-1: no inbound rule for tcp/22 from 10.0.2.5".to_string())
        );
        assert_eq!(evaluate(&[&g], Direction::Outbound, &p, no_members), Ok(()));
    }

    #[test]
    fn port_ranges_and_cidrs() {
        let mut g = SecurityGroup::new("sg-1".into(), "web".into(), "d".into(), "vpc-1".into());
        g.ingress.push(rule(
            Protocol::Tcp,
            80,
            90,
            Peer::Cidr("10.0.2.0/24".parse().unwrap()),
        ));
        let ok = |src: &str, port: u16| {
            evaluate(
                &[&g],
                Direction::Inbound,
                &tcp(src, "10.0.1.5", port),
                no_members,
            )
            .is_ok()
        };
        assert!(ok("10.0.2.5", 80));
        assert!(ok("10.0.2.5", 90));
        assert!(!ok("10.0.2.5", 79));
        assert!(!ok("10.0.2.5", 91));
        assert!(!ok("10.0.3.5", 80));
        // UDP on the same ports is not TCP.
        let mut u = tcp("10.0.2.5", "10.0.1.5", 80);
        u.protocol = 17;
        u.l4 = L4::Udp {
            src_port: 1,
            dst_port: 80,
        };
        assert!(evaluate(&[&g], Direction::Inbound, &u, no_members).is_err());
    }

    #[test]
    fn icmp_type_and_code() {
        let mut g = SecurityGroup::new("sg-1".into(), "n".into(), "d".into(), "vpc-1".into());
        g.ingress.push(rule(
            Protocol::Icmp,
            8,
            -1,
            Peer::Cidr("0.0.0.0/0".parse().unwrap()),
        ));
        assert!(
            evaluate(
                &[&g],
                Direction::Inbound,
                &icmp("1.2.3.4", "10.0.0.5", 8, 0),
                no_members
            )
            .is_ok()
        );
        let err = evaluate(
            &[&g],
            Direction::Inbound,
            &icmp("1.2.3.4", "10.0.0.5", 13, 0),
            no_members,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "sg-1: no inbound rule for icmp type 13 code 0 from 1.2.3.4"
        );
    }

    #[test]
    fn referenced_group_and_union_of_groups() {
        let mut a = SecurityGroup::new("sg-a".into(), "a".into(), "d".into(), "vpc-1".into());
        let mut b = SecurityGroup::new("sg-b".into(), "b".into(), "d".into(), "vpc-1".into());
        a.ingress
            .push(rule(Protocol::Tcp, 22, 22, Peer::Group("sg-db".into())));
        b.ingress.push(rule(
            Protocol::Udp,
            53,
            53,
            Peer::Cidr("0.0.0.0/0".parse().unwrap()),
        ));
        let members = |g: &str, ip: Ipv4Addr| g == "sg-db" && ip == Ipv4Addr::new(10, 0, 2, 7);
        let p = tcp("10.0.2.7", "10.0.1.5", 22);
        assert!(evaluate(&[&a, &b], Direction::Inbound, &p, members).is_ok());
        let p2 = tcp("10.0.2.8", "10.0.1.5", 22);
        assert_eq!(
            evaluate(&[&a, &b], Direction::Inbound, &p2, members),
            Err("sg-a, sg-b: no inbound rule for tcp/22 from 10.0.2.8".to_string())
        );
    }

    #[test]
    fn default_group_allows_its_members() {
        let g = SecurityGroup::new_default("sg-d".into(), "vpc-1".into());
        let members = |id: &str, ip: Ipv4Addr| id == "sg-d" && ip == Ipv4Addr::new(10, 0, 1, 6);
        assert!(
            evaluate(
                &[&g],
                Direction::Inbound,
                &tcp("10.0.1.6", "10.0.1.5", 5000),
                members
            )
            .is_ok()
        );
        assert!(
            evaluate(
                &[&g],
                Direction::Inbound,
                &tcp("10.0.1.7", "10.0.1.5", 5000),
                members
            )
            .is_err()
        );
    }

    #[test]
    fn validation() {
        assert!(
            rule(Protocol::Tcp, 10, 5, Peer::Group("x".into()))
                .validate()
                .is_err()
        );
        assert!(
            rule(Protocol::Tcp, 0, 65536, Peer::Group("x".into()))
                .validate()
                .is_err()
        );
        assert!(
            rule(Protocol::Icmp, -1, -1, Peer::Group("x".into()))
                .validate()
                .is_ok()
        );
        assert!(
            rule(Protocol::Icmp, 256, 0, Peer::Group("x".into()))
                .validate()
                .is_err()
        );
        assert!(
            rule(Protocol::All, 0, 0, Peer::Group("x".into()))
                .validate()
                .is_ok()
        );
    }
}
