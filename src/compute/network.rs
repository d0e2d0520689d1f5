//! The instance's network: a default VPC on kumo's userspace switch (kumo-net), run in-process.
//!
//! Like a new AWS account's default VPC, `kumo run` puts the instance in VPC 10.0.0.0/16, subnet
//! 10.0.1.0/24 in us-east-1a, with the VPC's default security group (inbound only from members
//! of the group, all outbound) and default network ACL (allow all). The description is kumo-net's
//! own [`SwitchConfig`] (the format `net/examples/switch.rs` documents), so the switch, DHCP, ARP,
//! policy and the metadata service are the real ones; its JSON is saved in the instance's
//! directory (`switch.json`). The ENI is one port of the switch on the instance's netdev (TAP or
//! veth), with the first free private IP of the subnet (10.0.1.4) and a random locally
//! administered MAC the guest's NIC must use. The instance's metadata ([`InstanceMetadata`]:
//! instance id, AMI id, type, user-data, public keys, network facts) is served on that port at
//! 169.254.169.254. Flow logs and every dropped packet's reason go to `flow.log` and `drops.log`
//! in the instance's directory.
//!
//! With host access (`kumo run --keep-running`), the VPC also gets an internet gateway, as a
//! public subnet on AWS has: the switch's gateway port is one end of a veth pair whose other end
//! holds the host's address in a /30 of the host-only range 198.18.0.0/15; the main route table
//! sends 0.0.0.0/0 to the gateway; the ENI gets the /30's other address as its public IP (1:1
//! NAT in the switch); and a second security group, `kumo-host-access`, lets the host's address
//! in (all traffic), so `ssh` and `curl` from the host work while the default group still governs
//! everything else.
//!
//! Each `kumo run` runs its own switch, so concurrent runs are isolated from one another (their
//! VPCs never see each other, as separate AWS accounts would not).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use kumo_net::MacAddr;
use kumo_net::PortId;
use kumo_net::config::{
    FlowLogConfig, GatewayConfig, InstanceConfig, PortConfig, RouteConfig, SecurityGroupConfig,
    SgRuleConfig, SubnetConfig, SwitchConfig, VpcConfig,
};
use kumo_net::imds::{InstanceMetadata, PublicKey};
use kumo_net::runtime::SwitchRuntime;

use super::ids;

/// The default VPC's CIDR block.
pub const VPC_CIDR: &str = "10.0.0.0/16";
/// The default subnet's CIDR block.
pub const SUBNET_CIDR: &str = "10.0.1.0/24";
/// The default subnet's availability zone.
pub const AVAILABILITY_ZONE: &str = "us-east-1a";
/// The region.
pub const REGION: &str = "us-east-1";

/// What the network needs to know about the instance.
#[derive(Debug, Clone)]
pub struct InstanceNetworkSpec {
    pub instance_id: String,
    pub ami_id: String,
    pub instance_type: String,
    /// The file holding the user-data (bytes as given: scripts, cloud-config, gzip, MIME).
    pub user_data_file: Option<PathBuf>,
    pub public_keys: Vec<PublicKey>,
    /// The switch-side netdev of the ENI.
    pub netdev: String,
    /// The ENI's MAC (the guest NIC must use it: the switch drops spoofed frames).
    pub mac: MacAddr,
    /// Where flow logs and drop reasons go.
    pub log_dir: PathBuf,
    /// Host access through an internet gateway.
    pub gateway: Option<HostGateway>,
}

/// The internet gateway's host side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGateway {
    /// The switch end of the gateway's veth pair.
    pub switch_netdev: String,
    /// The host's address (on the pair's host end).
    pub host_ip: Ipv4Addr,
    /// The range public addresses come from (contains `host_ip`).
    pub public_cidr: ipnet::Ipv4Net,
}

/// The security group that lets the host in when it has access.
pub const HOST_ACCESS_GROUP: &str = "kumo-host-access";

/// Ids of the default VPC's resources, chosen up front so the record and the switch agree.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct VpcIds {
    pub vpc_id: String,
    pub subnet_id: String,
    pub eni_id: String,
}

impl VpcIds {
    pub fn new() -> Self {
        VpcIds {
            vpc_id: ids::new_id("vpc"),
            subnet_id: ids::new_id("subnet"),
            eni_id: ids::new_id("eni"),
        }
    }
}

impl Default for VpcIds {
    fn default() -> Self {
        Self::new()
    }
}

/// The switch description for one instance in the default VPC.
pub fn default_vpc_config(spec: &InstanceNetworkSpec, ids: &VpcIds) -> SwitchConfig {
    let mut config = SwitchConfig {
        region: REGION.into(),
        vpcs: vec![VpcConfig {
            id: Some(ids.vpc_id.clone()),
            cidr: VPC_CIDR.parse().expect("valid CIDR"),
            subnets: vec![SubnetConfig {
                id: Some(ids.subnet_id.clone()),
                cidr: SUBNET_CIDR.parse().expect("valid CIDR"),
                availability_zone: AVAILABILITY_ZONE.into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ports: vec![PortConfig {
            netdev: spec.netdev.clone(),
            eni_id: Some(ids.eni_id.clone()),
            subnet: ids.subnet_id.clone(),
            mac: Some(spec.mac),
            // The subnet's first free address (10.0.1.4: AWS reserves .0-.3 and .255).
            private_ip: None,
            security_groups: vec!["default".into()],
            instance: Some(InstanceConfig {
                instance_id: Some(spec.instance_id.clone()),
                ami_id: spec.ami_id.clone(),
                instance_type: spec.instance_type.clone(),
                user_data: None,
                user_data_file: spec.user_data_file.clone(),
                public_keys: spec.public_keys.clone(),
                http_tokens: Default::default(),
                http_endpoint: Default::default(),
                http_put_response_hop_limit: 1,
            }),
            ..Default::default()
        }],
        flow_log: Some(FlowLogConfig {
            path: Some(spec.log_dir.join("flow.log")),
            drop_log: Some(spec.log_dir.join("drops.log")),
            format: None,
            interval_secs: Some(5),
        }),
        ..Default::default()
    };
    if let Some(gw) = &spec.gateway {
        config.internet_gateway = Some(GatewayConfig {
            netdev: gw.switch_netdev.clone(),
            host_ip: gw.host_ip,
            public_cidr: gw.public_cidr,
        });
        let vpc = &mut config.vpcs[0];
        vpc.internet_gateway = Some(serde_json::Value::Bool(true));
        vpc.main_routes = vec![RouteConfig {
            destination: "0.0.0.0/0".parse().expect("valid CIDR"),
            target: "igw".into(),
        }];
        vpc.security_groups = vec![SecurityGroupConfig {
            name: HOST_ACCESS_GROUP.into(),
            description: Some("kumo run: everything from this host".into()),
            ingress: vec![SgRuleConfig {
                protocol: "-1".into(),
                cidr: Some(ipnet::Ipv4Net::from(gw.host_ip)),
                description: Some("the host running kumo".into()),
                ..Default::default()
            }],
            ..Default::default()
        }];
        let port = &mut config.ports[0];
        port.security_groups.push(HOST_ACCESS_GROUP.into());
        port.associate_public_ip = Some(true);
    }
    config
}

/// Errors starting the network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("the VPC description is invalid: {0}")]
    Config(#[from] kumo_net::config::ConfigError),
    #[error("starting the VPC switch: {0}")]
    Runtime(#[from] kumo_net::runtime::RuntimeError),
    #[error("attaching {netdev} to the VPC switch: {source}")]
    Attach {
        netdev: String,
        #[source]
        source: kumo_net::runtime::RuntimeError,
    },
    #[error("the switch built no port for {0}")]
    NoPort(String),
}

/// The ENI as the switch made it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Eni {
    pub eni_id: String,
    pub mac: String,
    pub private_ip: Ipv4Addr,
    /// The public address (host access only).
    pub public_ip: Option<Ipv4Addr>,
    pub security_group_id: String,
    pub netdev: String,
}

/// A running switch with the instance's port attached. Dropping it stops the switch thread
/// (flushing the flow log).
pub struct VpcNetwork {
    pub runtime: SwitchRuntime,
    pub port: PortId,
    pub eni: Eni,
    pub metadata: InstanceMetadata,
}

impl std::fmt::Debug for VpcNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VpcNetwork")
            .field("port", &self.port)
            .field("eni", &self.eni)
            .finish_non_exhaustive()
    }
}

/// Builds the switch from `config` and the metadata for the instance's port, without starting
/// anything (no I/O beyond reading the user-data file and opening the log files).
pub fn plan(
    config: &SwitchConfig,
) -> Result<
    (
        kumo_net::Switch,
        kumo_net::config::PortPlan,
        Eni,
        InstanceMetadata,
    ),
    NetworkError,
> {
    let (mut switch, plans) = config.build()?;
    let port_cfg = config
        .ports
        .first()
        .ok_or_else(|| NetworkError::NoPort("the instance".into()))?;
    let plan = plans
        .into_iter()
        .find(|p| p.netdev == port_cfg.netdev)
        .ok_or_else(|| NetworkError::NoPort(port_cfg.netdev.clone()))?;
    let metadata = switch
        .metadata_mut()
        .instance(plan.port)
        .cloned()
        .ok_or_else(|| NetworkError::NoPort(port_cfg.netdev.clone()))?;
    let primary = metadata
        .primary_interface()
        .ok_or_else(|| NetworkError::NoPort(port_cfg.netdev.clone()))?;
    let eni = Eni {
        eni_id: primary.interface_id.clone(),
        mac: kumo_net::imds::metadata::format_mac(&primary.mac),
        private_ip: primary
            .local_ipv4s
            .first()
            .copied()
            .unwrap_or(Ipv4Addr::UNSPECIFIED),
        public_ip: primary.public_ipv4s.first().copied(),
        security_group_id: primary
            .security_groups
            .first()
            .map(|g| g.id.clone())
            .unwrap_or_default(),
        netdev: plan.netdev.clone(),
    };
    Ok((switch, plan, eni, metadata))
}

/// Starts the switch thread and attaches the instance's netdev and the gateway's (which must
/// exist).
pub fn start(config: SwitchConfig) -> Result<VpcNetwork, NetworkError> {
    let (switch, plan, eni, metadata) = plan(&config)?;
    let gateway = config.internet_gateway.as_ref().map(|gw| gw.netdev.clone());
    let runtime = SwitchRuntime::start(switch)?;
    let attach = |port, netdev: &str, role| {
        runtime
            .attach(port, netdev, role)
            .map_err(|source| NetworkError::Attach {
                netdev: netdev.to_string(),
                source,
            })
    };
    attach(plan.port, &plan.netdev, plan.port_role())?;
    if let Some(gw) = gateway {
        // The config builder numbers the gateway's port after the ENIs'.
        let port = PortId(plan.port.0 + 1);
        attach(port, &gw, kumo_net::switch::PortRole::Gateway)?;
    }
    Ok(VpcNetwork {
        runtime,
        port: plan.port,
        eni,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec(dir: &Path) -> InstanceNetworkSpec {
        let ud = dir.join("user-data");
        std::fs::write(&ud, b"#!/bin/sh\necho hi\n").unwrap();
        InstanceNetworkSpec {
            instance_id: "i-0123456789abcdef0".into(),
            ami_id: "ami-0123456789abcdef1".into(),
            instance_type: "t3.micro".into(),
            user_data_file: Some(ud),
            public_keys: vec![PublicKey {
                name: "me".into(),
                openssh_key: "ssh-ed25519 AAAAC3Nza me".into(),
            }],
            netdev: "kumov789abcdef0".into(),
            mac: "02:11:22:33:44:55".parse().unwrap(),
            log_dir: dir.to_path_buf(),
            gateway: None,
        }
    }

    #[test]
    fn default_vpc_has_awss_shape() {
        let dir = tempfile::tempdir().unwrap();
        let ids = VpcIds::new();
        let cfg = default_vpc_config(&spec(dir.path()), &ids);
        assert_eq!(cfg.region, "us-east-1");
        assert_eq!(cfg.vpcs.len(), 1);
        let vpc = &cfg.vpcs[0];
        assert_eq!(vpc.id.as_deref(), Some(ids.vpc_id.as_str()));
        assert_eq!(vpc.cidr.to_string(), "10.0.0.0/16");
        assert_eq!(vpc.subnets[0].cidr.to_string(), "10.0.1.0/24");
        assert_eq!(vpc.subnets[0].availability_zone, "us-east-1a");
        assert!(vpc.security_groups.is_empty(), "only the default group");
        assert!(vpc.network_acls.is_empty(), "only the default NACL");
        let port = &cfg.ports[0];
        assert_eq!(port.netdev, "kumov789abcdef0");
        assert_eq!(port.subnet, ids.subnet_id);
        assert_eq!(port.security_groups, vec!["default".to_string()]);
        // The description round-trips through kumo-net's JSON format (what switch.json holds).
        let json = serde_json::to_string(&cfg).unwrap();
        let again = SwitchConfig::from_json(&json).unwrap();
        assert_eq!(again.ports[0].eni_id.as_deref(), Some(ids.eni_id.as_str()));
    }

    #[test]
    fn plan_gives_the_eni_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let ids = VpcIds::new();
        let spec = spec(dir.path());
        let cfg = default_vpc_config(&spec, &ids);
        let (switch, plan, eni, md) = plan(&cfg).unwrap();
        assert_eq!(plan.netdev, spec.netdev);
        assert_eq!(eni.eni_id, ids.eni_id);
        assert_eq!(eni.mac, "02:11:22:33:44:55");
        assert_eq!(
            eni.private_ip,
            Ipv4Addr::new(10, 0, 1, 4),
            "first free address"
        );
        assert!(crate::compute::ids::is_valid(&eni.security_group_id, "sg"));
        let vpc = switch.model().vpc(&ids.vpc_id).unwrap();
        assert_eq!(vpc.default_security_group, eni.security_group_id);
        assert_eq!(md.instance_id, "i-0123456789abcdef0");
        assert_eq!(md.ami_id, "ami-0123456789abcdef1");
        assert_eq!(md.instance_type, "t3.micro");
        assert_eq!(md.availability_zone, "us-east-1a");
        assert_eq!(md.user_data.as_deref(), Some(&b"#!/bin/sh\necho hi\n"[..]));
        assert_eq!(md.public_keys.len(), 1);
        let nic = md.primary_interface().unwrap();
        assert_eq!(nic.subnet_id, ids.subnet_id);
        assert_eq!(nic.vpc_id, ids.vpc_id);
        assert_eq!(nic.security_groups[0].name, "default");
    }

    #[test]
    fn host_access_adds_a_gateway_a_public_ip_and_a_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec(dir.path());
        spec.gateway = Some(HostGateway {
            switch_netdev: "kumog789abcdef0".into(),
            host_ip: Ipv4Addr::new(198, 18, 7, 1),
            public_cidr: "198.18.7.0/30".parse().unwrap(),
        });
        let ids = VpcIds::new();
        let cfg = default_vpc_config(&spec, &ids);
        let gw = cfg.internet_gateway.as_ref().unwrap();
        assert_eq!(gw.netdev, "kumog789abcdef0");
        assert_eq!(cfg.vpcs[0].main_routes[0].target, "igw");
        assert_eq!(
            cfg.ports[0].security_groups,
            vec!["default".to_string(), HOST_ACCESS_GROUP.to_string()]
        );
        let (switch, plan, eni, md) = plan(&cfg).unwrap();
        assert_eq!(eni.public_ip, Some(Ipv4Addr::new(198, 18, 7, 2)));
        assert_eq!(
            md.interfaces[0].public_ipv4s,
            vec![Ipv4Addr::new(198, 18, 7, 2)]
        );
        assert_eq!(md.interfaces[0].security_groups.len(), 2);
        // The gateway port comes right after the ENI's (what `start` attaches).
        assert_eq!(switch.gateway_port(), Some(PortId(plan.port.0 + 1)));
    }

    #[test]
    fn no_user_data_means_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec(dir.path());
        spec.user_data_file = None;
        let (_, _, _, md) = plan(&default_vpc_config(&spec, &VpcIds::new())).unwrap();
        assert_eq!(md.user_data, None);
    }
}
