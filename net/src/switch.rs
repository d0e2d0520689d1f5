//! The switch's data path: one frame in from a port, a decision out.
//!
//! [`Switch`] owns the [`Model`] (what the control plane configured) and the data-path state
//! (connection tracking, flow logs, counters, the metadata service, per-port rate limits). It
//! does no I/O: [`Switch::handle_frame`] takes a frame that arrived on a port (with its
//! virtio-net header), may rewrite it in place, and says where it goes; frames the switch itself
//! answers with (ARP, DHCP, DNS, metadata) are queued and taken with [`Switch::take_generated`].
//! [`crate::runtime`] drives it from AF_PACKET sockets.
//!
//! The path of an IPv4 packet from an ENI, in order:
//! 1. parse and validate ([`crate::packet`]); anti-spoofing: the source MAC and source IP must
//!    be the ENI's (0.0.0.0 only for DHCP);
//! 2. the switch's own services, which security groups do not filter (as on AWS): DHCP,
//!    DNS at VPC base+2 / 169.254.169.253, the metadata service at 169.254.169.254;
//! 3. the route table of the ENI's subnet (longest prefix): `local` delivers to the ENI that has
//!    the destination address in the same VPC; an internet gateway route sends it to the host
//!    side through 1:1 NAT to the ENI's public address;
//! 4. policy: the source ENI's security groups (outbound), the source subnet's NACL (outbound),
//!    the destination subnet's NACL (inbound) and the destination ENI's security groups
//!    (inbound); NACLs only where the packet crosses a subnet boundary;
//! 5. TTL decremented, MACs rewritten (router MAC -> ENI MAC), forwarded whole (GSO packets stay
//!    one packet).
//!
//! The switch is every subnet's router: it answers ARP for the router, the DNS server, the
//! metadata service and every ENI address of the VPC with its own MAC, so all traffic comes to it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::PortId;
use crate::addr::MacAddr;
use crate::counters::{Counters, DropReason};
use crate::dhcp::{self, DhcpLease};
use crate::dns::{self, DnsZone};
use crate::flow_log::{Action, FlowLog};
use crate::imds::{METADATA_IPV4, MetadataService};
use crate::model::{Eni, Model, RouteTarget, private_domain};
use crate::packet::{self, Arp, Frame, FrameKind, Ipv4Info, VnetHdr};
use crate::policy::conntrack::{ConnKey, ConnTable};
use crate::policy::security_group;
use crate::policy::{Direction, L4, Packet4, Protocol};

/// The VPC router's MAC address (locally administered), the same in every subnet.
pub const ROUTER_MAC: MacAddr = MacAddr([0x02, 0x6b, 0x75, 0x6d, 0x6f, 0x01]);

/// Where a frame goes after [`Switch::handle_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (rewritten) input frame out of `port` with this virtio-net header.
    Forward(PortId, VnetHdr),
    /// Nothing more to send for it (dropped, or answered through `take_generated`).
    Consumed,
}

/// What a port is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRole {
    /// An ENI's port (TAP of a VM, or a veth of a namespace instance).
    Eni(String),
    /// The host side of the internet gateway emulation.
    Gateway,
}

/// A token bucket limiting packets per second.
#[derive(Debug, Clone)]
struct RateLimit {
    tokens: f64,
    last: Option<Instant>,
    rate: f64,
    burst: f64,
}

impl RateLimit {
    fn new(rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            tokens: burst,
            last: None,
            rate,
            burst,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// AWS limits packets to its DNS and metadata services to 1024 per second per ENI; kumo applies
/// that to every service the switch itself answers (ARP, DHCP, DNS, metadata).
const SERVICE_PPS: f64 = 1024.0;

#[derive(Debug)]
struct Port {
    role: PortRole,
    services: RateLimit,
}

/// DHCP lease time handed to instances.
pub const DEFAULT_LEASE_SECS: u32 = 3600;
/// How often flow logs are written (AWS's shortest aggregation interval is 60 s).
pub const DEFAULT_FLOW_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The VPC switch (see the module doc).
pub struct Switch {
    model: Model,
    ports: HashMap<PortId, Port>,
    conntrack: ConnTable,
    flow_log: FlowLog,
    flow_log_interval: Duration,
    next_flow_flush: Option<Instant>,
    counters: Counters,
    metadata: MetadataService,
    generated: Vec<(PortId, Vec<u8>)>,
    gateway_host_mac: Option<MacAddr>,
    lease_secs: u32,
    mtu: Option<u16>,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("ports", &self.ports.len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl Switch {
    pub fn new(model: Model) -> Switch {
        let flow_log = FlowLog::new(&model.account_id);
        Switch {
            model,
            ports: HashMap::new(),
            conntrack: ConnTable::default(),
            flow_log,
            flow_log_interval: DEFAULT_FLOW_LOG_INTERVAL,
            next_flow_flush: None,
            counters: Counters::default(),
            metadata: MetadataService::default(),
            generated: Vec::new(),
            gateway_host_mac: None,
            lease_secs: DEFAULT_LEASE_SECS,
            mtu: None,
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model, for control-plane changes (rules, ENIs). Changes apply to the next packet;
    /// see [`crate::policy::conntrack`] for how they affect flows already tracked.
    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    pub fn flow_log(&self) -> &FlowLog {
        &self.flow_log
    }

    pub fn flow_log_mut(&mut self) -> &mut FlowLog {
        &mut self.flow_log
    }

    /// Sets the flow-log aggregation interval.
    pub fn set_flow_log_interval(&mut self, interval: Duration) {
        self.flow_log_interval = interval;
    }

    pub fn metadata_mut(&mut self) -> &mut MetadataService {
        &mut self.metadata
    }

    pub fn set_lease_secs(&mut self, secs: u32) {
        self.lease_secs = secs;
    }

    /// Announces an interface MTU in DHCP (none by default).
    pub fn set_dhcp_mtu(&mut self, mtu: Option<u16>) {
        self.mtu = mtu;
    }

    /// Attaches a port. An ENI port's ENI must exist with `port == Some(port)`.
    pub fn add_port(&mut self, port: PortId, role: PortRole) {
        self.ports.insert(
            port,
            Port {
                role,
                services: RateLimit::new(SERVICE_PPS, SERVICE_PPS),
            },
        );
    }

    /// Detaches a port and forgets its flows and metadata.
    pub fn remove_port(&mut self, port: PortId) {
        self.ports.remove(&port);
        self.conntrack.remove_port(port);
        self.metadata.remove_instance(port);
    }

    pub fn port_role(&self, port: PortId) -> Option<&PortRole> {
        self.ports.get(&port).map(|p| &p.role)
    }

    /// The gateway port, if one is attached.
    pub fn gateway_port(&self) -> Option<PortId> {
        self.ports
            .iter()
            .find(|(_, p)| p.role == PortRole::Gateway)
            .map(|(id, _)| *id)
    }

    /// Frames the switch generated (ARP/DHCP/DNS/metadata answers, gateway ARP requests).
    pub fn take_generated(&mut self) -> Vec<(PortId, Vec<u8>)> {
        std::mem::take(&mut self.generated)
    }

    /// Runs timers: metadata retransmissions, conntrack expiry, flow-log flushes.
    pub fn poll(&mut self, now: Instant) {
        for (port, ip) in self.metadata.poll(now) {
            self.send_ip_to_eni(port, &ip);
        }
        self.conntrack.expire(now);
        match self.next_flow_flush {
            None => self.next_flow_flush = Some(now + self.flow_log_interval),
            Some(t) if now >= t => {
                self.flow_log.flush();
                self.next_flow_flush = Some(now + self.flow_log_interval);
            }
            _ => {}
        }
    }

    /// When [`Switch::poll`] next has work.
    pub fn poll_at(&mut self, now: Instant) -> Instant {
        let mut t = now + Duration::from_secs(1);
        if let Some(m) = self.metadata.poll_at(now) {
            t = t.min(m);
        }
        if let Some(f) = self.next_flow_flush {
            t = t.min(f);
        }
        t
    }

    /// Writes out pending flow-log records now.
    pub fn flush_flow_log(&mut self) {
        self.flow_log.flush();
    }

    fn drop_frame(&mut self, eni: &str, reason: DropReason, sentence: &str) -> Verdict {
        self.counters.drop(reason);
        tracing::debug!(eni, %reason, "{sentence}");
        self.flow_log.note_drop(eni, reason, sentence);
        Verdict::Consumed
    }

    /// Decides one frame that arrived on `in_port` (see the module doc).
    pub fn handle_frame(
        &mut self,
        now: Instant,
        in_port: PortId,
        vnet: &VnetHdr,
        buf: &mut [u8],
    ) -> Verdict {
        self.counters.rx_frames += 1;
        let Some(role) = self.ports.get(&in_port).map(|p| p.role.clone()) else {
            return self.drop_frame(
                "-",
                DropReason::UnknownPort,
                &format!("frame on unknown {in_port}"),
            );
        };
        let frame = match packet::parse_frame(buf, vnet) {
            Ok(f) => f,
            Err(r) => {
                let who = match &role {
                    PortRole::Eni(e) => e.clone(),
                    PortRole::Gateway => "gateway".into(),
                };
                return self.drop_frame(&who, r, &format!("malformed frame ({r}) on {in_port}"));
            }
        };
        match role {
            PortRole::Eni(eni_id) => self.frame_from_eni(now, in_port, &eni_id, vnet, buf, &frame),
            PortRole::Gateway => self.frame_from_gateway(now, in_port, vnet, buf, &frame),
        }
    }

    fn services_allowed(&mut self, port: PortId, now: Instant) -> bool {
        self.ports
            .get_mut(&port)
            .is_some_and(|p| p.services.allow(now))
    }

    fn frame_from_eni(
        &mut self,
        now: Instant,
        in_port: PortId,
        eni_id: &str,
        vnet: &VnetHdr,
        buf: &mut [u8],
        frame: &Frame,
    ) -> Verdict {
        let Ok(eni) = self.model.eni(eni_id).cloned() else {
            return self.drop_frame(
                eni_id,
                DropReason::UnknownPort,
                "port's ENI no longer exists",
            );
        };
        if frame.src_mac != eni.mac {
            return self.drop_frame(
                eni_id,
                DropReason::SpoofedMac,
                &format!(
                    "source MAC {} is not {}'s MAC {}",
                    frame.src_mac, eni.id, eni.mac
                ),
            );
        }
        match frame.kind {
            FrameKind::Arp(arp) => self.arp_from_eni(now, in_port, &eni, &arp),
            FrameKind::Ipv6 => {
                self.drop_frame(eni_id, DropReason::Ipv6, "IPv6 is not enabled in this VPC")
            }
            FrameKind::Ipv4(info) => {
                self.ipv4_from_eni(now, in_port, &eni, vnet, buf, frame, &info)
            }
        }
    }

    fn arp_from_eni(&mut self, now: Instant, in_port: PortId, eni: &Eni, arp: &Arp) -> Verdict {
        if arp.sender_ip != eni.private_ip && !arp.sender_ip.is_unspecified() {
            return self.drop_frame(
                &eni.id,
                DropReason::SpoofedIp,
                &format!(
                    "ARP from {} claims {}, not its address {}",
                    eni.id, arp.sender_ip, eni.private_ip
                ),
            );
        }
        if arp.operation != Arp::REQUEST {
            // Replies and announcements are not needed: the switch knows every address.
            self.counters.drop(DropReason::BadArp);
            return Verdict::Consumed;
        }
        if !self.services_allowed(in_port, now) {
            return self.drop_frame(&eni.id, DropReason::RateLimited, "ARP over 1024 packets/s");
        }
        if !self.answers_arp_for(eni, arp.target_ip) {
            self.counters.drop(DropReason::NoSuchAddress);
            return Verdict::Consumed;
        }
        self.reply_to_arp(in_port, arp, eni.mac)
    }

    /// Answers ARP request `arp` on `in_port` as the VPC router: `arp.target_ip` is at the
    /// router's MAC; the reply goes to `asker_mac`.
    fn reply_to_arp(&mut self, in_port: PortId, arp: &Arp, asker_mac: MacAddr) -> Verdict {
        let reply = Arp {
            operation: Arp::REPLY,
            sender_mac: ROUTER_MAC,
            sender_ip: arp.target_ip,
            target_mac: asker_mac,
            target_ip: arp.sender_ip,
        };
        self.generated
            .push((in_port, packet::build_arp(asker_mac, ROUTER_MAC, &reply)));
        self.counters.arp_replies += 1;
        Verdict::Consumed
    }

    /// Whether the router answers an ARP request from `eni` for `target`.
    fn answers_arp_for(&self, eni: &Eni, target: Ipv4Addr) -> bool {
        if target == eni.private_ip {
            return false; // duplicate address detection must see silence
        }
        if target == METADATA_IPV4 || target == dns::LINK_LOCAL_DNS {
            return true;
        }
        let Ok(subnet) = self.model.subnet(&eni.subnet_id) else {
            return false;
        };
        if !subnet.cidr.contains(&target) {
            return true; // off-subnet: the router is the way there
        }
        let vpc_dns = self.model.vpc(&eni.vpc_id).map(|v| v.dns_server()).ok();
        target == subnet.router()
            || Some(target) == vpc_dns
            || self.model.eni_by_ip(&eni.vpc_id, target).is_some()
    }

    #[allow(clippy::too_many_arguments)]
    fn ipv4_from_eni(
        &mut self,
        now: Instant,
        in_port: PortId,
        eni: &Eni,
        vnet: &VnetHdr,
        buf: &mut [u8],
        frame: &Frame,
        info: &Ipv4Info,
    ) -> Verdict {
        let pkt = info.pkt;
        let is_dhcp = matches!(
            pkt.l4,
            L4::Udp {
                src_port: 68,
                dst_port: 67
            }
        );
        if pkt.src != eni.private_ip && !(is_dhcp && pkt.src.is_unspecified()) {
            return self.drop_frame(
                &eni.id,
                DropReason::SpoofedIp,
                &format!(
                    "source {} is not {}'s address {}",
                    pkt.src, eni.id, eni.private_ip
                ),
            );
        }
        if frame.dst_mac != ROUTER_MAC && !frame.dst_mac.is_multicast() {
            return self.drop_frame(
                &eni.id,
                DropReason::WrongDestinationMac,
                &format!(
                    "frame to {} instead of the VPC router {}",
                    frame.dst_mac, ROUTER_MAC
                ),
            );
        }
        if is_dhcp {
            return self.dhcp(now, in_port, eni, buf, info);
        }
        let Ok(vpc) = self.model.vpc(&eni.vpc_id).cloned() else {
            return self.drop_frame(&eni.id, DropReason::NoRoute, "ENI's VPC no longer exists");
        };
        if pkt.dst == METADATA_IPV4 {
            return self.metadata_ingress(now, in_port, eni, vnet, buf, info);
        }
        if (pkt.dst == vpc.dns_server() || pkt.dst == dns::LINK_LOCAL_DNS)
            && matches!(
                pkt.l4,
                L4::Udp {
                    dst_port: dns::PORT,
                    ..
                }
            )
        {
            return self.dns(now, in_port, eni, vpc.cidr, buf, info);
        }
        if pkt.dst.is_broadcast() || pkt.dst.is_multicast() || frame.dst_mac.is_multicast() {
            return self.drop_frame(
                &eni.id,
                DropReason::Broadcast,
                &format!("broadcast/multicast to {} is not carried in a VPC", pkt.dst),
            );
        }
        if pkt.dst.is_link_local() {
            return self.drop_frame(
                &eni.id,
                DropReason::LinkLocal,
                &format!("nothing answers at {}", pkt.dst),
            );
        }
        let Ok(subnet) = self.model.subnet(&eni.subnet_id).cloned() else {
            return self.drop_frame(
                &eni.id,
                DropReason::NoRoute,
                "ENI's subnet no longer exists",
            );
        };
        if pkt.dst == subnet.broadcast_addr() {
            return self.drop_frame(
                &eni.id,
                DropReason::Broadcast,
                &format!("broadcast to {} is not carried in a VPC", pkt.dst),
            );
        }
        let route = self
            .model
            .route_table_for_subnet(&subnet)
            .and_then(|t| t.lookup(pkt.dst).cloned());
        let Some(route) = route else {
            return self.drop_frame(
                &eni.id,
                DropReason::NoRoute,
                &format!("no route to {} in {}'s route table", pkt.dst, subnet.id),
            );
        };
        match route.target {
            RouteTarget::Blackhole => self.drop_frame(
                &eni.id,
                DropReason::Blackhole,
                &format!("route {} to {} is a blackhole", route.destination, pkt.dst),
            ),
            RouteTarget::Local => {
                self.deliver_local(now, eni, &subnet.network_acl, &subnet.id, vnet, buf, info)
            }
            RouteTarget::InternetGateway(igw) => {
                self.route_to_gateway(now, eni, &igw, &subnet.network_acl, vnet, buf, info)
            }
        }
    }

    fn is_member(model: &Model, vpc: &str, sg: &str, ip: Ipv4Addr) -> bool {
        model.is_group_member(vpc, sg, ip)
    }

    /// The security-group check (with connection tracking) of one direction at one ENI.
    fn sg_check(
        &mut self,
        now: Instant,
        eni: &Eni,
        dir: Direction,
        pkt: &Packet4,
    ) -> Result<(), (DropReason, String)> {
        let port = eni.port.unwrap_or(PortId(u32::MAX));
        let key = ConnKey::new(port, dir, pkt);
        if self.conntrack.track_existing(&key, dir, pkt, now)
            || self.conntrack.is_related(port, dir, pkt, now)
        {
            return Ok(());
        }
        let groups: Vec<&crate::policy::security_group::SecurityGroup> = eni
            .security_groups
            .iter()
            .filter_map(|g| self.model.security_group(g).ok())
            .collect();
        let model = &self.model;
        security_group::evaluate(&groups, dir, pkt, |sg, ip| {
            Self::is_member(model, &eni.vpc_id, sg, ip)
        })
        .map_err(|s| (DropReason::SecurityGroup, s))?;
        self.conntrack
            .insert(key, dir, pkt, now)
            .map_err(|e| (DropReason::ConntrackFull, format!("{}: {e}", eni.id)))
    }

    fn nacl_check(
        &self,
        acl_id: &str,
        dir: Direction,
        pkt: &Packet4,
    ) -> Result<(), (DropReason, String)> {
        let acl = self
            .model
            .network_acl(acl_id)
            .map_err(|e| (DropReason::NetworkAcl, e.to_string()))?;
        acl.check(dir, pkt).map_err(|s| (DropReason::NetworkAcl, s))
    }

    fn segments(vnet: &VnetHdr, info: &Ipv4Info) -> u64 {
        if vnet.is_gso() && vnet.gso_size > 0 {
            let payload = info
                .ip_end
                .saturating_sub(usize::from(vnet.hdr_len).max(info.l4_offset));
            (payload.div_ceil(usize::from(vnet.gso_size))).max(1) as u64
        } else {
            1
        }
    }

    fn reject(
        &mut self,
        eni_id: &str,
        pkt: &Packet4,
        packets: u64,
        bytes: u64,
        reason: DropReason,
        sentence: &str,
    ) -> Verdict {
        self.flow_log
            .record(eni_id, pkt, packets, bytes, Action::Reject, Some(sentence));
        self.drop_frame(eni_id, reason, sentence)
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_local(
        &mut self,
        now: Instant,
        src: &Eni,
        src_acl: &str,
        src_subnet: &str,
        vnet: &VnetHdr,
        buf: &mut [u8],
        info: &Ipv4Info,
    ) -> Verdict {
        let pkt = info.pkt;
        let packets = Self::segments(vnet, info);
        let bytes = (info.ip_end - info.ip_offset) as u64;
        let Some(dst) = self.model.eni_by_ip(&src.vpc_id, pkt.dst).cloned() else {
            return self.drop_frame(
                &src.id,
                DropReason::NoSuchAddress,
                &format!("no ENI has {} in {}", pkt.dst, src.vpc_id),
            );
        };
        let Some(dst_port) = dst.port.filter(|p| self.ports.contains_key(p)) else {
            return self.drop_frame(
                &src.id,
                DropReason::NoSuchAddress,
                &format!("{} is not attached", dst.id),
            );
        };
        if let Err((r, s)) = self.sg_check(now, src, Direction::Outbound, &pkt) {
            return self.reject(&src.id, &pkt, packets, bytes, r, &s);
        }
        if dst.subnet_id != src_subnet {
            if let Err((r, s)) = self.nacl_check(src_acl, Direction::Outbound, &pkt) {
                return self.reject(&src.id, &pkt, packets, bytes, r, &s);
            }
            let dst_acl = self
                .model
                .subnet(&dst.subnet_id)
                .map(|s| s.network_acl.clone())
                .unwrap_or_default();
            if let Err((r, s)) = self.nacl_check(&dst_acl, Direction::Inbound, &pkt) {
                self.flow_log
                    .record(&src.id, &pkt, packets, bytes, Action::Accept, None);
                return self.reject(&dst.id, &pkt, packets, bytes, r, &s);
            }
        }
        if let Err((r, s)) = self.sg_check(now, &dst, Direction::Inbound, &pkt) {
            self.flow_log
                .record(&src.id, &pkt, packets, bytes, Action::Accept, None);
            return self.reject(&dst.id, &pkt, packets, bytes, r, &s);
        }
        if !packet::decrement_ttl(buf, info.ip_offset) {
            return self.drop_frame(
                &src.id,
                DropReason::TtlExpired,
                &format!("TTL expired routing to {}", pkt.dst),
            );
        }
        packet::set_macs(buf, dst.mac, ROUTER_MAC);
        self.flow_log
            .record(&src.id, &pkt, packets, bytes, Action::Accept, None);
        self.flow_log
            .record(&dst.id, &pkt, packets, bytes, Action::Accept, None);
        self.counters.forwarded += 1;
        Verdict::Forward(dst_port, *vnet)
    }

    // ----- the switch's own services -----

    fn send_ip_to_eni(&mut self, port: PortId, ip_packet: &[u8]) {
        let Some(PortRole::Eni(eni_id)) = self.ports.get(&port).map(|p| &p.role) else {
            return;
        };
        let Ok(eni) = self.model.eni(eni_id) else {
            return;
        };
        let frame = packet::ethernet_wrap(eni.mac, ROUTER_MAC, ip_packet);
        self.generated.push((port, frame));
    }

    fn dhcp(
        &mut self,
        now: Instant,
        in_port: PortId,
        eni: &Eni,
        buf: &[u8],
        info: &Ipv4Info,
    ) -> Verdict {
        if !self.services_allowed(in_port, now) {
            return self.drop_frame(&eni.id, DropReason::RateLimited, "DHCP over 1024 packets/s");
        }
        let Some(lease) = self.lease_for(eni) else {
            return self.drop_frame(&eni.id, DropReason::BadRequest, "ENI has no subnet");
        };
        let (a, b) = info.udp_payload();
        match dhcp::handle(&buf[a..b], &lease) {
            Ok(Some(reply)) => {
                let frame = packet::build_udp(
                    ROUTER_MAC,
                    reply.dst_mac,
                    (lease.router, dhcp::SERVER_PORT),
                    (reply.dst_ip, dhcp::CLIENT_PORT),
                    &reply.message,
                );
                tracing::debug!(eni = %eni.id, kind = ?reply.kind, "DHCP reply");
                self.generated.push((in_port, frame));
                self.counters.dhcp_replies += 1;
                Verdict::Consumed
            }
            Ok(None) => Verdict::Consumed,
            Err(e) => self.drop_frame(&eni.id, DropReason::BadRequest, &format!("DHCP: {e}")),
        }
    }

    /// The DHCP answer for an ENI.
    pub fn lease_for(&self, eni: &Eni) -> Option<DhcpLease> {
        let subnet = self.model.subnet(&eni.subnet_id).ok()?;
        let vpc = self.model.vpc(&eni.vpc_id).ok()?;
        let o = eni.private_ip.octets();
        Some(DhcpLease {
            mac: eni.mac,
            address: eni.private_ip,
            netmask: subnet.cidr.netmask(),
            router: subnet.router(),
            dns_servers: vec![vpc.dns_server()],
            hostname: format!("ip-{}-{}-{}-{}", o[0], o[1], o[2], o[3]),
            domain_name: private_domain(&self.model.region),
            lease_secs: self.lease_secs,
            broadcast: subnet.cidr.broadcast(),
            mtu: self.mtu,
        })
    }

    fn dns(
        &mut self,
        now: Instant,
        in_port: PortId,
        eni: &Eni,
        vpc_cidr: ipnet::Ipv4Net,
        buf: &[u8],
        info: &Ipv4Info,
    ) -> Verdict {
        if !self.services_allowed(in_port, now) {
            return self.drop_frame(&eni.id, DropReason::RateLimited, "DNS over 1024 packets/s");
        }
        let zone = DnsZone {
            vpc_cidr,
            region: self.model.region.clone(),
        };
        let (a, b) = info.udp_payload();
        match dns::handle(&buf[a..b], &zone) {
            Ok(answer) => {
                let pkt = info.pkt;
                let frame = packet::build_udp(
                    ROUTER_MAC,
                    eni.mac,
                    (pkt.dst, dns::PORT),
                    (pkt.src, pkt.src_port().unwrap_or(0)),
                    &answer,
                );
                self.generated.push((in_port, frame));
                self.counters.dns_replies += 1;
                Verdict::Consumed
            }
            Err(e) => self.drop_frame(&eni.id, DropReason::BadRequest, &format!("DNS: {e}")),
        }
    }

    fn metadata_ingress(
        &mut self,
        now: Instant,
        in_port: PortId,
        eni: &Eni,
        vnet: &VnetHdr,
        buf: &[u8],
        info: &Ipv4Info,
    ) -> Verdict {
        if self.metadata.instance(in_port).is_none() {
            return self.drop_frame(
                &eni.id,
                DropReason::NoMetadataService,
                &format!("no instance metadata registered for {}", eni.id),
            );
        }
        if info.pkt.protocol != Protocol::TCP {
            return self.drop_frame(
                &eni.id,
                DropReason::NoMetadataService,
                "metadata service speaks TCP only",
            );
        }
        if !self.services_allowed(in_port, now) {
            return self.drop_frame(
                &eni.id,
                DropReason::RateLimited,
                "metadata over 1024 packets/s",
            );
        }
        if vnet.is_gso() {
            return self.drop_frame(
                &eni.id,
                DropReason::BadRequest,
                "segmentation-offloaded packet to the metadata service",
            );
        }
        self.counters.metadata_packets += 1;
        let ip = &buf[info.ip_offset..info.ip_end];
        // With checksum offload the TCP checksum is partial; the service completes it.
        let replies = if vnet.flags & VnetHdr::F_NEEDS_CSUM != 0 {
            self.metadata.ingress_partial_checksum(in_port, ip, now)
        } else {
            self.metadata.ingress(in_port, ip, now)
        };
        for r in replies {
            let frame = packet::ethernet_wrap(eni.mac, ROUTER_MAC, &r);
            self.generated.push((in_port, frame));
        }
        Verdict::Consumed
    }

    // ----- the internet gateway -----

    #[allow(clippy::too_many_arguments)]
    fn route_to_gateway(
        &mut self,
        now: Instant,
        eni: &Eni,
        igw: &str,
        src_acl: &str,
        vnet: &VnetHdr,
        buf: &mut [u8],
        info: &Ipv4Info,
    ) -> Verdict {
        let pkt = info.pkt;
        let packets = Self::segments(vnet, info);
        let bytes = (info.ip_end - info.ip_offset) as u64;
        let attached = self
            .model
            .vpc(&eni.vpc_id)
            .ok()
            .and_then(|v| v.internet_gateway.clone());
        if attached.as_deref() != Some(igw) {
            return self.drop_frame(
                &eni.id,
                DropReason::NoInternetGateway,
                &format!(
                    "route to {} points at {igw}, which is not attached to {}",
                    pkt.dst, eni.vpc_id
                ),
            );
        }
        let Some(public) = eni.public_ip else {
            return self.drop_frame(
                &eni.id,
                DropReason::NoInternetGateway,
                &format!(
                    "{} ({}) has no public IPv4 address, so {igw} cannot translate traffic to {}",
                    eni.id, eni.private_ip, pkt.dst
                ),
            );
        };
        let Some(gw_port) = self.gateway_port() else {
            return self.drop_frame(
                &eni.id,
                DropReason::NoInternetGateway,
                "no gateway port on this switch",
            );
        };
        if let Err((r, s)) = self.sg_check(now, eni, Direction::Outbound, &pkt) {
            return self.reject(&eni.id, &pkt, packets, bytes, r, &s);
        }
        if let Err((r, s)) = self.nacl_check(src_acl, Direction::Outbound, &pkt) {
            return self.reject(&eni.id, &pkt, packets, bytes, r, &s);
        }
        let Some(host_mac) = self.gateway_host_mac else {
            self.arp_for_host(gw_port, public);
            return self.drop_frame(
                &eni.id,
                DropReason::NoInternetGateway,
                "host side of the internet gateway has not answered ARP yet",
            );
        };
        if !packet::decrement_ttl(buf, info.ip_offset) {
            return self.drop_frame(
                &eni.id,
                DropReason::TtlExpired,
                &format!("TTL expired routing to {}", pkt.dst),
            );
        }
        packet::rewrite_addr(buf, info, vnet, true, public);
        packet::set_macs(buf, host_mac, ROUTER_MAC);
        self.flow_log
            .record(&eni.id, &pkt, packets, bytes, Action::Accept, None);
        self.counters.forwarded += 1;
        Verdict::Forward(gw_port, *vnet)
    }

    fn arp_for_host(&mut self, gw_port: PortId, sender_ip: Ipv4Addr) {
        let Some(pool) = self.model.public_pool().cloned() else {
            return;
        };
        let req = Arp {
            operation: Arp::REQUEST,
            sender_mac: ROUTER_MAC,
            sender_ip,
            target_mac: MacAddr::ZERO,
            target_ip: pool.host_ip,
        };
        self.generated.push((
            gw_port,
            packet::build_arp(MacAddr::BROADCAST, ROUTER_MAC, &req),
        ));
    }

    /// Asks the host side for its MAC (call after attaching the gateway port).
    pub fn probe_gateway_host(&mut self) {
        if let (Some(port), Some(pool)) = (self.gateway_port(), self.model.public_pool().cloned()) {
            let sender = pool
                .cidr
                .hosts()
                .find(|ip| *ip != pool.host_ip)
                .unwrap_or(pool.host_ip);
            self.arp_for_host(port, sender);
        }
    }

    fn frame_from_gateway(
        &mut self,
        now: Instant,
        in_port: PortId,
        vnet: &VnetHdr,
        buf: &mut [u8],
        frame: &Frame,
    ) -> Verdict {
        let Some(pool) = self.model.public_pool().cloned() else {
            return self.drop_frame(
                "gateway",
                DropReason::NoInternetGateway,
                "no public range configured",
            );
        };
        match frame.kind {
            FrameKind::Arp(arp) => {
                if arp.sender_ip == pool.host_ip {
                    self.gateway_host_mac = Some(arp.sender_mac);
                }
                if arp.operation != Arp::REQUEST {
                    return Verdict::Consumed;
                }
                if !self.services_allowed(in_port, now) {
                    return self.drop_frame(
                        "gateway",
                        DropReason::RateLimited,
                        "ARP over 1024 packets/s",
                    );
                }
                if arp.target_ip == pool.host_ip
                    || self.model.eni_by_public_ip(arp.target_ip).is_none()
                {
                    self.counters.drop(DropReason::NoSuchAddress);
                    return Verdict::Consumed;
                }
                self.reply_to_arp(in_port, &arp, arp.sender_mac)
            }
            FrameKind::Ipv6 => self.drop_frame("gateway", DropReason::Ipv6, "IPv6 is not enabled"),
            FrameKind::Ipv4(info) => {
                if frame.dst_mac != ROUTER_MAC {
                    return self.drop_frame(
                        "gateway",
                        DropReason::WrongDestinationMac,
                        &format!(
                            "frame to {} instead of the gateway {}",
                            frame.dst_mac, ROUTER_MAC
                        ),
                    );
                }
                if info.pkt.src == pool.host_ip {
                    self.gateway_host_mac = Some(frame.src_mac);
                }
                self.inbound_from_gateway(now, vnet, buf, &info)
            }
        }
    }

    fn inbound_from_gateway(
        &mut self,
        now: Instant,
        vnet: &VnetHdr,
        buf: &mut [u8],
        info: &Ipv4Info,
    ) -> Verdict {
        let public_pkt = info.pkt;
        let Some(eni) = self.model.eni_by_public_ip(public_pkt.dst).cloned() else {
            return self.drop_frame(
                "gateway",
                DropReason::NoSuchAddress,
                &format!("no instance has public address {}", public_pkt.dst),
            );
        };
        let mut pkt = public_pkt;
        pkt.dst = eni.private_ip;
        let packets = Self::segments(vnet, info);
        let bytes = (info.ip_end - info.ip_offset) as u64;
        let vpc_igw = self
            .model
            .vpc(&eni.vpc_id)
            .ok()
            .and_then(|v| v.internet_gateway.clone());
        let Ok(subnet) = self.model.subnet(&eni.subnet_id).cloned() else {
            return self.drop_frame(
                &eni.id,
                DropReason::NoRoute,
                "ENI's subnet no longer exists",
            );
        };
        let route = self
            .model
            .route_table_for_subnet(&subnet)
            .and_then(|t| t.lookup(pkt.src).cloned());
        let via_igw = matches!(
            (&route, &vpc_igw),
            (Some(r), Some(igw)) if r.target == RouteTarget::InternetGateway(igw.clone())
        );
        if !via_igw {
            return self.drop_frame(
                &eni.id,
                DropReason::NoInternetGateway,
                &format!(
                    "{}'s route table has no route to {} through an attached internet gateway",
                    subnet.id, pkt.src
                ),
            );
        }
        let Some(dst_port) = eni.port.filter(|p| self.ports.contains_key(p)) else {
            return self.drop_frame(
                &eni.id,
                DropReason::NoSuchAddress,
                &format!("{} is not attached", eni.id),
            );
        };
        if let Err((r, s)) = self.nacl_check(&subnet.network_acl, Direction::Inbound, &pkt) {
            return self.reject(&eni.id, &pkt, packets, bytes, r, &s);
        }
        if let Err((r, s)) = self.sg_check(now, &eni, Direction::Inbound, &pkt) {
            return self.reject(&eni.id, &pkt, packets, bytes, r, &s);
        }
        if !packet::decrement_ttl(buf, info.ip_offset) {
            return self.drop_frame(&eni.id, DropReason::TtlExpired, "TTL expired");
        }
        packet::rewrite_addr(buf, info, vnet, false, eni.private_ip);
        packet::set_macs(buf, eni.mac, ROUTER_MAC);
        self.flow_log
            .record(&eni.id, &pkt, packets, bytes, Action::Accept, None);
        self.counters.forwarded += 1;
        Verdict::Forward(dst_port, *vnet)
    }
}
