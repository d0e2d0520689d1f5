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
//! Each `kumo run` runs its own switch, so concurrent runs are isolated from one another (their
//! VPCs never see each other, as separate AWS accounts would not).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use kumo_net::MacAddr;
use kumo_net::PortId;
use kumo_net::config::{
    FlowLogConfig, InstanceConfig, PortConfig, SubnetConfig, SwitchConfig, VpcConfig,
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
}

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
    SwitchConfig {
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
    }
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
        security_group_id: primary
            .security_groups
            .first()
            .map(|g| g.id.clone())
            .unwrap_or_default(),
        netdev: plan.netdev.clone(),
    };
    Ok((switch, plan, eni, metadata))
}

/// Starts the switch thread and attaches the instance's netdev (which must exist).
pub fn start(config: SwitchConfig) -> Result<VpcNetwork, NetworkError> {
    let (switch, plan, eni, metadata) = plan(&config)?;
    let runtime = SwitchRuntime::start(switch)?;
    runtime
        .attach(plan.port, &plan.netdev, plan.port_role())
        .map_err(|source| NetworkError::Attach {
            netdev: plan.netdev.clone(),
            source,
        })?;
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
    fn no_user_data_means_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec(dir.path());
        spec.user_data_file = None;
        let (_, _, _, md) = plan(&default_vpc_config(&spec, &VpcIds::new())).unwrap();
        assert_eq!(md.user_data, None);
    }
}
