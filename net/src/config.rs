//! The JSON description of a switch: VPCs with their subnets, security groups, network ACLs and
//! route tables; the internet gateway's host side; and the ports (netdevs) with their ENIs and the
//! instance metadata served to each. `examples/switch.rs` runs a switch from such a file, and the
//! tests build their topologies with it. The format is documented in that example's top doc.
//!
//! Ids given in the file are used as they are (so tests and other tools can refer to them);
//! missing ids are generated EC2-style. Security groups may be referred to by id or by name
//! within their VPC (`default` is every VPC's default group).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::PortId;
use crate::addr::MacAddr;
use crate::imds::{
    HttpEndpoint, HttpTokens, InstanceMetadata, NetworkInterfaceMetadata, PublicKey,
    SecurityGroupRef,
};
use crate::model::{EniRequest, Model, ModelError, PublicPool, RouteTarget, private_dns_name};
use crate::policy::nacl::{NaclEntry, RuleAction};
use crate::policy::security_group::{Peer, SgRule};
use crate::policy::{Direction, Protocol, ProtocolParseError};
use crate::switch::{PortRole, Switch};

/// Errors in a switch description.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{context}: {source}")]
    Model {
        context: String,
        #[source]
        source: ModelError,
    },
    #[error("{context}: {source}")]
    Protocol {
        context: String,
        #[source]
        source: ProtocolParseError,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("flow log format: {0}")]
    Format(#[from] crate::flow_log::FormatError),
    #[error("opening {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn ctx<T>(r: Result<T, ModelError>, context: impl FnOnce() -> String) -> Result<T, ConfigError> {
    r.map_err(|source| ConfigError::Model {
        context: context(),
        source,
    })
}

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default = "default_account")]
    pub account_id: String,
    #[serde(default)]
    pub vpcs: Vec<VpcConfig>,
    #[serde(default)]
    pub internet_gateway: Option<GatewayConfig>,
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    #[serde(default)]
    pub flow_log: Option<FlowLogConfig>,
    #[serde(default)]
    pub dhcp_lease_secs: Option<u32>,
    /// Interface MTU announced by DHCP (option 26); none by default.
    #[serde(default)]
    pub dhcp_mtu: Option<u16>,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_account() -> String {
    "123456789012".into()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcConfig {
    #[serde(default)]
    pub id: Option<String>,
    pub cidr: Ipv4Net,
    #[serde(default)]
    pub subnets: Vec<SubnetConfig>,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroupConfig>,
    /// Extra inbound/outbound rules for the VPC's `default` group (added to its defaults).
    #[serde(default)]
    pub default_security_group: Option<SecurityGroupRulesConfig>,
    #[serde(default)]
    pub network_acls: Vec<NetworkAclConfig>,
    #[serde(default)]
    pub route_tables: Vec<RouteTableConfig>,
    /// Extra routes for the main route table.
    #[serde(default)]
    pub main_routes: Vec<RouteConfig>,
    /// Attach an internet gateway (`true`, or its id).
    #[serde(default)]
    pub internet_gateway: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetConfig {
    #[serde(default)]
    pub id: Option<String>,
    pub cidr: Ipv4Net,
    #[serde(default = "default_az")]
    pub availability_zone: String,
    /// A NACL id of this VPC's `network_acls` (default: the VPC's default NACL).
    #[serde(default)]
    pub network_acl: Option<String>,
    /// A route table id of this VPC's `route_tables` (default: the main table).
    #[serde(default)]
    pub route_table: Option<String>,
    #[serde(default)]
    pub map_public_ip_on_launch: bool,
}

fn default_az() -> String {
    "us-east-1a".into()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupRulesConfig {
    #[serde(default)]
    pub ingress: Vec<SgRuleConfig>,
    #[serde(default)]
    pub egress: Option<Vec<SgRuleConfig>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupConfig {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub ingress: Vec<SgRuleConfig>,
    /// Outbound rules; omitted = EC2's default (all traffic to 0.0.0.0/0); `[]` = none.
    #[serde(default)]
    pub egress: Option<Vec<SgRuleConfig>>,
}

/// `{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/16"}`; `port` sets both
/// ends; `group` (id or name) instead of `cidr` refers to a security group.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgRuleConfig {
    pub protocol: String,
    #[serde(default)]
    pub from_port: Option<i32>,
    #[serde(default)]
    pub to_port: Option<i32>,
    #[serde(default)]
    pub port: Option<i32>,
    #[serde(default)]
    pub cidr: Option<Ipv4Net>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAclConfig {
    #[serde(default)]
    pub id: Option<String>,
    /// Entries; a custom NACL with none denies everything.
    #[serde(default)]
    pub entries: Vec<NaclEntryConfig>,
}

/// `{"rule_number": 100, "egress": false, "protocol": "tcp", "port_range": [22, 22],
/// "cidr": "0.0.0.0/0", "action": "allow"}`; `icmp: [type, code]` for ICMP (-1 = any).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NaclEntryConfig {
    pub rule_number: u16,
    #[serde(default)]
    pub egress: bool,
    pub protocol: String,
    #[serde(default)]
    pub port_range: Option<(u16, u16)>,
    #[serde(default)]
    pub icmp: Option<(i16, i16)>,
    pub cidr: Ipv4Net,
    pub action: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTableConfig {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// `{"destination": "0.0.0.0/0", "target": "igw"}` (`igw` = the VPC's internet gateway, or an
/// `igw-...` id, or `blackhole`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub destination: Ipv4Net,
    pub target: String,
}

/// The host side of the internet gateway emulation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The switch-side netdev (one end of a veth whose other end carries `host_ip`).
    pub netdev: String,
    /// The host's address on the other end.
    pub host_ip: Ipv4Addr,
    /// The host-only range public addresses come from (contains `host_ip`).
    pub public_cidr: Ipv4Net,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// The TAP or veth netdev carrying the ENI's frames.
    pub netdev: String,
    #[serde(default)]
    pub eni_id: Option<String>,
    /// Subnet id.
    pub subnet: String,
    #[serde(default)]
    pub mac: Option<MacAddr>,
    #[serde(default)]
    pub private_ip: Option<Ipv4Addr>,
    /// Security groups by id or name (default: the VPC's default group).
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub public_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub associate_public_ip: Option<bool>,
    /// The instance behind the ENI, for the metadata service.
    #[serde(default)]
    pub instance: Option<InstanceConfig>,
}

/// What the metadata service serves for the instance on a port; network facts (MAC, addresses,
/// subnet, VPC, groups, AZ) come from the ENI.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default = "default_ami")]
    pub ami_id: String,
    #[serde(default = "default_type")]
    pub instance_type: String,
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub user_data_file: Option<PathBuf>,
    #[serde(default)]
    pub public_keys: Vec<PublicKey>,
    #[serde(default)]
    pub http_tokens: HttpTokens,
    #[serde(default)]
    pub http_endpoint: HttpEndpoint,
    #[serde(default = "default_hops")]
    pub http_put_response_hop_limit: u8,
}

fn default_ami() -> String {
    "ami-0123456789abcdef0".into()
}

fn default_type() -> String {
    "t3.micro".into()
}

fn default_hops() -> u8 {
    1
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowLogConfig {
    /// File flow records are appended to.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// File drop-log lines (every dropped packet's reason) are appended to.
    #[serde(default)]
    pub drop_log: Option<PathBuf>,
    /// Custom format (`${field}`s); default: AWS's default format.
    #[serde(default)]
    pub format: Option<String>,
    /// Aggregation interval in seconds (default 60).
    #[serde(default)]
    pub interval_secs: Option<u64>,
}

/// A port of the built switch, to attach to its netdev.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortPlan {
    pub port: PortId,
    pub netdev: String,
    pub role: String,
    pub eni_id: Option<String>,
    pub mac: Option<String>,
    pub private_ip: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
}

impl PortPlan {
    pub fn port_role(&self) -> PortRole {
        match &self.eni_id {
            Some(e) => PortRole::Eni(e.clone()),
            None => PortRole::Gateway,
        }
    }
}

fn open_append(path: &PathBuf) -> Result<std::fs::File, ConfigError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })
}

impl SwitchConfig {
    pub fn from_json(text: &str) -> Result<SwitchConfig, ConfigError> {
        serde_json::from_str(text).map_err(|e| ConfigError::Invalid(format!("switch config: {e}")))
    }

    /// Builds the switch (model, flow log, metadata) and says which netdev each port uses.
    pub fn build(&self) -> Result<(Switch, Vec<PortPlan>), ConfigError> {
        let mut model = Model::new(&self.region, &self.account_id);
        if let Some(gw) = &self.internet_gateway {
            if !gw.public_cidr.contains(&gw.host_ip) {
                return Err(ConfigError::Invalid(format!(
                    "internet_gateway: host_ip {} is not inside public_cidr {}",
                    gw.host_ip, gw.public_cidr
                )));
            }
            model.set_public_pool(PublicPool {
                cidr: gw.public_cidr,
                host_ip: gw.host_ip,
            });
        }
        for vpc in &self.vpcs {
            build_vpc(&mut model, vpc)?;
        }
        let mut plans = Vec::new();
        let mut next_port = 1u32;
        let mut instances = Vec::new();
        for (i, p) in self.ports.iter().enumerate() {
            let port = PortId(next_port);
            next_port += 1;
            let subnet = ctx(model.subnet(&p.subnet).cloned(), || {
                format!("ports[{i}] ({})", p.netdev)
            })?;
            let groups = p
                .security_groups
                .iter()
                .map(|g| resolve_group(&model, &subnet.vpc_id, g))
                .collect::<Result<Vec<_>, _>>()?;
            let eni = ctx(
                model
                    .create_network_interface(EniRequest {
                        id: p.eni_id.clone(),
                        subnet_id: p.subnet.clone(),
                        private_ip: p.private_ip,
                        mac: p.mac,
                        security_groups: groups,
                        public_ip: p.public_ip,
                        associate_public_ip: p.associate_public_ip,
                        port: Some(port),
                    })
                    .cloned(),
                || format!("ports[{i}] ({})", p.netdev),
            )?;
            if let Some(inst) = &p.instance {
                instances.push((port, instance_metadata(&model, &eni, inst)?));
            }
            plans.push(PortPlan {
                port,
                netdev: p.netdev.clone(),
                role: "eni".into(),
                eni_id: Some(eni.id.clone()),
                mac: Some(eni.mac.to_string()),
                private_ip: Some(eni.private_ip),
                public_ip: eni.public_ip,
            });
        }
        if let Some(gw) = &self.internet_gateway {
            plans.push(PortPlan {
                port: PortId(next_port),
                netdev: gw.netdev.clone(),
                role: "gateway".into(),
                eni_id: None,
                mac: None,
                private_ip: None,
                public_ip: None,
            });
        }
        let mut switch = Switch::new(model);
        for plan in &plans {
            switch.add_port(plan.port, plan.port_role());
        }
        for (port, md) in instances {
            switch.metadata_mut().set_instance(port, md);
        }
        if let Some(secs) = self.dhcp_lease_secs {
            switch.set_lease_secs(secs);
        }
        switch.set_dhcp_mtu(self.dhcp_mtu);
        if let Some(fl) = &self.flow_log {
            if let Some(f) = &fl.format {
                switch.flow_log_mut().set_format(f)?;
            }
            if let Some(p) = &fl.path {
                switch.flow_log_mut().set_sink(Box::new(open_append(p)?));
            }
            if let Some(p) = &fl.drop_log {
                switch
                    .flow_log_mut()
                    .set_drop_sink(Box::new(open_append(p)?));
            }
            if let Some(s) = fl.interval_secs {
                switch.set_flow_log_interval(Duration::from_secs(s.max(1)));
            }
        }
        Ok((switch, plans))
    }
}

fn resolve_group(model: &Model, vpc_id: &str, name_or_id: &str) -> Result<String, ConfigError> {
    if let Ok(g) = model.security_group(name_or_id)
        && g.vpc_id == vpc_id
    {
        return Ok(g.id.clone());
    }
    model
        .security_group_by_name(vpc_id, name_or_id)
        .map(|g| g.id.clone())
        .ok_or_else(|| {
            ConfigError::Invalid(format!("no security group {name_or_id:?} in {vpc_id}"))
        })
}

fn parse_protocol(p: &str, context: &str) -> Result<Protocol, ConfigError> {
    Protocol::parse(p).map_err(|source| ConfigError::Protocol {
        context: context.to_string(),
        source,
    })
}

fn sg_rule(
    model: &Model,
    vpc_id: &str,
    r: &SgRuleConfig,
    context: &str,
) -> Result<SgRule, ConfigError> {
    let protocol = parse_protocol(&r.protocol, context)?;
    let (from, to) = match (r.port, r.from_port, r.to_port) {
        (Some(p), _, _) => (p, p),
        (None, Some(f), Some(t)) => (f, t),
        (None, Some(f), None) => (f, f),
        (None, None, _) if protocol.has_ports() => (0, 65535),
        _ => (-1, -1),
    };
    let peer = match (&r.cidr, &r.group) {
        (Some(c), None) => Peer::Cidr(*c),
        (None, Some(g)) => Peer::Group(resolve_group(model, vpc_id, g)?),
        _ => {
            return Err(ConfigError::Invalid(format!(
                "{context}: a rule needs exactly one of \"cidr\" or \"group\""
            )));
        }
    };
    Ok(SgRule {
        protocol,
        from_port: from,
        to_port: to,
        peer,
        description: r.description.clone(),
    })
}

fn build_vpc(model: &mut Model, cfg: &VpcConfig) -> Result<(), ConfigError> {
    let vpc = ctx(model.create_vpc(cfg.id.clone(), cfg.cidr).cloned(), || {
        format!("VPC {}", cfg.cidr)
    })?;
    let vid = vpc.id.clone();
    let mut igw_id = None;
    if let Some(v) = &cfg.internet_gateway {
        let id = match v {
            serde_json::Value::Bool(false) | serde_json::Value::Null => None,
            serde_json::Value::Bool(true) => Some(None),
            serde_json::Value::String(s) => Some(Some(s.clone())),
            other => {
                return Err(ConfigError::Invalid(format!(
                    "{vid}: internet_gateway must be true or an igw- id, not {other}"
                )));
            }
        };
        if let Some(id) = id {
            let igw = ctx(
                model.create_internet_gateway(id).map(|g| g.id.clone()),
                || vid.clone(),
            )?;
            ctx(model.attach_internet_gateway(&igw, &vid), || vid.clone())?;
            igw_id = Some(igw);
        }
    }
    let target = |t: &str| -> Result<RouteTarget, ConfigError> {
        match t {
            "local" => Ok(RouteTarget::Local),
            "blackhole" => Ok(RouteTarget::Blackhole),
            "igw" => igw_id
                .clone()
                .map(RouteTarget::InternetGateway)
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "{vid}: route to igw, but the VPC has no internet_gateway"
                    ))
                }),
            id if id.starts_with("igw-") => Ok(RouteTarget::InternetGateway(id.to_string())),
            other => Err(ConfigError::Invalid(format!(
                "{vid}: unknown route target {other:?}"
            ))),
        }
    };
    for r in &cfg.main_routes {
        let t = target(&r.target)?;
        ctx(
            model.create_route(&vpc.main_route_table, r.destination, t),
            || vid.clone(),
        )?;
    }
    for rt in &cfg.route_tables {
        let id = ctx(
            model
                .create_route_table(rt.id.clone(), &vid)
                .map(|t| t.id.clone()),
            || vid.clone(),
        )?;
        for r in &rt.routes {
            let t = target(&r.target)?;
            ctx(model.create_route(&id, r.destination, t), || id.clone())?;
        }
    }
    let mut acl_ids = HashMap::new();
    for acl in &cfg.network_acls {
        let id = ctx(
            model
                .create_network_acl(acl.id.clone(), &vid)
                .map(|a| a.id.clone()),
            || vid.clone(),
        )?;
        for (i, e) in acl.entries.iter().enumerate() {
            let context = format!("{id} entries[{i}]");
            let protocol = parse_protocol(&e.protocol, &context)?;
            let action = match e.action.to_ascii_lowercase().as_str() {
                "allow" => RuleAction::Allow,
                "deny" => RuleAction::Deny,
                other => {
                    return Err(ConfigError::Invalid(format!(
                        "{context}: action {other:?} is not allow or deny"
                    )));
                }
            };
            let entry = NaclEntry {
                rule_number: e.rule_number,
                direction: if e.egress {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                },
                protocol,
                port_range: e.port_range,
                icmp_type_code: e.icmp,
                cidr: e.cidr,
                action,
            };
            let acl_mut = ctx(model.network_acl_mut(&id), || context.clone())?;
            acl_mut.add_entry(entry).map_err(|e| ConfigError::Model {
                context: context.clone(),
                source: ModelError::Nacl(e),
            })?;
        }
        acl_ids.insert(id.clone(), ());
    }
    // Groups first without rules (rules may refer to each other), then the rules.
    let mut group_ids = Vec::new();
    for g in &cfg.security_groups {
        let id = ctx(
            model
                .create_security_group(
                    g.id.clone(),
                    &vid,
                    &g.name,
                    g.description.as_deref().unwrap_or(&g.name),
                )
                .map(|s| s.id.clone()),
            || format!("{vid} group {}", g.name),
        )?;
        group_ids.push(id);
    }
    type RuleSet<'a> = (String, &'a [SgRuleConfig], Option<&'a Vec<SgRuleConfig>>);
    let mut rule_sets: Vec<RuleSet> = group_ids
        .iter()
        .zip(&cfg.security_groups)
        .map(|(id, g)| (id.clone(), g.ingress.as_slice(), g.egress.as_ref()))
        .collect();
    if let Some(d) = &cfg.default_security_group {
        rule_sets.push((
            vpc.default_security_group.clone(),
            d.ingress.as_slice(),
            d.egress.as_ref(),
        ));
    }
    for (id, ingress, egress) in rule_sets {
        for (i, r) in ingress.iter().enumerate() {
            let context = format!("{id} ingress[{i}]");
            let rule = sg_rule(model, &vid, r, &context)?;
            ctx(model.authorize_ingress(&id, rule), || context.clone())?;
        }
        if let Some(egress) = egress {
            // An explicit list replaces the default allow-all.
            let all = SgRule::allow_all(Ipv4Net::default());
            let _ = model.revoke(&id, false, &all);
            for (i, r) in egress.iter().enumerate() {
                let context = format!("{id} egress[{i}]");
                let rule = sg_rule(model, &vid, r, &context)?;
                ctx(model.authorize_egress(&id, rule), || context.clone())?;
            }
        }
    }
    for s in &cfg.subnets {
        let id = ctx(
            model
                .create_subnet(s.id.clone(), &vid, s.cidr, &s.availability_zone)
                .map(|s| s.id.clone()),
            || format!("{vid} subnet {}", s.cidr),
        )?;
        model
            .subnet_mut(&id)
            .expect("just created")
            .map_public_ip_on_launch = s.map_public_ip_on_launch;
        if let Some(acl) = &s.network_acl {
            ctx(model.associate_network_acl(&id, acl), || id.clone())?;
        }
        if let Some(rt) = &s.route_table {
            ctx(model.associate_route_table(&id, rt), || id.clone())?;
        }
    }
    Ok(())
}

fn instance_metadata(
    model: &Model,
    eni: &crate::model::Eni,
    cfg: &InstanceConfig,
) -> Result<InstanceMetadata, ConfigError> {
    let subnet = ctx(model.subnet(&eni.subnet_id), || eni.id.clone())?;
    let vpc = ctx(model.vpc(&eni.vpc_id), || eni.id.clone())?;
    let user_data = match (&cfg.user_data, &cfg.user_data_file) {
        (Some(s), _) => Some(s.as_bytes().to_vec()),
        (None, Some(p)) => Some(std::fs::read(p).map_err(|source| ConfigError::Io {
            path: p.clone(),
            source,
        })?),
        (None, None) => None,
    };
    let groups = eni
        .security_groups
        .iter()
        .filter_map(|g| model.security_group(g).ok())
        .map(|g| SecurityGroupRef {
            id: g.id.clone(),
            name: g.name.clone(),
        })
        .collect();
    let hostname = private_dns_name(eni.private_ip, &model.region);
    let public_hostname = eni.public_ip.map(|ip| {
        let o = ip.octets();
        format!(
            "ec2-{}-{}-{}-{}.compute-1.amazonaws.com",
            o[0], o[1], o[2], o[3]
        )
    });
    Ok(InstanceMetadata {
        instance_id: cfg
            .instance_id
            .clone()
            .unwrap_or_else(|| crate::addr::new_id("i")),
        ami_id: cfg.ami_id.clone(),
        ami_launch_index: 0,
        reservation_id: crate::addr::new_id("r"),
        instance_type: cfg.instance_type.clone(),
        architecture: "x86_64".into(),
        account_id: model.account_id.clone(),
        region: model.region.clone(),
        availability_zone: subnet.availability_zone.clone(),
        availability_zone_id: None,
        hostname: hostname.clone(),
        launch_time: SystemTime::now(),
        interfaces: vec![NetworkInterfaceMetadata {
            device_number: 0,
            interface_id: eni.id.clone(),
            mac: eni.mac.0,
            local_ipv4s: vec![eni.private_ip],
            local_hostname: hostname,
            public_ipv4s: eni.public_ip.into_iter().collect(),
            public_hostname,
            owner_id: model.account_id.clone(),
            security_groups: groups,
            subnet_id: subnet.id.clone(),
            subnet_ipv4_cidr_block: subnet.cidr,
            vpc_id: vpc.id.clone(),
            vpc_ipv4_cidr_blocks: vec![vpc.cidr],
        }],
        block_device_mappings: vec![
            ("ami".into(), "/dev/vda".into()),
            ("root".into(), "/dev/vda".into()),
        ],
        public_keys: cfg.public_keys.clone(),
        user_data,
        http_tokens: cfg.http_tokens,
        http_endpoint: cfg.http_endpoint,
        http_put_response_hop_limit: cfg.http_put_response_hop_limit,
    })
}
