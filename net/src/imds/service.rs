//! Per-port TCP termination of `169.254.169.254:80` with smoltcp, and the [`MetadataService`]
//! the switch drives.
//!
//! Each port with an instance gets its own smoltcp [`Interface`] (medium IP, address
//! 169.254.169.254/32), its own sockets and its own [`TokenStore`], so nothing one port sends can
//! reach another port's connections, tokens or metadata, whatever addresses the guests use.
//!
//! Per connection: the request head is collected up to [`ImdsLimits::max_request_bytes`] and
//! must be complete within [`ImdsLimits::request_timeout`] of the SYN (slowloris clients are
//! reset); the response is written, the connection closed (`Connection: close`, as EC2 does),
//! and anything the client still sends is discarded. A connection lives at most
//! [`ImdsLimits::connection_timeout`]. At most [`ImdsLimits::max_connections_per_port`]
//! connections exist per port; further SYNs are answered with RST. Every drop is counted in
//! [`ImdsStats`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpProtocol, Ipv4Packet, TcpPacket,
};

use crate::PortId;

use super::InstanceMetadata;
use super::handler::{self, MetadataResponse};
use super::http::{self, HttpParseError, ParseStatus};
use super::tokens::{TokenStore, random_bytes};

/// The metadata service's address.
pub const METADATA_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The metadata service's TCP port.
pub const METADATA_PORT: u16 = 80;

/// MTU of the service's side of a port (the VPC's standard 1500 bytes).
const MTU: usize = 1500;
/// Receive window per connection; the head is copied out as it arrives.
const SOCKET_RX_BYTES: usize = 4 * 1024;
/// Send buffer per connection; larger responses are fed in as it drains.
const SOCKET_TX_BYTES: usize = 16 * 1024;
/// Retransmission give-up time of a connection's TCP socket.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// Resource limits per port; every one bounds memory or time a guest can make kumo spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsLimits {
    /// Most simultaneous TCP connections to the service from one port; further SYNs are
    /// answered with RST and counted.
    pub max_connections_per_port: usize,
    /// Largest request head (request line + headers) accepted; larger gets 400 and a close.
    pub max_request_bytes: usize,
    /// Time a connection may take from SYN to a complete request head before it is reset.
    pub request_timeout: Duration,
    /// Longest a connection may live in all (a client that never reads its response).
    pub connection_timeout: Duration,
    /// Most live IMDSv2 tokens per port; the one expiring soonest is forgotten to make room.
    pub max_tokens_per_port: usize,
}

impl Default for ImdsLimits {
    fn default() -> Self {
        Self {
            max_connections_per_port: 32,
            max_request_bytes: 8 * 1024,
            request_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(30),
            max_tokens_per_port: 1024,
        }
    }
}

/// Counters of what the service did and why it dropped things.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImdsStats {
    /// IPv4 packets handed to [`MetadataService::ingress`].
    pub packets_in: u64,
    /// IPv4 packets returned to the switch.
    pub packets_out: u64,
    /// Packets dropped because their port has no instance.
    pub dropped_unknown_port: u64,
    /// Packets dropped because they were truncated or had a bad IPv4 header or TCP checksum.
    pub dropped_malformed: u64,
    /// Packets dropped because they were IPv4 fragments (metadata requests never need them).
    pub dropped_fragments: u64,
    /// Packets dropped because they were not TCP to 169.254.169.254:80.
    pub dropped_not_metadata: u64,
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// SYNs refused (RST) because the port had `max_connections_per_port` connections.
    pub connections_refused: u64,
    /// Connections reset because the request head did not arrive within `request_timeout`
    /// or the connection outlived `connection_timeout`.
    pub connections_timed_out: u64,
    /// Requests answered 400 because the head was malformed or too large.
    pub requests_malformed: u64,
    /// Responses sent, by HTTP status.
    pub responses_by_status: BTreeMap<u16, u64>,
    /// IMDSv2 tokens issued.
    pub tokens_issued: u64,
}

impl ImdsStats {
    /// Responses sent, all statuses together.
    pub fn responses(&self) -> u64 {
        self.responses_by_status.values().sum()
    }
}

/// The instance metadata service for every port of one switch.
pub struct MetadataService {
    limits: ImdsLimits,
    ports: HashMap<PortId, PortEndpoint>,
    /// The `Instant` that smoltcp's clock counts from (the first time the service saw).
    epoch: Option<Instant>,
    stats: ImdsStats,
}

impl std::fmt::Debug for MetadataService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataService")
            .field("limits", &self.limits)
            .field("ports", &self.ports.keys().collect::<Vec<_>>())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Default for MetadataService {
    fn default() -> Self {
        Self::new(ImdsLimits::default())
    }
}

impl MetadataService {
    /// A service with no instances yet.
    pub fn new(limits: ImdsLimits) -> Self {
        Self {
            limits,
            ports: HashMap::new(),
            epoch: None,
            stats: ImdsStats::default(),
        }
    }

    /// The limits this service enforces.
    pub fn limits(&self) -> &ImdsLimits {
        &self.limits
    }

    /// Serves `metadata` to `port` from now on. Replacing a port's metadata keeps its open
    /// connections and the tokens of the same instance id (options such as `HttpTokens` change
    /// at once, as `ModifyInstanceMetadataOptions` does on EC2); tokens of another instance id
    /// stop working.
    pub fn set_instance(&mut self, port: PortId, metadata: InstanceMetadata) {
        match self.ports.get_mut(&port) {
            Some(endpoint) => {
                endpoint.tokens.retain_instance(&metadata.instance_id);
                endpoint.metadata = metadata;
            }
            None => {
                let endpoint = PortEndpoint::new(metadata, &self.limits);
                self.ports.insert(port, endpoint);
            }
        }
    }

    /// Forgets `port`: its connections (without sending anything), tokens and metadata.
    pub fn remove_instance(&mut self, port: PortId) {
        self.ports.remove(&port);
    }

    /// The metadata served to `port`, if any.
    pub fn instance(&self, port: PortId) -> Option<&InstanceMetadata> {
        self.ports.get(&port).map(|endpoint| &endpoint.metadata)
    }

    /// Handles one IPv4 packet that arrived on `port` for 169.254.169.254; returns the IPv4
    /// packets to send back out of `port`. Anything that is not a well-formed TCP segment to
    /// 169.254.169.254:80 with valid checksums is dropped and counted.
    pub fn ingress(&mut self, port: PortId, ipv4_packet: &[u8], now: Instant) -> Vec<Vec<u8>> {
        self.ingress_packet(port, ipv4_packet.to_vec(), now)
    }

    /// Like [`Self::ingress`], for a packet whose TCP checksum the guest left to offload
    /// (received with `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the field holds only the pseudo-header
    /// sum). The service computes the checksum itself before the packet enters its TCP stack;
    /// the IPv4 header checksum is still verified.
    pub fn ingress_partial_checksum(
        &mut self,
        port: PortId,
        ipv4_packet: &[u8],
        now: Instant,
    ) -> Vec<Vec<u8>> {
        let mut packet = ipv4_packet.to_vec();
        fill_tcp_checksum(&mut packet);
        self.ingress_packet(port, packet, now)
    }

    fn ingress_packet(&mut self, port: PortId, packet: Vec<u8>, now: Instant) -> Vec<Vec<u8>> {
        self.stats.packets_in += 1;
        let Some(endpoint) = self.ports.get_mut(&port) else {
            self.stats.dropped_unknown_port += 1;
            tracing::debug!(%port, "imds: packet from a port without an instance dropped");
            return Vec::new();
        };
        let syn_from = match classify(&packet) {
            Ok(syn_from) => syn_from,
            Err(reason) => {
                match reason {
                    Drop::Malformed => self.stats.dropped_malformed += 1,
                    Drop::Fragment => self.stats.dropped_fragments += 1,
                    Drop::NotMetadata => self.stats.dropped_not_metadata += 1,
                }
                tracing::debug!(%port, ?reason, "imds: packet dropped");
                return Vec::new();
            }
        };
        if let Some(peer) = syn_from {
            if endpoint.has_connection_from(peer) {
                // A retransmitted SYN belongs to the connection it opened, not to the listener
                // (which smoltcp might otherwise offer it to first).
                endpoint.drop_listener();
            } else if endpoint.listener.is_none() {
                self.stats.connections_refused += 1;
                tracing::debug!(%port, "imds: connection limit reached; SYN refused");
            }
        }
        let timestamp = smol_time(&mut self.epoch, now);
        endpoint.device.rx.push_back(packet);
        endpoint.run(&self.limits, &mut self.stats, now, timestamp);
        let out = std::mem::take(&mut endpoint.device.tx);
        self.stats.packets_out += out.len() as u64;
        out
    }

    /// Runs timers of every port (retransmissions, request and connection deadlines); returns
    /// packets to send, each with the port it goes out of.
    pub fn poll(&mut self, now: Instant) -> Vec<(PortId, Vec<u8>)> {
        let timestamp = smol_time(&mut self.epoch, now);
        let mut out = Vec::new();
        for (port, endpoint) in &mut self.ports {
            endpoint.run(&self.limits, &mut self.stats, now, timestamp);
            out.extend(endpoint.device.tx.drain(..).map(|packet| (*port, packet)));
        }
        self.stats.packets_out += out.len() as u64;
        out
    }

    /// When [`Self::poll`] next has work to do (`None`: not until a packet arrives). A time at
    /// or before `now` means "poll now".
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let timestamp = smol_time(&mut self.epoch, now);
        let epoch = self.epoch.unwrap_or(now);
        self.ports
            .values_mut()
            .filter_map(|endpoint| {
                let smol = endpoint
                    .iface
                    .poll_at(timestamp, &endpoint.sockets)
                    .map(|at| epoch + Duration::from_micros(at.total_micros().max(0) as u64));
                let deadline = endpoint
                    .connections
                    .iter()
                    .map(|conn| conn.deadline(&self.limits))
                    .min();
                match (smol, deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .min()
            .map(|at| at.max(now))
    }

    /// Counters since the service started.
    pub fn stats(&self) -> &ImdsStats {
        &self.stats
    }

    /// Open connections on `port` (the listening socket not included).
    pub fn connection_count(&self, port: PortId) -> usize {
        self.ports
            .get(&port)
            .map_or(0, |endpoint| endpoint.connections.len())
    }
}

/// Converts `now` to smoltcp's clock, which counts from the first time the service saw and
/// never goes backwards.
fn smol_time(epoch: &mut Option<Instant>, now: Instant) -> smoltcp::time::Instant {
    let epoch = *epoch.get_or_insert(now);
    let since = now.saturating_duration_since(epoch);
    smoltcp::time::Instant::from_micros(since.as_micros().min(i64::MAX as u128) as i64)
}

/// Why `classify` refused a packet.
#[derive(Debug, Clone, Copy)]
enum Drop {
    Malformed,
    Fragment,
    NotMetadata,
}

/// Checks that `packet` is a well-formed, unfragmented IPv4 TCP segment to
/// 169.254.169.254:80 with valid checksums; if it is a SYN without ACK, returns the sender's
/// endpoint.
fn classify(packet: &[u8]) -> Result<Option<IpEndpoint>, Drop> {
    let ip = Ipv4Packet::new_checked(packet).map_err(|_| Drop::Malformed)?;
    if !ip.verify_checksum() {
        return Err(Drop::Malformed);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(Drop::Fragment);
    }
    if ip.dst_addr() != METADATA_IPV4 || ip.next_header() != IpProtocol::Tcp {
        return Err(Drop::NotMetadata);
    }
    let tcp = TcpPacket::new_checked(ip.payload()).map_err(|_| Drop::Malformed)?;
    if !tcp.verify_checksum(
        &IpAddress::Ipv4(ip.src_addr()),
        &IpAddress::Ipv4(ip.dst_addr()),
    ) {
        return Err(Drop::Malformed);
    }
    if tcp.dst_port() != METADATA_PORT {
        return Err(Drop::NotMetadata);
    }
    Ok((tcp.syn() && !tcp.ack())
        .then(|| IpEndpoint::new(IpAddress::Ipv4(ip.src_addr()), tcp.src_port())))
}

/// Writes the full TCP checksum into `packet` if it is an unfragmented IPv4 TCP segment
/// (anything else is left for `classify` to refuse).
fn fill_tcp_checksum(packet: &mut [u8]) {
    let Ok(ip) = Ipv4Packet::new_checked(&*packet) else {
        return;
    };
    if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
        return;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let (header_len, total_len) = (usize::from(ip.header_len()), usize::from(ip.total_len()));
    let Some(segment) = packet.get_mut(header_len..total_len) else {
        return;
    };
    if let Ok(mut tcp) = TcpPacket::new_checked(segment) {
        tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
    }
}

/// One port's endpoint: its instance, tokens, TCP/IP stack and connections.
struct PortEndpoint {
    metadata: InstanceMetadata,
    tokens: TokenStore,
    iface: Interface,
    device: PacketQueue,
    sockets: SocketSet<'static>,
    /// The socket listening for the next SYN (None while the port is at its connection limit).
    listener: Option<SocketHandle>,
    connections: Vec<Connection>,
}

impl PortEndpoint {
    fn new(metadata: InstanceMetadata, limits: &ImdsLimits) -> Self {
        let mut device = PacketQueue::default();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = u64::from_le_bytes(random_bytes());
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // Cannot fail: a new interface has no addresses and room for several.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(METADATA_IPV4), 32));
        });
        // Replies go back to whatever address the guest used; with medium IP the route only
        // has to exist (there is no next-hop resolution).
        let _ = iface.routes_mut().add_default_ipv4_route(METADATA_IPV4);
        let mut endpoint = Self {
            metadata,
            tokens: TokenStore::new(limits.max_tokens_per_port),
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            listener: None,
            connections: Vec::new(),
        };
        endpoint.ensure_listener(limits);
        endpoint
    }

    /// Keeps one listening socket while the port is under its connection limit.
    fn ensure_listener(&mut self, limits: &ImdsLimits) {
        if self.listener.is_some() || self.connections.len() >= limits.max_connections_per_port {
            return;
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; SOCKET_RX_BYTES]),
            tcp::SocketBuffer::new(vec![0; SOCKET_TX_BYTES]),
        );
        socket.set_ack_delay(None);
        socket.set_nagle_enabled(false);
        socket.set_timeout(Some(TCP_TIMEOUT.into()));
        if socket.listen(METADATA_PORT).is_ok() {
            self.listener = Some(self.sockets.add(socket));
        }
    }

    /// Whether a connection from `peer` exists.
    fn has_connection_from(&self, peer: IpEndpoint) -> bool {
        self.connections.iter().any(|conn| {
            self.sockets
                .get::<tcp::Socket>(conn.handle)
                .remote_endpoint()
                == Some(peer)
        })
    }

    /// Removes the listening socket (the next `run` listens anew).
    fn drop_listener(&mut self) {
        if let Some(handle) = self.listener.take() {
            self.sockets.remove(handle);
        }
    }

    /// Processes queued ingress, serves connections and emits what is due, until quiet.
    fn run(
        &mut self,
        limits: &ImdsLimits,
        stats: &mut ImdsStats,
        now: Instant,
        timestamp: smoltcp::time::Instant,
    ) {
        // Each round either moves a connection forward or stops; a handful always suffices
        // (receive -> respond -> close), the bound only guards against a logic error spinning.
        for _ in 0..8 {
            self.iface
                .poll(timestamp, &mut self.device, &mut self.sockets);
            self.adopt_new_connection(limits, stats, now);
            if !self.serve_connections(limits, stats, now) {
                break;
            }
        }
    }

    /// Turns the listener into a connection once it has taken a SYN, and listens anew.
    fn adopt_new_connection(&mut self, limits: &ImdsLimits, stats: &mut ImdsStats, now: Instant) {
        let Some(handle) = self.listener else {
            self.ensure_listener(limits);
            return;
        };
        if self.sockets.get::<tcp::Socket>(handle).state() == tcp::State::Listen {
            return;
        }
        stats.connections_accepted += 1;
        self.connections.push(Connection {
            handle,
            opened_at: now,
            request: Vec::new(),
            phase: Phase::Receiving,
            outgoing: Vec::new(),
        });
        self.listener = None;
        self.ensure_listener(limits);
    }

    /// Moves every connection forward; returns whether any socket got something to send.
    fn serve_connections(
        &mut self,
        limits: &ImdsLimits,
        stats: &mut ImdsStats,
        now: Instant,
    ) -> bool {
        let mut progressed = false;
        let mut index = 0;
        while index < self.connections.len() {
            let conn = &mut self.connections[index];
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            let finished = match socket.state() {
                // Back to Listen: the handshake was reset (smoltcp reuses the socket).
                tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen => true,
                _ if now >= conn.deadline(limits) => {
                    stats.connections_timed_out += 1;
                    tracing::debug!(phase = ?conn.phase, "imds: connection timed out; reset");
                    socket.abort();
                    progressed = true;
                    false
                }
                _ => {
                    progressed |=
                        conn.serve(socket, &self.metadata, &mut self.tokens, limits, stats, now);
                    false
                }
            };
            if finished {
                let conn = self.connections.swap_remove(index);
                self.sockets.remove(conn.handle);
                self.ensure_listener(limits);
            } else {
                index += 1;
            }
        }
        progressed
    }
}

/// Where a connection is in its one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Collecting the request head.
    Receiving,
    /// Feeding the response into the socket.
    Responding,
    /// Response queued and FIN requested; discarding whatever the client still sends.
    Closing,
}

struct Connection {
    handle: SocketHandle,
    opened_at: Instant,
    request: Vec<u8>,
    phase: Phase,
    /// Response bytes not yet in the socket's send buffer.
    outgoing: Vec<u8>,
}

impl Connection {
    fn deadline(&self, limits: &ImdsLimits) -> Instant {
        match self.phase {
            Phase::Receiving => self.opened_at + limits.request_timeout,
            Phase::Responding | Phase::Closing => self.opened_at + limits.connection_timeout,
        }
    }

    /// Moves this connection forward; returns whether it queued something to send.
    fn serve(
        &mut self,
        socket: &mut tcp::Socket<'static>,
        metadata: &InstanceMetadata,
        tokens: &mut TokenStore,
        limits: &ImdsLimits,
        stats: &mut ImdsStats,
        now: Instant,
    ) -> bool {
        let mut progressed = false;
        if self.phase == Phase::Receiving {
            let room = limits.max_request_bytes.saturating_sub(self.request.len());
            if socket.can_recv() {
                // Take at most one byte past the limit: enough to know the head is too large.
                let request = &mut self.request;
                let _ = socket.recv(|data| {
                    let take = data.len().min(room + 1);
                    request.extend_from_slice(&data[..take]);
                    (take, ())
                });
            }
            match http::parse_request(&self.request, limits.max_request_bytes) {
                Ok(ParseStatus::Complete { request, .. }) => {
                    let response = handler::handle(&request, metadata, tokens, now);
                    if request.method == "PUT" && response.status == 200 {
                        stats.tokens_issued += 1;
                    }
                    self.respond(socket, &response, request.method == "HEAD", stats);
                }
                Ok(ParseStatus::Incomplete) if socket.state() != tcp::State::CloseWait => {}
                Ok(ParseStatus::Incomplete) => {
                    // The client half-closed before finishing its request: nothing to answer.
                    socket.close();
                    self.phase = Phase::Closing;
                }
                Err(error) => {
                    stats.requests_malformed += 1;
                    tracing::debug!(%error, "imds: bad request");
                    if matches!(error, HttpParseError::TooLarge { .. }) {
                        tracing::debug!("imds: request head over the size limit");
                    }
                    self.respond(socket, &MetadataResponse::error(400), false, stats);
                }
            }
            self.request.shrink_to_fit();
        }
        if self.phase == Phase::Responding {
            if !self.outgoing.is_empty()
                && socket.can_send()
                && let Ok(sent) = socket.send_slice(&self.outgoing)
            {
                self.outgoing.drain(..sent);
                progressed |= sent > 0;
            }
            if self.outgoing.is_empty() {
                socket.close();
                self.phase = Phase::Closing;
                progressed = true;
            }
        }
        if self.phase == Phase::Closing {
            // Discard what the client still sends, so the window stays open until it closes.
            while socket.can_recv() {
                if socket.recv(|data| (data.len(), ())).is_err() {
                    break;
                }
            }
        }
        progressed
    }

    fn respond(
        &mut self,
        socket: &mut tcp::Socket<'static>,
        response: &MetadataResponse,
        head_only: bool,
        stats: &mut ImdsStats,
    ) {
        *stats
            .responses_by_status
            .entry(response.status)
            .or_default() += 1;
        if let Some(hop_limit) = response.hop_limit {
            socket.set_hop_limit(Some(hop_limit));
        }
        self.outgoing = http::write_response(response, SystemTime::now(), head_only);
        self.request = Vec::new();
        self.phase = Phase::Responding;
    }
}

/// A smoltcp device over two queues of IPv4 packets: what the switch handed in, and what the
/// stack wants sent back.
#[derive(Default)]
struct PacketQueue {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct RxPacket(Vec<u8>);

struct TxPacket<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for RxPacket {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl phy::TxToken for TxPacket<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut packet = vec![0; len];
        let result = f(&mut packet);
        self.0.push(packet);
        result
    }
}

impl Device for PacketQueue {
    type RxToken<'a> = RxPacket;
    type TxToken<'a> = TxPacket<'a>;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxPacket(packet), TxPacket(&mut self.tx)))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(TxPacket(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        caps
    }
}
