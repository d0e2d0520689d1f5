//! A DHCPv4 client over a raw `AF_PACKET` socket, so it works before the interface has an
//! address: DISCOVER, OFFER, REQUEST, ACK (NAK restarts), with retransmission and exponential
//! backoff inside a bounded total time, and renewal of the lease. Messages are encoded and decoded
//! with `dhcproto`; the Ethernet, IPv4 and UDP headers around them with `etherparse`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("cannot open a packet socket on {interface}: {source} (kumo-agent must run as root)")]
    Socket {
        interface: String,
        source: io::Error,
    },
    #[error("packet socket on {interface}: {source}")]
    Io {
        interface: String,
        source: io::Error,
    },
    #[error(
        "no DHCP {stage} on {interface} within {waited:?} ({sent} requests sent); is the NIC attached to the VPC switch?"
    )]
    NoAnswer {
        interface: String,
        stage: &'static str,
        waited: Duration,
        sent: u32,
    },
    #[error("the DHCP server refused the lease (NAK) {attempts} times")]
    Refused { attempts: u32 },
    #[error("bad DHCP message: {0}")]
    Bad(String),
}

/// Timing of the exchange.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    /// Give up after this long.
    pub total_timeout: Duration,
    /// First retransmission interval; doubles up to `max_retransmit`.
    pub initial_retransmit: Duration,
    pub max_retransmit: Duration,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        Self {
            total_timeout: Duration::from_secs(30),
            initial_retransmit: Duration::from_millis(500),
            max_retransmit: Duration::from_secs(4),
        }
    }
}

/// A DHCP lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
    pub hostname: Option<String>,
    pub mtu: Option<u16>,
    pub lease_secs: Option<u32>,
    pub renew_secs: Option<u32>,
    pub server: Option<Ipv4Addr>,
}

impl Lease {
    /// Seconds until renewal (T1): the server's, or half the lease.
    pub fn renew_after(&self) -> Option<Duration> {
        let secs = self
            .renew_secs
            .or(self.lease_secs.map(|l| l / 2))
            .filter(|s| *s > 0 && *s != u32::MAX)?;
        Some(Duration::from_secs(u64::from(secs)))
    }
}

/// A random transaction id.
fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    // SAFETY: the buffer is writable for its length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == 4 {
        u32::from_ne_bytes(buf)
    } else {
        // No entropy source (very early boot): time and pid are unique enough for an xid.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        t ^ std::process::id().rotate_left(16)
    }
}

const REQUESTED: &[OptionCode] = &[
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::Hostname,
    OptionCode::DomainName,
    OptionCode::InterfaceMtu,
    OptionCode::BroadcastAddr,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
];

fn base_message(xid: u32, mac: [u8; 6], ciaddr: Ipv4Addr, kind: MessageType) -> Message {
    let mut msg = Message::new_with_id(
        xid,
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    msg.set_opcode(Opcode::BootRequest);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(&mac);
    opts.insert(DhcpOption::ClientIdentifier(client_id));
    opts.insert(DhcpOption::ParameterRequestList(REQUESTED.to_vec()));
    opts.insert(DhcpOption::MaxMessageSize(1500));
    msg
}

/// DHCPDISCOVER.
pub fn discover(xid: u32, mac: [u8; 6]) -> Message {
    base_message(xid, mac, Ipv4Addr::UNSPECIFIED, MessageType::Discover)
}

/// DHCPREQUEST for an offer (SELECTING state).
pub fn request_for_offer(xid: u32, mac: [u8; 6], offer: &Message) -> Message {
    let mut msg = base_message(xid, mac, Ipv4Addr::UNSPECIFIED, MessageType::Request);
    msg.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    if let Some(DhcpOption::ServerIdentifier(server)) =
        offer.opts().get(OptionCode::ServerIdentifier)
    {
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(*server));
    }
    msg
}

/// DHCPREQUEST renewing a lease (ciaddr set, no server identifier).
pub fn request_renewal(xid: u32, mac: [u8; 6], address: Ipv4Addr) -> Message {
    base_message(xid, mac, address, MessageType::Request)
}

/// Encodes a client message in a broadcast Ethernet/IPv4/UDP frame.
pub fn client_frame(mac: [u8; 6], source: Ipv4Addr, msg: &Message) -> Result<Vec<u8>, DhcpError> {
    let mut payload = Vec::with_capacity(576);
    msg.encode(&mut Encoder::new(&mut payload))
        .map_err(|e| DhcpError::Bad(e.to_string()))?;
    let builder = etherparse::PacketBuilder::ethernet2(mac, [0xff; 6])
        .ipv4(source.octets(), [255, 255, 255, 255], 64)
        .udp(CLIENT_PORT, SERVER_PORT);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, &payload)
        .map_err(|e| DhcpError::Bad(e.to_string()))?;
    Ok(frame)
}

/// Decodes a frame if it is a DHCP reply to this client's transaction.
pub fn parse_server_frame(frame: &[u8], xid: u32, mac: [u8; 6]) -> Option<Message> {
    let packet = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    match packet.net {
        Some(etherparse::NetSlice::Ipv4(_)) => {}
        _ => return None,
    }
    let Some(etherparse::TransportSlice::Udp(udp)) = packet.transport else {
        return None;
    };
    if udp.destination_port() != CLIENT_PORT || udp.source_port() != SERVER_PORT {
        return None;
    }
    // dhcproto 0.15 has debug assertions (and an unchecked `len - 1`) on malformed options
    // (codes 151-155): a packet must never crash the agent, so a panic there drops the packet.
    let payload = udp.payload();
    let msg = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(payload)))
        .ok()?
        .ok()?;
    if msg.opcode() != Opcode::BootReply || msg.xid() != xid || msg.chaddr().get(..6)? != mac {
        return None;
    }
    Some(msg)
}

/// Reads a lease from an ACK.
pub fn lease_from_ack(ack: &Message) -> Result<Lease, DhcpError> {
    let address = ack.yiaddr();
    if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
        return Err(DhcpError::Bad(format!(
            "ACK offers the unusable address {address}"
        )));
    }
    let opts = ack.opts();
    let prefix_len = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => {
            let p = crate::netif::prefix_len(*mask);
            // A mask must be contiguous ones.
            if crate::netif::netmask(p) != *mask {
                return Err(DhcpError::Bad(format!("non-contiguous subnet mask {mask}")));
            }
            p
        }
        _ => 24,
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied().filter(|r| !r.is_unspecified()),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let text = |code| match opts.get(code) {
        Some(DhcpOption::DomainName(s)) | Some(DhcpOption::Hostname(s)) => {
            Some(s.trim_end_matches('\0').to_string()).filter(|s| !s.is_empty())
        }
        _ => None,
    };
    let mtu = match opts.get(OptionCode::InterfaceMtu) {
        Some(DhcpOption::InterfaceMtu(m)) if *m >= 68 => Some(*m),
        _ => None,
    };
    let secs = |code| match opts.get(code) {
        Some(DhcpOption::AddressLeaseTime(s))
        | Some(DhcpOption::Renewal(s))
        | Some(DhcpOption::Rebinding(s)) => Some(*s),
        _ => None,
    };
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
        _ => None,
    };
    Ok(Lease {
        address,
        prefix_len,
        router,
        dns,
        domain_name: text(OptionCode::DomainName),
        hostname: text(OptionCode::Hostname),
        mtu,
        lease_secs: secs(OptionCode::AddressLeaseTime),
        renew_secs: secs(OptionCode::Renewal),
        server,
    })
}

/// An `AF_PACKET` socket bound to one interface, receiving IPv4 frames.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    interface: String,
}

impl PacketSocket {
    pub fn open(interface: &str, ifindex: u32) -> Result<Self, DhcpError> {
        let socket_err = |source| DhcpError::Socket {
            interface: interface.to_string(),
            source,
        };
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        if fd < 0 {
            return Err(socket_err(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(socket_err(io::Error::last_os_error()));
        }
        Ok(Self {
            fd,
            interface: interface.to_string(),
        })
    }

    fn io_err(&self, source: io::Error) -> DhcpError {
        DhcpError::Io {
            interface: self.interface.clone(),
            source,
        }
    }

    pub fn send(&self, frame: &[u8]) -> Result<(), DhcpError> {
        // SAFETY: the pointer and length describe `frame`.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(self.io_err(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Waits up to `timeout` for one frame.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, DhcpError> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(self.io_err(e));
        }
        if rc == 0 {
            return Ok(None);
        }
        // SAFETY: the buffer is writable for its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return Ok(None);
            }
            return Err(self.io_err(e));
        }
        Ok(Some(n as usize))
    }
}

/// One client transaction on the socket.
struct Transaction<'a> {
    sock: &'a PacketSocket,
    mac: [u8; 6],
    /// The IPv4 source: 0.0.0.0 until the client has an address.
    source: Ipv4Addr,
    xid: u32,
    config: &'a DhcpConfig,
    deadline: Instant,
}

impl Transaction<'_> {
    /// Sends `msg` (re-sending with backoff) until `accept` takes a reply or the deadline passes.
    fn exchange<T>(
        &self,
        msg: &Message,
        stage: &'static str,
        mut accept: impl FnMut(&Message) -> Option<T>,
    ) -> Result<T, DhcpError> {
        let frame = client_frame(self.mac, self.source, msg)?;
        let start = Instant::now();
        let mut interval = self.config.initial_retransmit;
        let mut sent = 0;
        let mut buf = vec![0u8; 2048];
        while Instant::now() < self.deadline {
            self.sock.send(&frame)?;
            sent += 1;
            let resend_at = (Instant::now() + interval).min(self.deadline);
            loop {
                let left = resend_at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if let Some(n) = self.sock.recv(&mut buf, left)?
                    && let Some(reply) = parse_server_frame(&buf[..n], self.xid, self.mac)
                    && let Some(v) = accept(&reply)
                {
                    return Ok(v);
                }
            }
            interval = (interval * 2).min(self.config.max_retransmit);
        }
        Err(DhcpError::NoAnswer {
            interface: self.sock.interface.clone(),
            stage,
            waited: start.elapsed(),
            sent,
        })
    }
}

enum AckOrNak {
    Ack(Box<Message>),
    Nak,
}

fn ack_or_nak(m: &Message) -> Option<AckOrNak> {
    match m.opts().msg_type() {
        Some(MessageType::Ack) => Some(AckOrNak::Ack(Box::new(m.clone()))),
        Some(MessageType::Nak) => Some(AckOrNak::Nak),
        _ => None,
    }
}

/// Runs DISCOVER/OFFER/REQUEST/ACK on the interface and returns the lease (not yet applied).
pub fn acquire(sock: &PacketSocket, mac: [u8; 6], config: &DhcpConfig) -> Result<Lease, DhcpError> {
    let deadline = Instant::now() + config.total_timeout;
    let mut naks = 0;
    loop {
        let xid = random_u32();
        let t = Transaction {
            sock,
            mac,
            source: Ipv4Addr::UNSPECIFIED,
            xid,
            config,
            deadline,
        };
        let offer = t.exchange(&discover(xid, mac), "offer", |m| {
            (m.opts().msg_type() == Some(MessageType::Offer)).then(|| m.clone())
        })?;
        match t.exchange(&request_for_offer(xid, mac, &offer), "ack", ack_or_nak)? {
            AckOrNak::Ack(ack) => return lease_from_ack(&ack),
            AckOrNak::Nak => {
                naks += 1;
                if naks >= 3 {
                    return Err(DhcpError::Refused { attempts: naks });
                }
            }
        }
    }
}

/// Renews `lease` (REQUEST with ciaddr). `Ok(None)` on NAK: the address must be given up.
pub fn renew(
    sock: &PacketSocket,
    mac: [u8; 6],
    lease: &Lease,
    config: &DhcpConfig,
) -> Result<Option<Lease>, DhcpError> {
    let xid = random_u32();
    let t = Transaction {
        sock,
        mac,
        source: lease.address,
        xid,
        config,
        deadline: Instant::now() + config.total_timeout,
    };
    match t.exchange(
        &request_renewal(xid, mac, lease.address),
        "renewal ack",
        ack_or_nak,
    )? {
        AckOrNak::Ack(ack) => lease_from_ack(&ack).map(Some),
        AckOrNak::Nak => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];

    /// A server's reply frame, as a switch would send it.
    fn server_frame(reply: &Message) -> Vec<u8> {
        let mut payload = Vec::new();
        reply.encode(&mut Encoder::new(&mut payload)).unwrap();
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], MAC)
            .ipv4([10, 0, 1, 1], [10, 0, 1, 5], 64)
            .udp(67, 68);
        let mut f = Vec::new();
        b.write(&mut f, &payload).unwrap();
        f
    }

    fn reply(req: &Message, kind: MessageType) -> Message {
        let mut m = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 1, 5),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            req.chaddr(),
        );
        m.set_opcode(Opcode::BootReply);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 1, 1)));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 1, 1)]));
        o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 0, 0, 2,
        )]));
        o.insert(DhcpOption::DomainName("ec2.internal".into()));
        o.insert(DhcpOption::InterfaceMtu(9001));
        o.insert(DhcpOption::AddressLeaseTime(3600));
        m
    }

    #[test]
    fn discover_frame_is_a_broadcast_dhcp_request() {
        let msg = discover(0x1234, MAC);
        let frame = client_frame(MAC, Ipv4Addr::UNSPECIFIED, &msg).unwrap();
        let p = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else {
            panic!()
        };
        assert_eq!(eth.destination(), [0xff; 6]);
        assert_eq!(eth.source(), MAC);
        let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
            panic!()
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (68, 67));
        let decoded = Message::decode(&mut Decoder::new(udp.payload())).unwrap();
        assert_eq!(decoded.xid(), 0x1234);
        assert_eq!(decoded.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(&decoded.chaddr()[..6], &MAC);
    }

    #[test]
    fn offer_request_ack() {
        let disc = discover(7, MAC);
        let offer = reply(&disc, MessageType::Offer);
        let got = parse_server_frame(&server_frame(&offer), 7, MAC).unwrap();
        assert_eq!(got.opts().msg_type(), Some(MessageType::Offer));
        let req = request_for_offer(7, MAC, &got);
        assert_eq!(
            req.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 1, 5)))
        );
        assert_eq!(
            req.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 1, 1)))
        );
        let ack = reply(&req, MessageType::Ack);
        let lease = lease_from_ack(&ack).unwrap();
        assert_eq!(
            lease,
            Lease {
                address: Ipv4Addr::new(10, 0, 1, 5),
                prefix_len: 24,
                router: Some(Ipv4Addr::new(10, 0, 1, 1)),
                dns: vec![Ipv4Addr::new(10, 0, 0, 2)],
                domain_name: Some("ec2.internal".into()),
                hostname: None,
                mtu: Some(9001),
                lease_secs: Some(3600),
                renew_secs: None,
                server: Some(Ipv4Addr::new(10, 0, 1, 1)),
            }
        );
        assert_eq!(lease.renew_after(), Some(Duration::from_secs(1800)));
    }

    #[test]
    fn replies_for_others_are_ignored() {
        let disc = discover(7, MAC);
        let offer = reply(&disc, MessageType::Offer);
        let frame = server_frame(&offer);
        assert!(parse_server_frame(&frame, 8, MAC).is_none());
        assert!(parse_server_frame(&frame, 7, [2, 0, 0, 0, 0, 9]).is_none());
        // Our own broadcast request is not a reply.
        let own = client_frame(MAC, Ipv4Addr::UNSPECIFIED, &disc).unwrap();
        assert!(parse_server_frame(&own, 7, MAC).is_none());
    }

    #[test]
    fn bad_acks() {
        let disc = discover(7, MAC);
        let mut ack = reply(&disc, MessageType::Ack);
        ack.opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)));
        assert!(lease_from_ack(&ack).is_err());
        let mut ack = reply(&disc, MessageType::Ack);
        ack.set_yiaddr(Ipv4Addr::UNSPECIFIED);
        assert!(lease_from_ack(&ack).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)) {
            let _ = parse_server_frame(&data, 1, MAC);
        }

        #[test]
        fn parse_garbage_dhcp_payload(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], MAC)
                .ipv4([10, 0, 1, 1], [10, 0, 1, 5], 64)
                .udp(67, 68);
            let mut f = Vec::new();
            b.write(&mut f, &payload).unwrap();
            if let Some(m) = parse_server_frame(&f, 1, MAC) {
                let _ = lease_from_ack(&m);
            }
        }
    }
}
