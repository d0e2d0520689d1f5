//! The DHCP server each switch port runs for its ENI (messages parsed and built with
//! `dhcproto`).
//!
//! As on a VPC, the answer is fixed by the ENI: its private address, the subnet mask, the VPC
//! router (subnet base + 1) as gateway, the VPC DNS server (VPC base + 2), the private host name
//! (`ip-10-0-1-5`) and domain (`ec2.internal`), and a lease time. DISCOVER gets an OFFER; REQUEST
//! for the ENI's address (selecting, init-reboot, renewing or rebinding) gets an ACK, a REQUEST
//! for any other address a NAK; INFORM gets an ACK without a lease; RELEASE and DECLINE need no
//! answer. A request whose client hardware address is not the ENI's MAC is ignored (it cannot
//! come from the ENI's owner). Tested with busybox udhcpc and ISC dhclient.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};
use dhcproto::{Decodable, Encodable};

use crate::addr::MacAddr;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

/// What the server hands one ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpLease {
    pub mac: MacAddr,
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub router: Ipv4Addr,
    pub dns_servers: Vec<Ipv4Addr>,
    pub hostname: String,
    pub domain_name: String,
    pub lease_secs: u32,
    pub broadcast: Ipv4Addr,
    /// Interface MTU to announce, if any.
    pub mtu: Option<u16>,
}

/// Why a DHCP message got no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DhcpError {
    #[error("malformed DHCP message: {0}")]
    Malformed(String),
    #[error("not a BOOTREQUEST from an Ethernet client")]
    NotARequest,
    #[error("client hardware address {got} is not this port's ENI MAC {want}")]
    WrongClient { got: String, want: MacAddr },
    #[error("DHCP message has no message type")]
    NoMessageType,
    #[error("relayed DHCP messages (giaddr set) are not served")]
    Relayed,
}

/// A reply and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpReply {
    pub message: Vec<u8>,
    pub kind: MessageType,
    /// IP destination: the client's address, or 255.255.255.255.
    pub dst_ip: Ipv4Addr,
    /// Ethernet destination: the client's MAC, or broadcast.
    pub dst_mac: MacAddr,
}

/// Answers one DHCP message from the client of `lease`. `Ok(None)` means no answer is due
/// (RELEASE, DECLINE, a REQUEST addressed to another server).
pub fn handle(request: &[u8], lease: &DhcpLease) -> Result<Option<DhcpReply>, DhcpError> {
    check_option_lengths(request)?;
    // dhcproto has debug assertions on some option lengths (checked above); anything else it
    // might still trip over must not take the switch down.
    let msg = std::panic::catch_unwind(|| Message::from_bytes(request))
        .map_err(|_| DhcpError::Malformed("decoder panicked".into()))?
        .map_err(|e| DhcpError::Malformed(e.to_string()))?;
    if msg.opcode() != Opcode::BootRequest || msg.hlen() != 6 {
        return Err(DhcpError::NotARequest);
    }
    let chaddr = msg.chaddr();
    if chaddr.len() < 6 || chaddr[..6] != lease.mac.0 {
        return Err(DhcpError::WrongClient {
            got: chaddr
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            want: lease.mac,
        });
    }
    if !msg.giaddr().is_unspecified() {
        return Err(DhcpError::Relayed);
    }
    let mtype = msg.opts().msg_type().ok_or(DhcpError::NoMessageType)?;
    let requested = match msg.opts().get(dhcproto::v4::OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match msg.opts().get(dhcproto::v4::OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let reply_kind = match mtype {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => {
            if server_id.is_some_and(|s| s != lease.router) {
                // The client chose another server's offer.
                return Ok(None);
            }
            let asked = requested.unwrap_or(msg.ciaddr());
            if asked == lease.address {
                MessageType::Ack
            } else {
                MessageType::Nak
            }
        }
        MessageType::Inform => MessageType::Ack,
        _ => return Ok(None),
    };
    let mut reply = Message::new_with_id(
        msg.xid(),
        if mtype == MessageType::Inform {
            msg.ciaddr()
        } else {
            Ipv4Addr::UNSPECIFIED
        },
        if reply_kind == MessageType::Nak || mtype == MessageType::Inform {
            Ipv4Addr::UNSPECIFIED
        } else {
            lease.address
        },
        lease.router,
        Ipv4Addr::UNSPECIFIED,
        &lease.mac.0,
    );
    reply.set_opcode(Opcode::BootReply);
    reply.set_flags(msg.flags());
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(reply_kind));
    opts.insert(DhcpOption::ServerIdentifier(lease.router));
    if reply_kind != MessageType::Nak {
        if mtype != MessageType::Inform {
            opts.insert(DhcpOption::AddressLeaseTime(lease.lease_secs));
            opts.insert(DhcpOption::Renewal(lease.lease_secs / 2));
            opts.insert(DhcpOption::Rebinding(lease.lease_secs / 8 * 7));
        }
        opts.insert(DhcpOption::SubnetMask(lease.netmask));
        opts.insert(DhcpOption::BroadcastAddr(lease.broadcast));
        opts.insert(DhcpOption::Router(vec![lease.router]));
        opts.insert(DhcpOption::DomainNameServer(lease.dns_servers.clone()));
        opts.insert(DhcpOption::Hostname(lease.hostname.clone()));
        opts.insert(DhcpOption::DomainName(lease.domain_name.clone()));
        if let Some(mtu) = lease.mtu {
            opts.insert(DhcpOption::InterfaceMtu(mtu));
        }
    }
    let message = reply
        .to_vec()
        .map_err(|e| DhcpError::Malformed(format!("encoding reply: {e}")))?;
    let broadcast_flag = msg.flags().broadcast();
    let (dst_ip, dst_mac) = if !msg.ciaddr().is_unspecified() && reply_kind != MessageType::Nak {
        (msg.ciaddr(), lease.mac)
    } else if broadcast_flag || reply_kind == MessageType::Nak {
        (Ipv4Addr::BROADCAST, MacAddr::BROADCAST)
    } else {
        (lease.address, lease.mac)
    };
    Ok(Some(DhcpReply {
        message,
        kind: reply_kind,
        dst_ip,
        dst_mac,
    }))
}

/// Rejects options whose length dhcproto would assert on instead of returning an error:
/// rapid commit (80) must be empty, bulk leasequery status (151) at least 1 byte, client FQDN
/// (81) at least 3 bytes, client network interface
/// (94) 3 bytes, bulk leasequery times (152-155) 4 bytes.
fn check_option_lengths(msg: &[u8]) -> Result<(), DhcpError> {
    const OPTIONS_START: usize = 240; // fixed header + magic cookie
    let mut i = OPTIONS_START;
    while i < msg.len() {
        let code = msg[i];
        match code {
            0 => {
                i += 1;
                continue;
            }
            255 => break,
            _ => {}
        }
        let Some(&len) = msg.get(i + 1) else {
            return Err(DhcpError::Malformed(format!("option {code} has no length")));
        };
        let len = usize::from(len);
        let ok = match code {
            80 => len == 0,
            151 => len >= 1,
            81 => len >= 3,
            94 => len == 3,
            152..=155 => len == 4,
            _ => true,
        };
        if !ok {
            return Err(DhcpError::Malformed(format!(
                "option {code} has invalid length {len}"
            )));
        }
        i += 2 + len;
    }
    Ok(())
}

/// A client message, for tests and tools.
pub fn client_message(
    kind: MessageType,
    mac: MacAddr,
    xid: u32,
    requested: Option<Ipv4Addr>,
    broadcast: bool,
) -> Vec<u8> {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.0,
    );
    if broadcast {
        m.set_flags(Flags::default().set_broadcast());
    }
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    if let Some(ip) = requested {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    }
    m.to_vec().expect("encoding a small client message")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lease() -> DhcpLease {
        DhcpLease {
            mac: MacAddr([2, 0, 10, 0, 1, 5]),
            address: "10.0.1.5".parse().unwrap(),
            netmask: "255.255.255.0".parse().unwrap(),
            router: "10.0.1.1".parse().unwrap(),
            dns_servers: vec!["10.0.0.2".parse().unwrap()],
            hostname: "ip-10-0-1-5".into(),
            domain_name: "ec2.internal".into(),
            lease_secs: 3600,
            broadcast: "10.0.1.255".parse().unwrap(),
            mtu: None,
        }
    }

    fn decode(r: &DhcpReply) -> Message {
        Message::from_bytes(&r.message).unwrap()
    }

    #[test]
    fn discover_gets_an_offer_with_everything() {
        let l = lease();
        let r = handle(
            &client_message(MessageType::Discover, l.mac, 7, None, false),
            &l,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.kind, MessageType::Offer);
        assert_eq!((r.dst_ip, r.dst_mac), (l.address, l.mac));
        let m = decode(&r);
        assert_eq!(m.xid(), 7);
        assert_eq!(m.yiaddr(), l.address);
        assert_eq!(m.opcode(), Opcode::BootReply);
        let o = m.opts();
        assert_eq!(
            o.get(dhcproto::v4::OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(l.netmask))
        );
        assert_eq!(
            o.get(dhcproto::v4::OptionCode::Router),
            Some(&DhcpOption::Router(vec![l.router]))
        );
        assert_eq!(
            o.get(dhcproto::v4::OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(l.dns_servers.clone()))
        );
        assert_eq!(
            o.get(dhcproto::v4::OptionCode::Hostname),
            Some(&DhcpOption::Hostname("ip-10-0-1-5".into()))
        );
        assert_eq!(
            o.get(dhcproto::v4::OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
    }

    #[test]
    fn request_ack_or_nak() {
        let l = lease();
        let ok = handle(
            &client_message(MessageType::Request, l.mac, 1, Some(l.address), true),
            &l,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.kind, MessageType::Ack);
        assert_eq!(
            (ok.dst_ip, ok.dst_mac),
            (Ipv4Addr::BROADCAST, MacAddr::BROADCAST)
        );
        let nak = handle(
            &client_message(
                MessageType::Request,
                l.mac,
                1,
                Some("10.0.1.9".parse().unwrap()),
                false,
            ),
            &l,
        )
        .unwrap()
        .unwrap();
        assert_eq!(nak.kind, MessageType::Nak);
        assert_eq!(decode(&nak).yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            handle(
                &client_message(MessageType::Release, l.mac, 1, None, false),
                &l
            ),
            Ok(None)
        );
    }

    #[test]
    fn other_clients_are_ignored() {
        let l = lease();
        let r = handle(
            &client_message(
                MessageType::Discover,
                MacAddr([2, 0, 0, 0, 0, 9]),
                1,
                None,
                false,
            ),
            &l,
        );
        assert!(matches!(r, Err(DhcpError::WrongClient { .. })));
        assert!(matches!(
            handle(b"\x01\x01\x06", &l),
            Err(DhcpError::Malformed(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn dhcp_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = handle(&data, &lease());
        }

        #[test]
        fn mutated_requests_never_panic(pos in 0usize..300, val in any::<u8>(), cut in 0usize..300) {
            let l = lease();
            let mut m = client_message(MessageType::Request, l.mac, 5, Some(l.address), false);
            let n = m.len();
            m[pos % n] = val;
            m.truncate(n - cut % n);
            let _ = handle(&m, &l);
        }
    }
}
