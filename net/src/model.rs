//! The VPC model the switch enforces: VPCs, subnets, route tables, internet gateways, network
//! ACLs, security groups and ENIs, with EC2's validation rules. This is the control plane's view;
//! the data path ([`crate::switch`]) reads it for every packet.
//!
//! Rules kept here, as on EC2:
//! - A VPC's CIDR is a /16 to /28. Creating a VPC also creates its main route table (with the
//!   `local` route), its default network ACL (allow all) and its `default` security group.
//! - A subnet's CIDR is a /16 to /28 inside its VPC's, overlapping no other subnet of the VPC;
//!   it lives in one availability zone. Five addresses of each subnet are reserved: the network
//!   address, base+1 (the VPC router), base+2 (the DNS server), base+3 (reserved) and the
//!   broadcast address.
//! - An ENI gets a private address chosen by the caller (must be free, in the subnet, not
//!   reserved) or the lowest free one, and one MAC address unique on the switch.
//! - Different VPCs may use overlapping CIDRs: every lookup by address is scoped to one VPC.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::PortId;
use crate::addr::{MacAddr, new_id};
use crate::policy::nacl::NetworkAcl;
use crate::policy::security_group::{Peer, SecurityGroup, SgRule, SgRuleError};

/// Errors of model operations, each with the EC2 error code a client expects.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error(
        "the CIDR '{0}' is invalid: a VPC's CIDR must be a /16 to /28 block (InvalidVpc.Range)"
    )]
    VpcRange(String),
    #[error(
        "the CIDR '{cidr}' is invalid for subnet: it must be a /16 to /28 block inside the VPC's {vpc_cidr} (InvalidSubnet.Range)"
    )]
    SubnetRange { cidr: String, vpc_cidr: String },
    #[error("the CIDR '{cidr}' conflicts with another subnet ({other}) (InvalidSubnet.Conflict)")]
    SubnetConflict { cidr: String, other: String },
    #[error("the {kind} ID '{id}' does not exist ({code})")]
    NotFound {
        kind: &'static str,
        id: String,
        code: &'static str,
    },
    #[error("the id '{0}' is already in use")]
    DuplicateId(String),
    #[error("address {ip} is not in subnet {subnet} ({cidr}) (InvalidParameterValue)")]
    AddressNotInSubnet {
        ip: Ipv4Addr,
        subnet: String,
        cidr: Ipv4Net,
    },
    #[error(
        "address {ip} is reserved in subnet {cidr}: the first four and the last address of a subnet are AWS's (InvalidParameterValue)"
    )]
    AddressReserved { ip: Ipv4Addr, cidr: Ipv4Net },
    #[error("address {ip} is already in use in {vpc} (InvalidIPAddress.InUse)")]
    AddressInUse { ip: Ipv4Addr, vpc: String },
    #[error("subnet {0} has no free addresses left (InsufficientFreeAddressesInSubnet)")]
    SubnetFull(String),
    #[error(
        "MAC address {0} is already used by another ENI on this switch (InvalidParameterValue)"
    )]
    MacInUse(MacAddr),
    #[error("security group {group} belongs to {group_vpc}, not {vpc} (InvalidGroup.NotFound)")]
    GroupVpcMismatch {
        group: String,
        group_vpc: String,
        vpc: String,
    },
    #[error("{0} (InvalidParameterValue)")]
    InvalidRule(#[from] SgRuleError),
    #[error("{0}")]
    Nacl(#[from] crate::policy::nacl::NaclError),
    #[error(
        "no public address available: configure an internet gateway with a public range, or widen it (AddressLimitExceeded)"
    )]
    NoPublicAddress,
    #[error(
        "public address {0} is outside the public range or already in use (InvalidParameterValue)"
    )]
    PublicAddress(Ipv4Addr),
    #[error("{0} is attached to {1}; detach it first (Resource.AlreadyAssociated)")]
    AlreadyAttached(String, String),
    #[error("a route to {0} already exists in {1} (RouteAlreadyExists)")]
    RouteExists(Ipv4Net, String),
    #[error("{0} (InvalidParameterValue)")]
    Invalid(String),
}

impl ModelError {
    /// The EC2 error code for the API layer.
    pub fn code(&self) -> &'static str {
        match self {
            ModelError::VpcRange(_) => "InvalidVpc.Range",
            ModelError::SubnetRange { .. } => "InvalidSubnet.Range",
            ModelError::SubnetConflict { .. } => "InvalidSubnet.Conflict",
            ModelError::NotFound { code, .. } => code,
            ModelError::DuplicateId(_) => "InvalidParameterValue",
            ModelError::AddressNotInSubnet { .. } | ModelError::AddressReserved { .. } => {
                "InvalidParameterValue"
            }
            ModelError::AddressInUse { .. } => "InvalidIPAddress.InUse",
            ModelError::SubnetFull(_) => "InsufficientFreeAddressesInSubnet",
            ModelError::MacInUse(_) => "InvalidParameterValue",
            ModelError::GroupVpcMismatch { .. } => "InvalidGroup.NotFound",
            ModelError::InvalidRule(_) => "InvalidParameterValue",
            ModelError::Nacl(e) => match e {
                crate::policy::nacl::NaclError::Exists { .. } => "NetworkAclEntryAlreadyExists",
                crate::policy::nacl::NaclError::NotFound { .. } => {
                    "InvalidNetworkAclEntry.NotFound"
                }
                _ => "InvalidParameterValue",
            },
            ModelError::NoPublicAddress => "AddressLimitExceeded",
            ModelError::PublicAddress(_) => "InvalidParameterValue",
            ModelError::AlreadyAttached(..) => "Resource.AlreadyAssociated",
            ModelError::RouteExists(..) => "RouteAlreadyExists",
            ModelError::Invalid(_) => "InvalidParameterValue",
        }
    }
}

fn not_found(kind: &'static str, code: &'static str, id: &str) -> ModelError {
    ModelError::NotFound {
        kind,
        id: id.to_string(),
        code,
    }
}

/// A VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpc {
    pub id: String,
    pub cidr: Ipv4Net,
    pub main_route_table: String,
    pub default_network_acl: String,
    pub default_security_group: String,
    /// The internet gateway attached to it, if any.
    pub internet_gateway: Option<String>,
}

impl Vpc {
    /// The VPC's DNS server: the VPC CIDR's base + 2.
    pub fn dns_server(&self) -> Ipv4Addr {
        nth(self.cidr, 2)
    }
}

/// A subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: String,
    pub cidr: Ipv4Net,
    pub availability_zone: String,
    /// Explicitly associated route table; `None` uses the VPC's main table.
    pub route_table: Option<String>,
    pub network_acl: String,
    pub map_public_ip_on_launch: bool,
}

impl Subnet {
    /// The VPC router's address in this subnet (base + 1), the DHCP "router" option.
    pub fn router(&self) -> Ipv4Addr {
        nth(self.cidr, 1)
    }

    /// The subnet's broadcast address (reserved).
    pub fn broadcast_addr(&self) -> Ipv4Addr {
        self.cidr.broadcast()
    }

    /// Whether `ip` is one of the five addresses AWS reserves in every subnet.
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        let base = u32::from(self.cidr.network());
        let off = u32::from(ip).wrapping_sub(base);
        off <= 3 || ip == self.cidr.broadcast()
    }
}

fn nth(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(n))
}

/// Where a route sends traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Delivered inside the VPC.
    Local,
    /// An internet gateway (`igw-...`).
    InternetGateway(String),
    /// Dropped (a route whose target was deleted).
    Blackhole,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Net,
    pub target: RouteTarget,
}

/// A route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    pub id: String,
    pub vpc_id: String,
    pub routes: Vec<Route>,
}

impl RouteTable {
    /// Longest-prefix match.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.destination.contains(&dst))
            .max_by_key(|r| r.destination.prefix_len())
    }
}

/// An internet gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternetGateway {
    pub id: String,
    pub vpc_id: Option<String>,
}

/// An elastic network interface: one switch port, one MAC, one private address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eni {
    pub id: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub mac: MacAddr,
    pub private_ip: Ipv4Addr,
    pub public_ip: Option<Ipv4Addr>,
    pub security_groups: Vec<String>,
    /// The switch port carrying this ENI's traffic, once attached.
    pub port: Option<PortId>,
    /// Source/destination check (always on in kumo: the switch drops spoofed packets).
    pub source_dest_check: bool,
}

impl Eni {
    /// EC2's private DNS name for the address: `ip-10-0-1-5.ec2.internal` in us-east-1,
    /// `ip-10-0-1-5.<region>.compute.internal` elsewhere.
    pub fn private_dns_name(&self, region: &str) -> String {
        private_dns_name(self.private_ip, region)
    }
}

/// `ip-a-b-c-d.ec2.internal` (us-east-1) or `ip-a-b-c-d.<region>.compute.internal`.
pub fn private_dns_name(ip: Ipv4Addr, region: &str) -> String {
    let o = ip.octets();
    format!(
        "ip-{}-{}-{}-{}.{}",
        o[0],
        o[1],
        o[2],
        o[3],
        private_domain(region)
    )
}

/// The private DNS domain of a region.
pub fn private_domain(region: &str) -> String {
    if region == "us-east-1" {
        "ec2.internal".to_string()
    } else {
        format!("{region}.compute.internal")
    }
}

/// The host-only range the internet gateway emulation hands public addresses from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicPool {
    pub cidr: Ipv4Net,
    /// The host's address on the gateway interface (never handed out).
    pub host_ip: Ipv4Addr,
}

/// Everything the switch enforces.
#[derive(Debug, Clone)]
pub struct Model {
    pub region: String,
    pub account_id: String,
    vpcs: BTreeMap<String, Vpc>,
    subnets: BTreeMap<String, Subnet>,
    route_tables: BTreeMap<String, RouteTable>,
    igws: BTreeMap<String, InternetGateway>,
    nacls: BTreeMap<String, NetworkAcl>,
    sgs: BTreeMap<String, SecurityGroup>,
    enis: BTreeMap<String, Eni>,
    public_pool: Option<PublicPool>,
    // Indexes for the data path.
    eni_by_vpc_ip: HashMap<String, HashMap<Ipv4Addr, String>>,
    eni_by_port: HashMap<PortId, String>,
    eni_by_public_ip: HashMap<Ipv4Addr, String>,
    macs: HashSet<MacAddr>,
}

impl Default for Model {
    fn default() -> Self {
        Model::new("us-east-1", "123456789012")
    }
}

impl Model {
    pub fn new(region: &str, account_id: &str) -> Model {
        Model {
            region: region.to_string(),
            account_id: account_id.to_string(),
            vpcs: BTreeMap::new(),
            subnets: BTreeMap::new(),
            route_tables: BTreeMap::new(),
            igws: BTreeMap::new(),
            nacls: BTreeMap::new(),
            sgs: BTreeMap::new(),
            enis: BTreeMap::new(),
            public_pool: None,
            eni_by_vpc_ip: HashMap::new(),
            eni_by_port: HashMap::new(),
            eni_by_public_ip: HashMap::new(),
            macs: HashSet::new(),
        }
    }

    fn check_new_id(&self, id: &str) -> Result<(), ModelError> {
        let used = self.vpcs.contains_key(id)
            || self.subnets.contains_key(id)
            || self.route_tables.contains_key(id)
            || self.igws.contains_key(id)
            || self.nacls.contains_key(id)
            || self.sgs.contains_key(id)
            || self.enis.contains_key(id);
        if used {
            return Err(ModelError::DuplicateId(id.to_string()));
        }
        Ok(())
    }

    // ----- VPCs -----

    /// `CreateVpc`. Also creates the main route table, default NACL and default group; their
    /// ids are generated.
    pub fn create_vpc(&mut self, id: Option<String>, cidr: Ipv4Net) -> Result<&Vpc, ModelError> {
        if !(16..=28).contains(&cidr.prefix_len()) || cidr.network() != cidr.addr() {
            return Err(ModelError::VpcRange(cidr.to_string()));
        }
        let id = id.unwrap_or_else(|| new_id("vpc"));
        self.check_new_id(&id)?;
        let rtb = new_id("rtb");
        let acl = new_id("acl");
        let sg = new_id("sg");
        self.route_tables.insert(
            rtb.clone(),
            RouteTable {
                id: rtb.clone(),
                vpc_id: id.clone(),
                routes: vec![Route {
                    destination: cidr,
                    target: RouteTarget::Local,
                }],
            },
        );
        self.nacls.insert(
            acl.clone(),
            NetworkAcl::new_default(acl.clone(), id.clone()),
        );
        self.sgs.insert(
            sg.clone(),
            SecurityGroup::new_default(sg.clone(), id.clone()),
        );
        self.vpcs.insert(
            id.clone(),
            Vpc {
                id: id.clone(),
                cidr,
                main_route_table: rtb,
                default_network_acl: acl,
                default_security_group: sg,
                internet_gateway: None,
            },
        );
        Ok(&self.vpcs[&id])
    }

    pub fn vpc(&self, id: &str) -> Result<&Vpc, ModelError> {
        self.vpcs
            .get(id)
            .ok_or_else(|| not_found("VPC", "InvalidVpcID.NotFound", id))
    }

    pub fn vpcs(&self) -> impl Iterator<Item = &Vpc> {
        self.vpcs.values()
    }

    // ----- Subnets -----

    /// `CreateSubnet`: uses the VPC's default NACL and main route table.
    pub fn create_subnet(
        &mut self,
        id: Option<String>,
        vpc_id: &str,
        cidr: Ipv4Net,
        availability_zone: &str,
    ) -> Result<&Subnet, ModelError> {
        let vpc = self.vpc(vpc_id)?.clone();
        if !(16..=28).contains(&cidr.prefix_len())
            || cidr.network() != cidr.addr()
            || !vpc.cidr.contains(&cidr)
        {
            return Err(ModelError::SubnetRange {
                cidr: cidr.to_string(),
                vpc_cidr: vpc.cidr.to_string(),
            });
        }
        if let Some(other) = self
            .subnets
            .values()
            .find(|s| s.vpc_id == vpc_id && (s.cidr.contains(&cidr) || cidr.contains(&s.cidr)))
        {
            return Err(ModelError::SubnetConflict {
                cidr: cidr.to_string(),
                other: format!("{} {}", other.id, other.cidr),
            });
        }
        let id = id.unwrap_or_else(|| new_id("subnet"));
        self.check_new_id(&id)?;
        self.subnets.insert(
            id.clone(),
            Subnet {
                id: id.clone(),
                vpc_id: vpc_id.to_string(),
                cidr,
                availability_zone: availability_zone.to_string(),
                route_table: None,
                network_acl: vpc.default_network_acl.clone(),
                map_public_ip_on_launch: false,
            },
        );
        Ok(&self.subnets[&id])
    }

    pub fn subnet(&self, id: &str) -> Result<&Subnet, ModelError> {
        self.subnets
            .get(id)
            .ok_or_else(|| not_found("subnet", "InvalidSubnetID.NotFound", id))
    }

    pub fn subnet_mut(&mut self, id: &str) -> Result<&mut Subnet, ModelError> {
        self.subnets
            .get_mut(id)
            .ok_or_else(|| not_found("subnet", "InvalidSubnetID.NotFound", id))
    }

    pub fn subnets(&self) -> impl Iterator<Item = &Subnet> {
        self.subnets.values()
    }

    /// The subnet of `vpc_id` containing `ip`, if any.
    pub fn subnet_for_ip(&self, vpc_id: &str, ip: Ipv4Addr) -> Option<&Subnet> {
        self.subnets
            .values()
            .find(|s| s.vpc_id == vpc_id && s.cidr.contains(&ip))
    }

    // ----- Route tables and gateways -----

    /// `CreateRouteTable`: a table with only the local route.
    pub fn create_route_table(
        &mut self,
        id: Option<String>,
        vpc_id: &str,
    ) -> Result<&RouteTable, ModelError> {
        let cidr = self.vpc(vpc_id)?.cidr;
        let id = id.unwrap_or_else(|| new_id("rtb"));
        self.check_new_id(&id)?;
        self.route_tables.insert(
            id.clone(),
            RouteTable {
                id: id.clone(),
                vpc_id: vpc_id.to_string(),
                routes: vec![Route {
                    destination: cidr,
                    target: RouteTarget::Local,
                }],
            },
        );
        Ok(&self.route_tables[&id])
    }

    pub fn route_table(&self, id: &str) -> Result<&RouteTable, ModelError> {
        self.route_tables
            .get(id)
            .ok_or_else(|| not_found("route table", "InvalidRouteTableID.NotFound", id))
    }

    /// `CreateRoute` to an internet gateway (the only non-local target so far).
    pub fn create_route(
        &mut self,
        rtb_id: &str,
        destination: Ipv4Net,
        target: RouteTarget,
    ) -> Result<(), ModelError> {
        if let RouteTarget::InternetGateway(igw) = &target {
            self.internet_gateway(igw)?;
        }
        let rtb = self
            .route_tables
            .get_mut(rtb_id)
            .ok_or_else(|| not_found("route table", "InvalidRouteTableID.NotFound", rtb_id))?;
        if rtb.routes.iter().any(|r| r.destination == destination) {
            return Err(ModelError::RouteExists(destination, rtb_id.to_string()));
        }
        rtb.routes.push(Route {
            destination,
            target,
        });
        Ok(())
    }

    /// `AssociateRouteTable`.
    pub fn associate_route_table(
        &mut self,
        subnet_id: &str,
        rtb_id: &str,
    ) -> Result<(), ModelError> {
        let rtb_vpc = self.route_table(rtb_id)?.vpc_id.clone();
        let subnet = self.subnet_mut(subnet_id)?;
        if subnet.vpc_id != rtb_vpc {
            return Err(ModelError::Invalid(format!(
                "route table {rtb_id} and subnet {subnet_id} belong to different VPCs"
            )));
        }
        subnet.route_table = Some(rtb_id.to_string());
        Ok(())
    }

    /// The route table in force for a subnet.
    pub fn route_table_for_subnet(&self, subnet: &Subnet) -> Option<&RouteTable> {
        let id = match &subnet.route_table {
            Some(id) => id.as_str(),
            None => self.vpcs.get(&subnet.vpc_id)?.main_route_table.as_str(),
        };
        self.route_tables.get(id)
    }

    /// `CreateInternetGateway`.
    pub fn create_internet_gateway(
        &mut self,
        id: Option<String>,
    ) -> Result<&InternetGateway, ModelError> {
        let id = id.unwrap_or_else(|| new_id("igw"));
        self.check_new_id(&id)?;
        self.igws.insert(
            id.clone(),
            InternetGateway {
                id: id.clone(),
                vpc_id: None,
            },
        );
        Ok(&self.igws[&id])
    }

    pub fn internet_gateway(&self, id: &str) -> Result<&InternetGateway, ModelError> {
        self.igws
            .get(id)
            .ok_or_else(|| not_found("internet gateway", "InvalidInternetGatewayID.NotFound", id))
    }

    /// `AttachInternetGateway`.
    pub fn attach_internet_gateway(
        &mut self,
        igw_id: &str,
        vpc_id: &str,
    ) -> Result<(), ModelError> {
        self.vpc(vpc_id)?;
        let igw = self.internet_gateway(igw_id)?;
        if let Some(v) = &igw.vpc_id {
            return Err(ModelError::AlreadyAttached(igw_id.to_string(), v.clone()));
        }
        if let Some(other) = &self.vpcs[vpc_id].internet_gateway {
            return Err(ModelError::AlreadyAttached(
                other.clone(),
                vpc_id.to_string(),
            ));
        }
        self.igws.get_mut(igw_id).expect("checked").vpc_id = Some(vpc_id.to_string());
        self.vpcs.get_mut(vpc_id).expect("checked").internet_gateway = Some(igw_id.to_string());
        Ok(())
    }

    /// Sets the host-only range public addresses come from (the gateway emulation's side).
    pub fn set_public_pool(&mut self, pool: PublicPool) {
        self.public_pool = Some(pool);
    }

    pub fn public_pool(&self) -> Option<&PublicPool> {
        self.public_pool.as_ref()
    }

    // ----- Network ACLs -----

    /// `CreateNetworkAcl`: a custom NACL that denies everything.
    pub fn create_network_acl(
        &mut self,
        id: Option<String>,
        vpc_id: &str,
    ) -> Result<&NetworkAcl, ModelError> {
        self.vpc(vpc_id)?;
        let id = id.unwrap_or_else(|| new_id("acl"));
        self.check_new_id(&id)?;
        self.nacls.insert(
            id.clone(),
            NetworkAcl::new_custom(id.clone(), vpc_id.to_string()),
        );
        Ok(&self.nacls[&id])
    }

    pub fn network_acl(&self, id: &str) -> Result<&NetworkAcl, ModelError> {
        self.nacls
            .get(id)
            .ok_or_else(|| not_found("network ACL", "InvalidNetworkAclID.NotFound", id))
    }

    pub fn network_acl_mut(&mut self, id: &str) -> Result<&mut NetworkAcl, ModelError> {
        self.nacls
            .get_mut(id)
            .ok_or_else(|| not_found("network ACL", "InvalidNetworkAclID.NotFound", id))
    }

    /// `ReplaceNetworkAclAssociation`: puts `subnet_id` under `acl_id`.
    pub fn associate_network_acl(
        &mut self,
        subnet_id: &str,
        acl_id: &str,
    ) -> Result<(), ModelError> {
        let acl_vpc = self.network_acl(acl_id)?.vpc_id.clone();
        let subnet = self.subnet_mut(subnet_id)?;
        if subnet.vpc_id != acl_vpc {
            return Err(ModelError::Invalid(format!(
                "network ACL {acl_id} and subnet {subnet_id} belong to different VPCs"
            )));
        }
        subnet.network_acl = acl_id.to_string();
        Ok(())
    }

    // ----- Security groups -----

    /// `CreateSecurityGroup`: no inbound rules, all outbound allowed.
    pub fn create_security_group(
        &mut self,
        id: Option<String>,
        vpc_id: &str,
        name: &str,
        description: &str,
    ) -> Result<&SecurityGroup, ModelError> {
        self.vpc(vpc_id)?;
        if self
            .sgs
            .values()
            .any(|g| g.vpc_id == vpc_id && g.name == name)
        {
            return Err(ModelError::Invalid(format!(
                "the security group '{name}' already exists for VPC '{vpc_id}' (InvalidGroup.Duplicate)"
            )));
        }
        let id = id.unwrap_or_else(|| new_id("sg"));
        self.check_new_id(&id)?;
        self.sgs.insert(
            id.clone(),
            SecurityGroup::new(
                id.clone(),
                name.to_string(),
                description.to_string(),
                vpc_id.to_string(),
            ),
        );
        Ok(&self.sgs[&id])
    }

    pub fn security_group(&self, id: &str) -> Result<&SecurityGroup, ModelError> {
        self.sgs
            .get(id)
            .ok_or_else(|| not_found("security group", "InvalidGroup.NotFound", id))
    }

    /// The group named `name` in `vpc_id` (`default` is always there).
    pub fn security_group_by_name(&self, vpc_id: &str, name: &str) -> Option<&SecurityGroup> {
        self.sgs
            .values()
            .find(|g| g.vpc_id == vpc_id && g.name == name)
    }

    fn check_rule(&self, vpc_id: &str, rule: &SgRule) -> Result<(), ModelError> {
        rule.validate()?;
        if let Peer::Group(g) = &rule.peer {
            let other = self.security_group(g)?;
            if other.vpc_id != vpc_id {
                return Err(ModelError::GroupVpcMismatch {
                    group: g.clone(),
                    group_vpc: other.vpc_id.clone(),
                    vpc: vpc_id.to_string(),
                });
            }
        }
        Ok(())
    }

    /// `AuthorizeSecurityGroupIngress` (one rule).
    pub fn authorize_ingress(&mut self, sg_id: &str, rule: SgRule) -> Result<(), ModelError> {
        let vpc = self.security_group(sg_id)?.vpc_id.clone();
        self.check_rule(&vpc, &rule)?;
        let g = self.sgs.get_mut(sg_id).expect("checked");
        if !g.ingress.contains(&rule) {
            g.ingress.push(rule);
        }
        Ok(())
    }

    /// `AuthorizeSecurityGroupEgress` (one rule).
    pub fn authorize_egress(&mut self, sg_id: &str, rule: SgRule) -> Result<(), ModelError> {
        let vpc = self.security_group(sg_id)?.vpc_id.clone();
        self.check_rule(&vpc, &rule)?;
        let g = self.sgs.get_mut(sg_id).expect("checked");
        if !g.egress.contains(&rule) {
            g.egress.push(rule);
        }
        Ok(())
    }

    /// `RevokeSecurityGroupIngress` / `RevokeSecurityGroupEgress`: removes an identical rule.
    pub fn revoke(&mut self, sg_id: &str, inbound: bool, rule: &SgRule) -> Result<(), ModelError> {
        let g = self
            .sgs
            .get_mut(sg_id)
            .ok_or_else(|| not_found("security group", "InvalidGroup.NotFound", sg_id))?;
        let list = if inbound {
            &mut g.ingress
        } else {
            &mut g.egress
        };
        let before = list.len();
        list.retain(|r| {
            !(r.protocol == rule.protocol
                && r.from_port == rule.from_port
                && r.to_port == rule.to_port
                && r.peer == rule.peer)
        });
        if list.len() == before {
            return Err(ModelError::Invalid(format!(
                "the specified rule does not exist in security group {sg_id} (InvalidPermission.NotFound)"
            )));
        }
        Ok(())
    }

    /// Whether `ip` is the private address of an ENI in `vpc_id` carrying group `sg_id`.
    pub fn is_group_member(&self, vpc_id: &str, sg_id: &str, ip: Ipv4Addr) -> bool {
        self.eni_id_by_ip(vpc_id, ip)
            .and_then(|e| self.enis.get(e))
            .is_some_and(|e| e.security_groups.iter().any(|g| g == sg_id))
    }

    // ----- ENIs -----

    /// `CreateNetworkInterface`: picks or checks the private address and MAC; with no groups
    /// given, the VPC's default group applies.
    pub fn create_network_interface(&mut self, req: EniRequest) -> Result<&Eni, ModelError> {
        let subnet = self.subnet(&req.subnet_id)?.clone();
        let vpc_id = subnet.vpc_id.clone();
        let private_ip = match req.private_ip {
            Some(ip) => {
                if !subnet.cidr.contains(&ip) {
                    return Err(ModelError::AddressNotInSubnet {
                        ip,
                        subnet: subnet.id.clone(),
                        cidr: subnet.cidr,
                    });
                }
                if subnet.is_reserved(ip) {
                    return Err(ModelError::AddressReserved {
                        ip,
                        cidr: subnet.cidr,
                    });
                }
                if self.eni_id_by_ip(&vpc_id, ip).is_some() {
                    return Err(ModelError::AddressInUse { ip, vpc: vpc_id });
                }
                ip
            }
            None => subnet
                .cidr
                .hosts()
                .find(|ip| !subnet.is_reserved(*ip) && self.eni_id_by_ip(&vpc_id, *ip).is_none())
                .ok_or_else(|| ModelError::SubnetFull(subnet.id.clone()))?,
        };
        let mac = match req.mac {
            Some(m) => {
                if self.macs.contains(&m) || m.is_multicast() || m == MacAddr::ZERO {
                    return Err(ModelError::MacInUse(m));
                }
                m
            }
            None => loop {
                let m = MacAddr::random_local();
                if !self.macs.contains(&m) {
                    break m;
                }
            },
        };
        let groups = if req.security_groups.is_empty() {
            vec![self.vpcs[&vpc_id].default_security_group.clone()]
        } else {
            for g in &req.security_groups {
                let sg = self.security_group(g)?;
                if sg.vpc_id != vpc_id {
                    return Err(ModelError::GroupVpcMismatch {
                        group: g.clone(),
                        group_vpc: sg.vpc_id.clone(),
                        vpc: vpc_id.clone(),
                    });
                }
            }
            req.security_groups.clone()
        };
        let public_ip = match (
            req.public_ip,
            req.associate_public_ip
                .unwrap_or(subnet.map_public_ip_on_launch),
        ) {
            (Some(ip), _) => Some(self.check_public_ip(ip)?),
            (None, true) => Some(self.allocate_public_ip()?),
            (None, false) => None,
        };
        let id = req.id.unwrap_or_else(|| new_id("eni"));
        self.check_new_id(&id)?;
        if let Some(p) = req.port
            && self.eni_by_port.contains_key(&p)
        {
            return Err(ModelError::Invalid(format!(
                "switch port {p} already carries an ENI"
            )));
        }
        self.macs.insert(mac);
        self.eni_by_vpc_ip
            .entry(vpc_id.clone())
            .or_default()
            .insert(private_ip, id.clone());
        if let Some(p) = public_ip {
            self.eni_by_public_ip.insert(p, id.clone());
        }
        if let Some(p) = req.port {
            self.eni_by_port.insert(p, id.clone());
        }
        self.enis.insert(
            id.clone(),
            Eni {
                id: id.clone(),
                vpc_id,
                subnet_id: subnet.id.clone(),
                mac,
                private_ip,
                public_ip,
                security_groups: groups,
                port: req.port,
                source_dest_check: true,
            },
        );
        Ok(&self.enis[&id])
    }

    fn check_public_ip(&self, ip: Ipv4Addr) -> Result<Ipv4Addr, ModelError> {
        let pool = self
            .public_pool
            .as_ref()
            .ok_or(ModelError::NoPublicAddress)?;
        if !pool.cidr.contains(&ip)
            || ip == pool.host_ip
            || ip == pool.cidr.network()
            || ip == pool.cidr.broadcast()
            || self.eni_by_public_ip.contains_key(&ip)
        {
            return Err(ModelError::PublicAddress(ip));
        }
        Ok(ip)
    }

    fn allocate_public_ip(&self) -> Result<Ipv4Addr, ModelError> {
        let pool = self
            .public_pool
            .as_ref()
            .ok_or(ModelError::NoPublicAddress)?;
        pool.cidr
            .hosts()
            .find(|ip| *ip != pool.host_ip && !self.eni_by_public_ip.contains_key(ip))
            .ok_or(ModelError::NoPublicAddress)
    }

    /// `DeleteNetworkInterface`.
    pub fn delete_network_interface(&mut self, id: &str) -> Result<Eni, ModelError> {
        let eni = self.enis.remove(id).ok_or_else(|| {
            not_found(
                "network interface",
                "InvalidNetworkInterfaceID.NotFound",
                id,
            )
        })?;
        self.macs.remove(&eni.mac);
        if let Some(m) = self.eni_by_vpc_ip.get_mut(&eni.vpc_id) {
            m.remove(&eni.private_ip);
        }
        if let Some(p) = eni.public_ip {
            self.eni_by_public_ip.remove(&p);
        }
        if let Some(p) = eni.port {
            self.eni_by_port.remove(&p);
        }
        Ok(eni)
    }

    /// `ModifyNetworkInterfaceAttribute --groups`: replaces the ENI's security groups.
    pub fn set_eni_groups(&mut self, eni_id: &str, groups: Vec<String>) -> Result<(), ModelError> {
        let vpc_id = self.eni(eni_id)?.vpc_id.clone();
        for g in &groups {
            let sg = self.security_group(g)?;
            if sg.vpc_id != vpc_id {
                return Err(ModelError::GroupVpcMismatch {
                    group: g.clone(),
                    group_vpc: sg.vpc_id.clone(),
                    vpc: vpc_id.clone(),
                });
            }
        }
        if groups.is_empty() {
            return Err(ModelError::Invalid(
                "an ENI needs at least one security group".into(),
            ));
        }
        self.enis.get_mut(eni_id).expect("checked").security_groups = groups;
        Ok(())
    }

    pub fn eni(&self, id: &str) -> Result<&Eni, ModelError> {
        self.enis.get(id).ok_or_else(|| {
            not_found(
                "network interface",
                "InvalidNetworkInterfaceID.NotFound",
                id,
            )
        })
    }

    pub fn enis(&self) -> impl Iterator<Item = &Eni> {
        self.enis.values()
    }

    pub fn eni_on_port(&self, port: PortId) -> Option<&Eni> {
        self.eni_by_port.get(&port).and_then(|id| self.enis.get(id))
    }

    pub fn eni_by_ip(&self, vpc_id: &str, ip: Ipv4Addr) -> Option<&Eni> {
        self.eni_id_by_ip(vpc_id, ip)
            .and_then(|id| self.enis.get(id))
    }

    fn eni_id_by_ip(&self, vpc_id: &str, ip: Ipv4Addr) -> Option<&String> {
        self.eni_by_vpc_ip.get(vpc_id).and_then(|m| m.get(&ip))
    }

    pub fn eni_by_public_ip(&self, ip: Ipv4Addr) -> Option<&Eni> {
        self.eni_by_public_ip
            .get(&ip)
            .and_then(|id| self.enis.get(id))
    }
}

/// What `CreateNetworkInterface` (or RunInstances' primary ENI) asks for.
#[derive(Debug, Clone, Default)]
pub struct EniRequest {
    pub id: Option<String>,
    pub subnet_id: String,
    pub private_ip: Option<Ipv4Addr>,
    pub mac: Option<MacAddr>,
    pub security_groups: Vec<String>,
    /// An explicit public address from the gateway's range.
    pub public_ip: Option<Ipv4Addr>,
    /// AssociatePublicIpAddress; `None` follows the subnet's MapPublicIpOnLaunch.
    pub associate_public_ip: Option<bool>,
    pub port: Option<PortId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn vpc_sizes() {
        let mut m = Model::default();
        assert_eq!(
            m.create_vpc(None, net("10.0.0.0/15")).unwrap_err().code(),
            "InvalidVpc.Range"
        );
        assert_eq!(
            m.create_vpc(None, net("10.0.0.0/29")).unwrap_err().code(),
            "InvalidVpc.Range"
        );
        assert!(m.create_vpc(None, net("10.0.0.0/16")).is_ok());
        assert!(m.create_vpc(None, net("10.0.0.0/28")).is_ok()); // overlapping VPCs are fine
        let v = m
            .create_vpc(Some("vpc-1".into()), net("10.1.0.0/16"))
            .unwrap()
            .clone();
        assert!(m.security_group(&v.default_security_group).is_ok());
        assert!(m.network_acl(&v.default_network_acl).unwrap().is_default);
        assert_eq!(v.dns_server(), Ipv4Addr::new(10, 1, 0, 2));
    }

    #[test]
    fn subnets_inside_and_disjoint() {
        let mut m = Model::default();
        m.create_vpc(Some("vpc-1".into()), net("10.0.0.0/16"))
            .unwrap();
        m.create_subnet(
            Some("subnet-a".into()),
            "vpc-1",
            net("10.0.1.0/24"),
            "us-east-1a",
        )
        .unwrap();
        let e = m
            .create_subnet(None, "vpc-1", net("10.0.1.128/25"), "us-east-1a")
            .unwrap_err();
        assert_eq!(e.code(), "InvalidSubnet.Conflict");
        let e = m
            .create_subnet(None, "vpc-1", net("10.1.0.0/24"), "us-east-1a")
            .unwrap_err();
        assert_eq!(e.code(), "InvalidSubnet.Range");
        let e = m
            .create_subnet(None, "vpc-1", net("10.0.2.0/29"), "us-east-1a")
            .unwrap_err();
        assert_eq!(e.code(), "InvalidSubnet.Range");
        let e = m
            .create_subnet(None, "vpc-2", net("10.0.2.0/24"), "us-east-1a")
            .unwrap_err();
        assert_eq!(e.code(), "InvalidVpcID.NotFound");
    }

    #[test]
    fn reserved_addresses_and_allocation() {
        let mut m = Model::default();
        m.create_vpc(Some("vpc-1".into()), net("10.0.0.0/16"))
            .unwrap();
        m.create_subnet(Some("subnet-a".into()), "vpc-1", net("10.0.1.0/28"), "az")
            .unwrap();
        let req = |ip: Option<&str>| EniRequest {
            subnet_id: "subnet-a".into(),
            private_ip: ip.map(|s| s.parse().unwrap()),
            ..Default::default()
        };
        for r in ["10.0.1.0", "10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.15"] {
            assert!(matches!(
                m.create_network_interface(req(Some(r))),
                Err(ModelError::AddressReserved { .. })
            ));
        }
        assert!(matches!(
            m.create_network_interface(req(Some("10.0.2.4"))),
            Err(ModelError::AddressNotInSubnet { .. })
        ));
        let first = m.create_network_interface(req(None)).unwrap().private_ip;
        assert_eq!(first, Ipv4Addr::new(10, 0, 1, 4));
        m.create_network_interface(req(Some("10.0.1.9"))).unwrap();
        assert_eq!(
            m.create_network_interface(req(Some("10.0.1.9")))
                .unwrap_err()
                .code(),
            "InvalidIPAddress.InUse"
        );
        // 16 - 5 reserved = 11 usable; two used.
        for _ in 0..9 {
            m.create_network_interface(req(None)).unwrap();
        }
        assert_eq!(
            m.create_network_interface(req(None)).unwrap_err().code(),
            "InsufficientFreeAddressesInSubnet"
        );
        // Distinct MACs, default group applied.
        let macs: HashSet<_> = m.enis().map(|e| e.mac).collect();
        assert_eq!(macs.len(), 11);
        let dsg = m.vpc("vpc-1").unwrap().default_security_group.clone();
        assert!(m.enis().all(|e| e.security_groups == vec![dsg.clone()]));
    }

    #[test]
    fn overlapping_vpcs_keep_addresses_apart() {
        let mut m = Model::default();
        for v in ["vpc-1", "vpc-2"] {
            m.create_vpc(Some(v.into()), net("10.0.0.0/16")).unwrap();
            m.create_subnet(Some(format!("subnet-{v}")), v, net("10.0.1.0/24"), "az")
                .unwrap();
        }
        let ip4 = Ipv4Addr::new(10, 0, 1, 5);
        let ip = Some(ip4);
        let a = m
            .create_network_interface(EniRequest {
                subnet_id: "subnet-vpc-1".into(),
                private_ip: ip,
                ..Default::default()
            })
            .unwrap()
            .id
            .clone();
        let b = m
            .create_network_interface(EniRequest {
                subnet_id: "subnet-vpc-2".into(),
                private_ip: ip,
                ..Default::default()
            })
            .unwrap()
            .id
            .clone();
        assert_eq!(m.eni_by_ip("vpc-1", ip4).unwrap().id, a);
        assert_eq!(m.eni_by_ip("vpc-2", ip4).unwrap().id, b);
    }

    #[test]
    fn routes_longest_prefix() {
        let mut m = Model::default();
        let v = m
            .create_vpc(Some("vpc-1".into()), net("10.0.0.0/16"))
            .unwrap()
            .clone();
        m.create_internet_gateway(Some("igw-1".into())).unwrap();
        m.attach_internet_gateway("igw-1", "vpc-1").unwrap();
        m.create_route(
            &v.main_route_table,
            net("0.0.0.0/0"),
            RouteTarget::InternetGateway("igw-1".into()),
        )
        .unwrap();
        let rtb = m.route_table(&v.main_route_table).unwrap();
        assert_eq!(
            rtb.lookup("10.0.9.9".parse().unwrap()).unwrap().target,
            RouteTarget::Local
        );
        assert_eq!(
            rtb.lookup("198.18.0.1".parse().unwrap()).unwrap().target,
            RouteTarget::InternetGateway("igw-1".into())
        );
        assert_eq!(
            m.create_route(
                &v.main_route_table,
                net("0.0.0.0/0"),
                RouteTarget::Blackhole
            )
            .unwrap_err()
            .code(),
            "RouteAlreadyExists"
        );
    }

    #[test]
    fn group_references_stay_in_vpc() {
        let mut m = Model::default();
        m.create_vpc(Some("vpc-1".into()), net("10.0.0.0/16"))
            .unwrap();
        m.create_vpc(Some("vpc-2".into()), net("10.0.0.0/16"))
            .unwrap();
        m.create_security_group(Some("sg-a".into()), "vpc-1", "a", "d")
            .unwrap();
        m.create_security_group(Some("sg-b".into()), "vpc-2", "b", "d")
            .unwrap();
        let rule = SgRule {
            protocol: crate::policy::Protocol::Tcp,
            from_port: 22,
            to_port: 22,
            peer: Peer::Group("sg-b".into()),
            description: None,
        };
        assert_eq!(
            m.authorize_ingress("sg-a", rule).unwrap_err().code(),
            "InvalidGroup.NotFound"
        );
        assert!(m.create_security_group(None, "vpc-1", "a", "d").is_err());
    }
}
