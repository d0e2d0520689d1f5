//! The VPC's DNS server (VPC base + 2, and 169.254.169.253), answering over UDP port 53 with
//! messages parsed and built by `hickory-proto`.
//!
//! It is authoritative for the VPC's private names, as Route 53 Resolver is:
//! - `A ip-10-0-1-5.ec2.internal` (or `ip-10-0-1-5.<region>.compute.internal` outside us-east-1)
//!   for any address inside the VPC's CIDR, and `PTR 5.1.0.10.in-addr.arpa` back to that name;
//! - other record types of those names: an empty NOERROR answer;
//! - any other name in the private domain: NXDOMAIN;
//! - names outside it: REFUSED, because kumo does not resolve the internet for instances (the
//!   switch never talks to outside addresses). The answer says so instead of timing out.

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::Ipv4Net;

use crate::model::private_domain;

pub const PORT: u16 = 53;
/// The Amazon-provided DNS server's link-local address.
pub const LINK_LOCAL_DNS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 253);
const TTL: u32 = 60;

/// Why a query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("malformed DNS message: {0}")]
    Malformed(String),
    #[error("not a query")]
    NotAQuery,
}

/// What the resolver knows of one VPC.
#[derive(Debug, Clone)]
pub struct DnsZone {
    pub vpc_cidr: Ipv4Net,
    pub region: String,
}

/// Answers one query. The reply carries the query's id, questions and RD flag.
pub fn handle(query: &[u8], zone: &DnsZone) -> Result<Vec<u8>, DnsError> {
    // A parser bug must not take the switch down: treat a panic as a malformed message.
    let q = std::panic::catch_unwind(|| Message::from_vec(query))
        .map_err(|_| DnsError::Malformed("decoder panicked".into()))?
        .map_err(|e| DnsError::Malformed(e.to_string()))?;
    if q.metadata.message_type != MessageType::Query {
        return Err(DnsError::NotAQuery);
    }
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = false;
    if q.metadata.op_code != OpCode::Query || q.queries.len() != 1 {
        r.metadata.response_code = ResponseCode::NotImp;
        r.queries = q.queries.clone();
        return r.to_vec().map_err(|e| DnsError::Malformed(e.to_string()));
    }
    let question = q.queries[0].clone();
    r.queries = vec![question.clone()];
    let name = question.name().to_lowercase();
    let qtype = question.query_type();
    let domain = private_domain(&zone.region);
    let text = name.to_ascii();
    let text = text.trim_end_matches('.');
    if question.query_class() != DNSClass::IN {
        r.metadata.response_code = ResponseCode::Refused;
    } else if let Some(ip) = forward_name(text, &domain) {
        r.metadata.authoritative = true;
        if zone.vpc_cidr.contains(&ip) {
            if qtype == RecordType::A || qtype == RecordType::ANY {
                r.answers
                    .push(Record::from_rdata(name.clone(), TTL, RData::A(A(ip))));
            }
        } else {
            r.metadata.response_code = ResponseCode::NXDomain;
        }
    } else if text == domain || text.ends_with(&format!(".{domain}")) {
        r.metadata.authoritative = true;
        r.metadata.response_code = ResponseCode::NXDomain;
    } else if let Some(ip) = reverse_name(text) {
        if zone.vpc_cidr.contains(&ip) {
            r.metadata.authoritative = true;
            if qtype == RecordType::PTR || qtype == RecordType::ANY {
                let target = Name::from_ascii(format!(
                    "{}.",
                    crate::model::private_dns_name(ip, &zone.region)
                ))
                .map_err(|e| DnsError::Malformed(e.to_string()))?;
                r.answers.push(Record::from_rdata(
                    name.clone(),
                    TTL,
                    RData::PTR(PTR(target)),
                ));
            }
        } else {
            r.metadata.response_code = ResponseCode::Refused;
        }
    } else {
        r.metadata.response_code = ResponseCode::Refused;
    }
    r.to_vec().map_err(|e| DnsError::Malformed(e.to_string()))
}

/// `ip-10-0-1-5.<domain>` -> 10.0.1.5.
fn forward_name(name: &str, domain: &str) -> Option<Ipv4Addr> {
    let host = name.strip_suffix(domain)?.strip_suffix('.')?;
    let rest = host.strip_prefix("ip-")?;
    let parts: Vec<&str> = rest.split('-').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut o = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || p.len() > 3 || (p.len() > 1 && p.starts_with('0')) {
            return None;
        }
        o[i] = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(o))
}

/// `5.1.0.10.in-addr.arpa` -> 10.0.1.5.
fn reverse_name(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let parts: Vec<&str> = rest.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut o = [0u8; 4];
    for (i, p) in parts.iter().rev().enumerate() {
        o[i] = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use proptest::prelude::*;

    fn zone() -> DnsZone {
        DnsZone {
            vpc_cidr: "10.0.0.0/16".parse().unwrap(),
            region: "us-east-1".into(),
        }
    }

    fn ask(name: &str, t: RecordType) -> Message {
        let mut q = Message::new(0, MessageType::Query, OpCode::Query);
        q.metadata.id = 4242;
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        let bytes = handle(&q.to_vec().unwrap(), &zone()).unwrap();
        Message::from_vec(&bytes).unwrap()
    }

    #[test]
    fn forward_and_reverse() {
        let r = ask("ip-10-0-1-5.ec2.internal.", RecordType::A);
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data, RData::A(A("10.0.1.5".parse().unwrap())));
        let r = ask("5.1.0.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(
            r.answers[0].data,
            RData::PTR(PTR(Name::from_ascii("ip-10-0-1-5.ec2.internal.").unwrap()))
        );
        // Case does not matter.
        assert_eq!(
            ask("IP-10-0-1-5.EC2.INTERNAL.", RecordType::A)
                .answers
                .len(),
            1
        );
    }

    #[test]
    fn says_so_for_what_it_cannot_answer() {
        assert_eq!(
            ask("ip-10-1-1-5.ec2.internal.", RecordType::A)
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask("nothing.ec2.internal.", RecordType::A)
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask("example.com.", RecordType::A).metadata.response_code,
            ResponseCode::Refused
        );
        let r = ask("ip-10-0-1-5.ec2.internal.", RecordType::AAAA);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(
            forward_name("ip-10-0-01-5.ec2.internal", "ec2.internal"),
            None
        );
    }

    #[test]
    fn other_regions_use_compute_internal() {
        let z = DnsZone {
            vpc_cidr: "10.0.0.0/16".parse().unwrap(),
            region: "eu-west-1".into(),
        };
        let mut q = Message::new(0, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(
            Name::from_ascii("ip-10-0-1-5.eu-west-1.compute.internal.").unwrap(),
            RecordType::A,
        ));
        let r = Message::from_vec(&handle(&q.to_vec().unwrap(), &z).unwrap()).unwrap();
        assert_eq!(r.answers.len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn dns_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = handle(&data, &zone());
        }
    }
}
