//! What the metadata service knows about one instance: everything the metadata tree serves.
//!
//! The control plane fills an [`InstanceMetadata`] when it launches an instance (and again when
//! something the tree shows changes, e.g. `ModifyInstanceMetadataOptions`) and hands it to
//! [`super::MetadataService::set_instance`] for the instance's primary ENI's port.

use std::net::Ipv4Addr;
use std::time::SystemTime;

use ipnet::Ipv4Net;

/// Largest token lifetime IMDSv2 grants, in seconds (6 hours), as on AWS.
pub const MAX_TOKEN_TTL_SECONDS: u32 = 21_600;

/// Whether IMDSv1 (requests without a session token) is allowed: EC2's `HttpTokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpTokens {
    /// IMDSv1 and IMDSv2 both work (EC2's historical default).
    #[default]
    Optional,
    /// Only requests carrying a valid IMDSv2 token are answered; others get 401.
    Required,
}

/// Whether the metadata endpoint answers at all: EC2's `HttpEndpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpEndpoint {
    /// The endpoint serves metadata.
    #[default]
    Enabled,
    /// Every request is refused with 403 Forbidden (what EC2 answers when the endpoint is off).
    Disabled,
}

/// A security group attached to an ENI, as the metadata tree names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecurityGroupRef {
    /// `sg-` id.
    pub id: String,
    /// The group's name (`default`, `web`, ...).
    pub name: String,
}

/// A key pair's public half, served under `public-keys/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublicKey {
    /// The key pair's name (`KeyName` of RunInstances).
    pub name: String,
    /// The key in OpenSSH `authorized_keys` format (`ssh-ed25519 AAAA... name`).
    pub openssh_key: String,
}

/// One network interface (ENI) of the instance, served under
/// `network/interfaces/macs/<mac>/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkInterfaceMetadata {
    /// `DeviceIndex` of the attachment: 0 for the primary ENI.
    pub device_number: u32,
    /// `eni-` id.
    pub interface_id: String,
    /// The ENI's MAC address.
    pub mac: [u8; 6],
    /// Private IPv4 addresses, the primary first.
    pub local_ipv4s: Vec<Ipv4Addr>,
    /// Private DNS name of the primary address (`ip-10-0-1-5.ec2.internal`).
    pub local_hostname: String,
    /// Public IPv4 addresses mapped to this ENI's private ones (empty if none).
    pub public_ipv4s: Vec<Ipv4Addr>,
    /// Public DNS name, if the ENI has a public address.
    pub public_hostname: Option<String>,
    /// Account that owns the ENI (12 digits).
    pub owner_id: String,
    /// Security groups on the ENI, in attachment order.
    pub security_groups: Vec<SecurityGroupRef>,
    /// `subnet-` id.
    pub subnet_id: String,
    /// The subnet's CIDR block.
    #[serde(with = "cidr_serde::one")]
    pub subnet_ipv4_cidr_block: Ipv4Net,
    /// `vpc-` id.
    pub vpc_id: String,
    /// The VPC's IPv4 CIDR blocks, the primary first (never empty for a valid VPC).
    #[serde(with = "cidr_serde::many")]
    pub vpc_ipv4_cidr_blocks: Vec<Ipv4Net>,
}

/// Everything the metadata service serves for one instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceMetadata {
    /// `i-` id.
    pub instance_id: String,
    /// `ami-` id the instance was launched from.
    pub ami_id: String,
    /// Index of this instance in its RunInstances request (0-based).
    pub ami_launch_index: u32,
    /// `r-` id of the reservation (the RunInstances call).
    pub reservation_id: String,
    /// Instance type (`t3.micro`).
    pub instance_type: String,
    /// CPU architecture for the identity document (`x86_64`).
    pub architecture: String,
    /// AWS account id (12 digits).
    pub account_id: String,
    /// Region (`us-east-1`).
    pub region: String,
    /// Availability zone (`us-east-1a`).
    pub availability_zone: String,
    /// Availability zone id (`use1-az1`), if the control plane models them.
    pub availability_zone_id: Option<String>,
    /// The instance's hostname as `hostname` serves it (usually the primary private DNS name).
    pub hostname: String,
    /// Launch time: the identity document's `pendingTime`.
    pub launch_time: SystemTime,
    /// The instance's ENIs; the one with `device_number` 0 is the primary and gives `mac`,
    /// `local-ipv4`, `public-ipv4`, `local-hostname`, `public-hostname` and `security-groups`.
    pub interfaces: Vec<NetworkInterfaceMetadata>,
    /// Block device mapping as `block-device-mapping/` lists it: (name, device), e.g.
    /// `("ami", "/dev/xvda")`, `("root", "/dev/xvda")`, `("ebs1", "sdb")`.
    pub block_device_mappings: Vec<(String, String)>,
    /// Key pairs; served as `public-keys/0=name` ... (at most one on EC2, but any number works).
    pub public_keys: Vec<PublicKey>,
    /// Raw user-data bytes (already base64-decoded); `None` (or empty) makes
    /// `/latest/user-data` a 404, as on EC2.
    pub user_data: Option<Vec<u8>>,
    /// `HttpTokens`: whether IMDSv1 is allowed.
    pub http_tokens: HttpTokens,
    /// `HttpEndpoint`: whether the service answers at all.
    pub http_endpoint: HttpEndpoint,
    /// `HttpPutResponseHopLimit` (1-64): the IP TTL of the token PUT's response packets.
    pub http_put_response_hop_limit: u8,
}

impl InstanceMetadata {
    /// The primary ENI (device number 0, else the first listed), if the instance has any.
    pub fn primary_interface(&self) -> Option<&NetworkInterfaceMetadata> {
        self.interfaces
            .iter()
            .find(|eni| eni.device_number == 0)
            .or_else(|| self.interfaces.first())
    }
}

/// A MAC address as the metadata tree writes it: lowercase, colon-separated.
pub fn format_mac(mac: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// CIDR blocks as strings (`"10.0.0.0/16"`) in serialized metadata (ipnet is built without its
/// serde feature in this workspace).
mod cidr_serde {
    pub mod one {
        use ipnet::Ipv4Net;
        use serde::{Deserialize, Deserializer, Serializer, de::Error};

        pub fn serialize<S: Serializer>(net: &Ipv4Net, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(net)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Net, D::Error> {
            let text = String::deserialize(d)?;
            text.parse()
                .map_err(|_| D::Error::custom(format!("invalid IPv4 CIDR block {text:?}")))
        }
    }

    pub mod many {
        use ipnet::Ipv4Net;
        use serde::{Deserialize, Deserializer, Serializer, de::Error};

        pub fn serialize<S: Serializer>(nets: &[Ipv4Net], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(nets.iter().map(|net| net.to_string()))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Net>, D::Error> {
            Vec::<String>::deserialize(d)?
                .iter()
                .map(|text| {
                    text.parse()
                        .map_err(|_| D::Error::custom(format!("invalid IPv4 CIDR block {text:?}")))
                })
                .collect()
        }
    }
}
