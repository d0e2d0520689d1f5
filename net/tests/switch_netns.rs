//! The switch with real hosts: network namespaces on veth ports, real clients (busybox udhcpc,
//! ISC dhclient, ping, socat, dig, curl) and the switch in its own namespace. Needs root; skips
//! otherwise (see tests/common).

mod common;

use std::time::Duration;

use common::{Lab, can_run};
use kumo_net::counters::DropReason;
use serde_json::json;

const SUBNET_A: &str = "subnet-0000000000000000a";
const SUBNET_B: &str = "subnet-0000000000000000b";

fn mac(last: u8, sub: u8) -> String {
    format!("02:00:0a:00:{sub:02x}:{last:02x}")
}

/// DHCP with busybox udhcpc and ISC dhclient: every option a VPC hands out.
#[test]
fn dhcp_with_real_clients() {
    if !can_run("dhcp_with_real_clients", &["busybox", "dhclient", "ping"]) {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.add_host("pa", &mac(4, 1));
    let b = lab.add_host("pb", &mac(9, 1));
    lab.start(json!({
        "vpcs": [{"cidr": "10.0.0.0/16", "subnets": [{"id": SUBNET_A, "cidr": "10.0.1.0/24"}]}],
        "dhcp_lease_secs": 600,
        "ports": [
            {"netdev": "pa", "subnet": SUBNET_A, "mac": mac(4, 1)},
            {"netdev": "pb", "subnet": SUBNET_A, "mac": mac(9, 1), "private_ip": "10.0.1.9"}
        ]
    }));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // busybox udhcpc: the script records what it was given and configures the interface.
    std::fs::write(
        dir.path().join("udhcpc.sh"),
        format!(
            "#!/bin/sh\nset > {d}/udhcpc.env\ncase \"$1\" in bound|renew) ip addr add $ip/$mask dev $interface; ip route add default via $router;; esac\n"
        ),
    )
    .unwrap();
    // dhclient: same, with its variable names.
    std::fs::write(
        dir.path().join("dhclient.sh"),
        format!(
            "#!/bin/sh\nset > {d}/dhclient.$reason.env\ncase \"$reason\" in BOUND|REBOOT) ip addr add $new_ip_address/$new_subnet_mask dev $interface; ip route add default via $new_routers;; esac\n"
        ),
    )
    .unwrap();
    lab.host(a)
        .sh_ok(&format!("chmod +x {d}/udhcpc.sh {d}/dhclient.sh"));
    lab.host(a).sh_ok(&format!(
        "timeout 20 busybox udhcpc -i eth0 -n -q -t 5 -T 1 -s {d}/udhcpc.sh"
    ));
    let env = std::fs::read_to_string(dir.path().join("udhcpc.env")).unwrap();
    for want in [
        "ip='10.0.1.4'", // lowest free address: .0-.3 are reserved
        "mask='24'",
        "router='10.0.1.1'",
        "dns='10.0.0.2'",
        "hostname='ip-10-0-1-4'",
        "domain='ec2.internal'",
        "lease='600'",
        "serverid='10.0.1.1'",
        "broadcast='10.0.1.255'",
    ] {
        assert!(env.contains(want), "udhcpc did not get {want}: {env}");
    }
    lab.host(b).sh_ok(&format!(
        "timeout 20 dhclient -4 -1 -v -lf {d}/leases -pf {d}/dhclient.pid -sf {d}/dhclient.sh eth0"
    ));
    let _ = lab.host(b).sh(&format!("kill $(cat {d}/dhclient.pid)"));
    let env = std::fs::read_to_string(dir.path().join("dhclient.BOUND.env")).unwrap();
    for want in [
        "new_ip_address='10.0.1.9'",
        "new_subnet_mask='255.255.255.0'",
        "new_routers='10.0.1.1'",
        "new_domain_name_servers='10.0.0.2'",
        "new_host_name='ip-10-0-1-9'",
        "new_domain_name='ec2.internal'",
        "new_dhcp_lease_time='600'",
    ] {
        assert!(env.contains(want), "dhclient did not get {want}: {env}");
    }
    // Both are in the VPC's default group, which admits its own members.
    assert!(lab.host(a).ping("10.0.1.9"));
    assert!(lab.host(b).ping("10.0.1.4"));
}

/// Security groups and network ACLs decide exactly as their rules say; replies of allowed
/// flows pass (stateful groups), and NACLs are stateless.
#[test]
fn security_group_and_nacl_matrix() {
    if !can_run("security_group_and_nacl_matrix", &["ping", "socat", "ss"]) {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.add_host("pa", &mac(5, 1));
    let c = lab.add_host("pc", &mac(6, 1));
    let s = lab.add_host("ps", &mac(5, 2));
    lab.start(json!({
        "vpcs": [{
            "id": "vpc-00000000000000001", "cidr": "10.0.0.0/16",
            "security_groups": [
                {"id": "sg-0000000000000c11e", "name": "client", "ingress": []},
                {"id": "sg-00000000000005e7e", "name": "server", "ingress": [
                    {"protocol": "tcp", "port": 22, "cidr": "10.0.1.0/24"},
                    {"protocol": "tcp", "from_port": 2000, "to_port": 3000, "cidr": "10.0.0.0/16"},
                    {"protocol": "udp", "port": 53, "group": "client"},
                    {"protocol": "icmp", "from_port": 8, "to_port": -1, "cidr": "10.0.1.5/32"}
                ]}
            ],
            "network_acls": [{"id": "acl-0000000000000000b", "entries": [
                {"rule_number": 90, "protocol": "tcp", "port_range": [2222, 2222], "cidr": "10.0.1.0/24", "action": "deny"},
                {"rule_number": 100, "protocol": "-1", "cidr": "0.0.0.0/0", "action": "allow"},
                {"rule_number": 100, "egress": true, "protocol": "-1", "cidr": "0.0.0.0/0", "action": "allow"}
            ]}],
            "subnets": [
                {"id": SUBNET_A, "cidr": "10.0.1.0/24"},
                {"id": SUBNET_B, "cidr": "10.0.2.0/24", "network_acl": "acl-0000000000000000b"}
            ]
        }],
        "ports": [
            {"netdev": "pa", "subnet": SUBNET_A, "mac": mac(5, 1), "private_ip": "10.0.1.5", "security_groups": ["client"], "eni_id": "eni-0000000000000000a"},
            {"netdev": "pc", "subnet": SUBNET_A, "mac": mac(6, 1), "private_ip": "10.0.1.6", "eni_id": "eni-0000000000000000c"},
            {"netdev": "ps", "subnet": SUBNET_B, "mac": mac(5, 2), "private_ip": "10.0.2.5", "security_groups": ["server"], "eni_id": "eni-00000000000000005"}
        ]
    }));
    lab.host(a).static_ip("10.0.1.5/24", "10.0.1.1");
    lab.host(c).static_ip("10.0.1.6/24", "10.0.1.1");
    lab.host(s).static_ip("10.0.2.5/24", "10.0.2.1");
    let _servers = lab.host(s).serve(&[22, 80, 2222, 2223], &[53], "pong");
    let _a_server = lab.host(a).serve(&[22], &[], "a");

    let (ha, hc, hs) = (lab.host(a), lab.host(c), lab.host(s));
    // ICMP echo: only from 10.0.1.5/32.
    assert!(ha.ping("10.0.2.5"), "a -> s ping allowed by the icmp rule");
    assert!(!hc.ping("10.0.2.5"), "c -> s ping has no rule");
    // TCP 22 from 10.0.1.0/24: both. The replies pass although neither client's groups allow
    // any inbound traffic: the groups are stateful.
    assert_eq!(ha.tcp("10.0.2.5", 22), "pong");
    assert_eq!(hc.tcp("10.0.2.5", 22), "pong");
    // TCP 80: no rule.
    assert_eq!(ha.tcp("10.0.2.5", 80), "");
    // TCP 2222: the group allows 2000-3000 but the subnet's NACL rule 90 denies it; 2223 passes.
    assert_eq!(ha.tcp("10.0.2.5", 2222), "");
    assert_eq!(ha.tcp("10.0.2.5", 2223), "pong");
    // UDP 53 from members of "client" only.
    assert_eq!(ha.udp("10.0.2.5", 53), "pong");
    assert_eq!(hc.udp("10.0.2.5", 53), "");
    // Inbound to a: "client" has no inbound rule, so s cannot open a connection to a.
    assert_eq!(hs.tcp("10.0.1.5", 22), "");
    // Same subnet, c -> a: default group (c) may send, "client" (a) admits nothing.
    assert!(!hc.ping("10.0.1.5"));

    let (records, drops) = lab.flow_log();
    let has = |v: &[String], needle: &str| v.iter().any(|l| l.contains(needle));
    assert!(
        has(
            &drops,
            "sg-00000000000005e7e: no inbound rule for tcp/80 from 10.0.1.5"
        ),
        "{drops:#?}"
    );
    assert!(
        has(
            &drops,
            "acl-0000000000000000b: inbound rule 90 denies tcp/2222 from 10.0.1.5"
        ),
        "{drops:#?}"
    );
    assert!(
        has(&drops, "no inbound rule for udp/53 from 10.0.1.6"),
        "{drops:#?}"
    );
    // AWS default format: ACCEPT at both ENIs, REJECT at the receiving one.
    assert!(
        records.iter().any(|l| l
            .starts_with("2 123456789012 eni-00000000000000005 10.0.1.5 10.0.2.5 ")
            && l.contains(" 80 6 ")
            && l.ends_with(" REJECT OK")),
        "{records:#?}"
    );
    assert!(
        records.iter().any(|l| l
            .starts_with("2 123456789012 eni-0000000000000000a 10.0.1.5 10.0.2.5 ")
            && l.contains(" 22 6 ")
            && l.ends_with(" ACCEPT OK")),
        "{records:#?}"
    );
    assert!(lab.dropped(DropReason::SecurityGroup) > 0);
    assert!(lab.dropped(DropReason::NetworkAcl) > 0);

    // NACLs are stateless: with outbound limited to TCP port 22, s's replies (to a's ephemeral
    // port) are denied and the connection fails although the security group allows it...
    lab.rt().with_switch(|sw| {
        let acl = sw
            .model_mut()
            .network_acl_mut("acl-0000000000000000b")
            .unwrap();
        acl.replace_entry(kumo_net::policy::nacl::NaclEntry {
            rule_number: 100,
            direction: kumo_net::policy::Direction::Outbound,
            protocol: kumo_net::policy::Protocol::Tcp,
            port_range: Some((22, 22)),
            icmp_type_code: None,
            cidr: "0.0.0.0/0".parse().unwrap(),
            action: kumo_net::policy::nacl::RuleAction::Allow,
        })
        .unwrap();
    });
    assert_eq!(ha.tcp("10.0.2.5", 2223), "");
    // ... until an ephemeral-port rule lets replies out.
    lab.rt().with_switch(|sw| {
        let acl = sw
            .model_mut()
            .network_acl_mut("acl-0000000000000000b")
            .unwrap();
        acl.add_entry(kumo_net::policy::nacl::NaclEntry {
            rule_number: 110,
            direction: kumo_net::policy::Direction::Outbound,
            protocol: kumo_net::policy::Protocol::Tcp,
            port_range: Some((1024, 65535)),
            icmp_type_code: None,
            cidr: "10.0.1.0/24".parse().unwrap(),
            action: kumo_net::policy::nacl::RuleAction::Allow,
        })
        .unwrap();
    });
    assert_eq!(ha.tcp("10.0.2.5", 2223), "pong");

    // A rule added at run time applies to the next packet (the NACL must let UDP replies out
    // too: it is stateless).
    lab.rt().with_switch(|sw| {
        let acl = sw
            .model_mut()
            .network_acl_mut("acl-0000000000000000b")
            .unwrap();
        acl.add_entry(kumo_net::policy::nacl::NaclEntry {
            rule_number: 120,
            direction: kumo_net::policy::Direction::Outbound,
            protocol: kumo_net::policy::Protocol::Udp,
            port_range: Some((1024, 65535)),
            icmp_type_code: None,
            cidr: "10.0.1.0/24".parse().unwrap(),
            action: kumo_net::policy::nacl::RuleAction::Allow,
        })
        .unwrap();
    });
    assert_eq!(hc.udp("10.0.2.5", 53), "");
    lab.rt().with_switch(|sw| {
        sw.model_mut()
            .authorize_ingress(
                "sg-00000000000005e7e",
                kumo_net::policy::security_group::SgRule {
                    protocol: kumo_net::policy::Protocol::Udp,
                    from_port: 53,
                    to_port: 53,
                    peer: kumo_net::policy::security_group::Peer::Cidr(
                        "10.0.1.6/32".parse().unwrap(),
                    ),
                    description: None,
                },
            )
            .unwrap();
    });
    assert_eq!(hc.udp("10.0.2.5", 53), "pong");
}

/// Routing across subnets decrements the TTL; VPCs are isolated even when their CIDRs overlap,
/// and an address means the ENI of the sender's own VPC.
#[test]
fn routing_and_isolation_between_vpcs() {
    if !can_run(
        "routing_and_isolation_between_vpcs",
        &["ping", "socat", "ss"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    let x = lab.add_host("px", &mac(5, 1)); // vpc 1, 10.0.1.5
    let w = lab.add_host("pw", &mac(6, 2)); // vpc 1, 10.0.2.6 (other subnet)
    let y = lab.add_host("py", "02:00:0b:00:01:05"); // vpc 2, 10.0.1.5 (same address as x)
    let z = lab.add_host("pz", "02:00:0b:00:01:07"); // vpc 2, 10.0.1.7
    let open = json!([{"protocol": "-1", "cidr": "0.0.0.0/0"}]);
    lab.start(json!({
        "vpcs": [
            {"id": "vpc-00000000000000001", "cidr": "10.0.0.0/16",
             "default_security_group": {"ingress": open},
             "subnets": [{"id": "subnet-00000000000000011", "cidr": "10.0.1.0/24"},
                         {"id": "subnet-00000000000000012", "cidr": "10.0.2.0/24"}]},
            {"id": "vpc-00000000000000002", "cidr": "10.0.0.0/16",
             "default_security_group": {"ingress": open},
             "subnets": [{"id": "subnet-00000000000000021", "cidr": "10.0.1.0/24"}]}
        ],
        "ports": [
            {"netdev": "px", "subnet": "subnet-00000000000000011", "mac": mac(5, 1), "private_ip": "10.0.1.5"},
            {"netdev": "pw", "subnet": "subnet-00000000000000012", "mac": mac(6, 2), "private_ip": "10.0.2.6"},
            {"netdev": "py", "subnet": "subnet-00000000000000021", "mac": "02:00:0b:00:01:05", "private_ip": "10.0.1.5"},
            {"netdev": "pz", "subnet": "subnet-00000000000000021", "mac": "02:00:0b:00:01:07", "private_ip": "10.0.1.7"}
        ]
    }));
    lab.host(x).static_ip("10.0.1.5/24", "10.0.1.1");
    lab.host(w).static_ip("10.0.2.6/24", "10.0.2.1");
    lab.host(y).static_ip("10.0.1.5/24", "10.0.1.1");
    lab.host(z).static_ip("10.0.1.7/24", "10.0.1.1");
    let _sx = lab.host(x).serve(&[80], &[], "x");
    let _sy = lab.host(y).serve(&[80], &[], "y");

    // Across subnets, through the router: TTL 64 arrives as 63.
    let out = lab.host(x).sh_ok("ping -c 1 -W 1 10.0.2.6");
    assert!(out.contains("ttl=63"), "{out}");
    assert_eq!(lab.host(w).tcp("10.0.1.5", 80), "x");
    // VPC 2's 10.0.1.5 is y, never x.
    assert_eq!(lab.host(z).tcp("10.0.1.5", 80), "y");
    // Nothing of the other VPC is reachable.
    assert!(!lab.host(x).ping("10.0.1.7"), "z is in the other VPC");
    assert!(!lab.host(z).ping("10.0.2.6"), "w is in the other VPC");
    assert!(lab.dropped(DropReason::NoSuchAddress) >= 2);
}

/// Frames whose source MAC or IP is not the ENI's are dropped and counted.
#[test]
fn spoofed_packets_are_dropped() {
    if !can_run("spoofed_packets_are_dropped", &["ping"]) {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.add_host("pa", &mac(5, 1));
    let b = lab.add_host("pb", &mac(6, 1));
    lab.start(json!({
        "vpcs": [{"cidr": "10.0.0.0/16",
                  "default_security_group": {"ingress": [{"protocol": "-1", "cidr": "0.0.0.0/0"}]},
                  "subnets": [{"id": SUBNET_A, "cidr": "10.0.1.0/24"}]}],
        "ports": [
            {"netdev": "pa", "subnet": SUBNET_A, "mac": mac(5, 1), "private_ip": "10.0.1.5"},
            {"netdev": "pb", "subnet": SUBNET_A, "mac": mac(6, 1), "private_ip": "10.0.1.6"}
        ]
    }));
    lab.host(a).static_ip("10.0.1.5/24", "10.0.1.1");
    lab.host(b).static_ip("10.0.1.6/24", "10.0.1.1");
    assert!(lab.host(a).ping("10.0.1.6"));
    // A second address the ENI does not own.
    lab.host(a).sh_ok("ip addr add 10.0.1.99/24 dev eth0");
    assert!(
        !lab.host(a)
            .sh("ping -c 1 -W 1 -I 10.0.1.99 10.0.1.6")
            .status
            .success()
    );
    assert!(lab.dropped(DropReason::SpoofedIp) > 0);
    // Another MAC.
    lab.host(a)
        .sh_ok("ip link set eth0 address 02:00:0a:00:01:63");
    assert!(!lab.host(a).ping("10.0.1.6"));
    assert!(lab.dropped(DropReason::SpoofedMac) > 0);
    let (_, drops) = lab.flow_log();
    assert!(
        drops
            .iter()
            .any(|l| l.contains("source 10.0.1.99 is not") && l.contains("address 10.0.1.5")),
        "{drops:#?}"
    );
    // Back to its own MAC and address: fine again.
    lab.host(a)
        .sh_ok(&format!("ip link set eth0 address {}", mac(5, 1)));
    assert!(lab.host(a).ping("10.0.1.6"));
}

/// The VPC DNS server answers private names both ways and refuses the rest, saying so.
#[test]
fn vpc_dns_names() {
    if !can_run("vpc_dns_names", &["dig"]) {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.add_host("pa", &mac(5, 1));
    lab.start(json!({
        "vpcs": [{"cidr": "10.0.0.0/16", "subnets": [{"id": SUBNET_A, "cidr": "10.0.1.0/24"}]}],
        "ports": [{"netdev": "pa", "subnet": SUBNET_A, "mac": mac(5, 1), "private_ip": "10.0.1.5"}]
    }));
    let h = lab.host(a);
    h.static_ip("10.0.1.5/24", "10.0.1.1");
    let dig = |args: &str| h.sh_ok(&format!("dig +time=1 +tries=2 {args}"));
    assert_eq!(
        dig("+short @10.0.0.2 ip-10-0-2-7.ec2.internal").trim(),
        "10.0.2.7"
    );
    assert_eq!(
        dig("+short @10.0.0.2 -x 10.0.1.5").trim(),
        "ip-10-0-1-5.ec2.internal."
    );
    assert_eq!(
        dig("+short @169.254.169.253 ip-10-0-1-5.ec2.internal").trim(),
        "10.0.1.5"
    );
    assert!(dig("@10.0.0.2 ip-10-9-0-1.ec2.internal").contains("status: NXDOMAIN"));
    assert!(dig("@10.0.0.2 example.com").contains("status: REFUSED"));
}

/// The internet gateway: the host reaches instances by public address (1:1 NAT) under the route
/// table, NACL and security group, and instances reach the host.
#[test]
fn internet_gateway_nat() {
    if !can_run("internet_gateway_nat", &["ping", "socat", "ss"]) {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.add_host("pa", &mac(5, 1));
    let b = lab.add_host("pb", &mac(5, 2));
    let h = lab.add_gateway_host("pigw", "198.18.0.1/24");
    lab.start(json!({
        "internet_gateway": {"netdev": "pigw", "host_ip": "198.18.0.1", "public_cidr": "198.18.0.0/24"},
        "vpcs": [{"cidr": "10.0.0.0/16", "internet_gateway": true,
                  "route_tables": [{"id": "rtb-0000000000000publ", "routes": [{"destination": "0.0.0.0/0", "target": "igw"}]}],
                  "security_groups": [{"name": "ssh", "ingress": [
                      {"protocol": "tcp", "port": 22, "cidr": "0.0.0.0/0"},
                      {"protocol": "icmp", "from_port": -1, "to_port": -1, "cidr": "0.0.0.0/0"}]}],
                  "subnets": [{"id": SUBNET_A, "cidr": "10.0.1.0/24", "route_table": "rtb-0000000000000publ"},
                              {"id": SUBNET_B, "cidr": "10.0.2.0/24"}]}],
        "ports": [
            {"netdev": "pa", "subnet": SUBNET_A, "mac": mac(5, 1), "private_ip": "10.0.1.5",
             "security_groups": ["ssh"], "public_ip": "198.18.0.10"},
            {"netdev": "pb", "subnet": SUBNET_B, "mac": mac(5, 2), "private_ip": "10.0.2.5",
             "security_groups": ["ssh"], "public_ip": "198.18.0.11"}
        ]
    }));
    lab.host(a).static_ip("10.0.1.5/24", "10.0.1.1");
    lab.host(b).static_ip("10.0.2.5/24", "10.0.2.1");
    let _ssh = lab
        .host(a)
        .spawn("socat TCP-LISTEN:22,reuseaddr,fork SYSTEM:'echo $SOCAT_PEERADDR'");
    let _ssh_b = lab.host(b).serve(&[22], &[], "b");
    std::thread::sleep(Duration::from_millis(300));
    let host = lab.host(h);
    // The first packet may go to ARP resolution of the host side; retry once.
    assert!(host.ping("198.18.0.10") || host.ping("198.18.0.10"));
    // The instance sees the host's own address (no NAT on the host side).
    assert_eq!(host.tcp("198.18.0.10", 22), "198.18.0.1");
    // Outbound from the instance: its traffic leaves as its public address.
    assert!(lab.host(a).ping("198.18.0.1"));
    // b's subnet has no route to the internet gateway: unreachable in both directions.
    assert_eq!(host.tcp("198.18.0.11", 22), "");
    assert!(!lab.host(b).ping("198.18.0.1"));
    // Unassigned public addresses are not answered.
    assert!(!host.ping("198.18.0.12"));
    // The group still applies: port 80 has no rule.
    assert_eq!(host.tcp("198.18.0.10", 80), "");
    let (_, drops) = lab.flow_log();
    assert!(
        drops
            .iter()
            .any(|l| l.contains("has no route to 198.18.0.1 through an attached internet gateway")),
        "{drops:#?}"
    );
    assert!(
        drops
            .iter()
            .any(|l| l.contains("no inbound rule for tcp/80 from 198.18.0.1")),
        "{drops:#?}"
    );
}

/// The metadata service answers through the switch, only for a port with an instance.
#[test]
fn metadata_through_the_switch() {
    if !can_run("metadata_through_the_switch", &["curl"]) {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.add_host("pa", &mac(5, 1));
    let b = lab.add_host("pb", &mac(6, 1));
    lab.start(json!({
        "vpcs": [{"cidr": "10.0.0.0/16", "subnets": [{"id": SUBNET_A, "cidr": "10.0.1.0/24"}]}],
        "ports": [
            {"netdev": "pa", "subnet": SUBNET_A, "mac": mac(5, 1), "private_ip": "10.0.1.5",
             "instance": {"instance_id": "i-0123456789abcdef0", "user_data": "#!/bin/sh\necho hi\n"}},
            {"netdev": "pb", "subnet": SUBNET_A, "mac": mac(6, 1), "private_ip": "10.0.1.6"}
        ]
    }));
    lab.host(a).static_ip("10.0.1.5/24", "10.0.1.1");
    lab.host(b).static_ip("10.0.1.6/24", "10.0.1.1");
    let md = "http://169.254.169.254/latest";
    let ha = lab.host(a);
    assert_eq!(
        ha.sh_ok(&format!("curl -sf -m 5 {md}/meta-data/instance-id")),
        "i-0123456789abcdef0"
    );
    assert_eq!(
        ha.sh_ok(&format!("curl -sf -m 5 {md}/meta-data/local-ipv4")),
        "10.0.1.5"
    );
    let token = ha.sh_ok(&format!(
        "curl -sf -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' {md}/api/token"
    ));
    assert!(!token.is_empty());
    assert_eq!(
        ha.sh_ok(&format!(
            "curl -sf -m 5 -H 'X-aws-ec2-metadata-token: {token}' {md}/user-data"
        )),
        "#!/bin/sh\necho hi\n"
    );
    assert!(
        !lab.host(b)
            .sh(&format!("curl -sf -m 2 {md}/meta-data/instance-id"))
            .status
            .success()
    );
    assert!(lab.dropped(DropReason::NoMetadataService) > 0);
}

/// Truncated frames, bad checksums, fragments, unknown ethertypes and floods are dropped and
/// counted; the switch keeps forwarding.
#[test]
fn bad_frames_are_counted_and_do_not_stall() {
    if !can_run("bad_frames_are_counted_and_do_not_stall", &["ping"]) {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.add_host("pa", &mac(5, 1));
    let b = lab.add_host("pb", &mac(6, 1));
    lab.start(json!({
        "vpcs": [{"cidr": "10.0.0.0/16",
                  "subnets": [{"id": SUBNET_A, "cidr": "10.0.1.0/24"}]}],
        "ports": [
            {"netdev": "pa", "subnet": SUBNET_A, "mac": mac(5, 1), "private_ip": "10.0.1.5"},
            {"netdev": "pb", "subnet": SUBNET_A, "mac": mac(6, 1), "private_ip": "10.0.1.6"}
        ]
    }));
    lab.host(a).static_ip("10.0.1.5/24", "10.0.1.1");
    lab.host(b).static_ip("10.0.1.6/24", "10.0.1.1");
    assert!(lab.host(a).ping("10.0.1.6"));

    let src = kumo_net::MacAddr([2, 0, 10, 0, 1, 5]);
    let router = kumo_net::switch::ROUTER_MAC;
    let good = kumo_net::packet::build_udp(
        src,
        router,
        ("10.0.1.5".parse().unwrap(), 4000),
        ("10.0.1.6".parse().unwrap(), 4000),
        b"payload",
    );
    let mut frames: Vec<Vec<u8>> = Vec::new();
    frames.push(good[..20].to_vec()); // truncated
    let mut bad_ip = good.clone();
    bad_ip[14 + 10] ^= 0x55;
    frames.push(bad_ip);
    let mut bad_udp = good.clone();
    let n = bad_udp.len();
    bad_udp[n - 1] ^= 0x55;
    frames.push(bad_udp);
    let mut frag = kumo_net::packet::build_udp(
        src,
        router,
        ("10.0.1.5".parse().unwrap(), 4000),
        ("10.0.1.6".parse().unwrap(), 4000),
        b"fragment",
    );
    frag[14 + 6] = 0x20; // more fragments
    frag[14 + 10] = 0;
    frag[14 + 11] = 0;
    let c = !kumo_net_checksum(&frag[14..34]);
    frag[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    frames.push(frag);
    let mut lldp = good.clone();
    lldp[12] = 0x88;
    lldp[13] = 0xcc;
    frames.push(lldp);
    // A flood of random garbage and of packets to nowhere.
    let mut seed = 0x1234_5678u64;
    for i in 0..20_000u32 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 200) as usize;
        let mut f: Vec<u8> = (0..len).map(|j| (seed >> (j % 56)) as u8).collect();
        if f.len() >= 12 {
            f[6..12].copy_from_slice(&src.0);
        }
        if i % 2 == 0 {
            let mut g = good.clone();
            g[14 + 19] = (i % 250) as u8 + 2; // 10.0.1.x with no ENI
            g[14 + 10] = 0;
            g[14 + 11] = 0;
            let c = !kumo_net_checksum(&g[14..34]);
            g[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
            // The UDP checksum is now wrong for the new address; zero it (optional in IPv4).
            let l4 = 34;
            g[l4 + 6] = 0;
            g[l4 + 7] = 0;
            f = g;
        }
        frames.push(f);
    }
    let sent = lab.host(a).enter(|| {
        let sock = kumo_net::sys::PacketSocket::open("eth0").expect("packet socket in host");
        let msgs: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| {
                let mut m = kumo_net::packet::VnetHdr::default().to_bytes().to_vec();
                m.extend_from_slice(f);
                m
            })
            .collect();
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        refs.len() - sock.send_batch(&refs)
    });
    assert!(sent > 10_000, "sent only {sent}");
    // Still forwarding.
    std::thread::sleep(Duration::from_millis(200));
    assert!(lab.host(a).ping("10.0.1.6") || lab.host(a).ping("10.0.1.6"));
    assert!(lab.rt().is_running());
    for r in [
        DropReason::Truncated,
        DropReason::BadIpChecksum,
        DropReason::BadL4Checksum,
        DropReason::Fragment,
        DropReason::UnknownEthertype,
        DropReason::NoSuchAddress,
    ] {
        assert!(lab.dropped(r) > 0, "no {r} drops counted");
    }
}

fn kumo_net_checksum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The standalone switch process (`examples/switch.rs`), as other parts use it.
#[test]
fn example_switch_process() {
    if !can_run("example_switch_process", &["busybox", "ping"]) {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/switch");
    if !bin.exists() {
        common::skip(
            "example_switch_process",
            &format!(
                "{} not built (cargo test builds examples; cargo build -p kumo-net --example switch)",
                bin.display()
            ),
        );
        return;
    }
    let mut lab = Lab::new();
    let a = lab.add_host("pa", &mac(4, 1));
    let b = lab.add_host("pb", &mac(5, 1));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switch.json");
    std::fs::write(
        &cfg,
        json!({
            "flow_log": {"path": dir.path().join("flows.log"), "drop_log": dir.path().join("drops.log")},
            "vpcs": [{"cidr": "10.0.0.0/16", "subnets": [{"id": SUBNET_A, "cidr": "10.0.1.0/24"}]}],
            "ports": [
                {"netdev": "pa", "subnet": SUBNET_A, "mac": mac(4, 1)},
                {"netdev": "pb", "subnet": SUBNET_A, "mac": mac(5, 1)}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let mut sw = lab
        .sw
        .spawn(&format!("{} --config {}", bin.display(), cfg.display()));
    let mut out = std::io::BufReader::new(sw.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).expect("ready line");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["ports"][1]["private_ip"], "10.0.1.5");
    let d = dir.path().display();
    std::fs::write(
        dir.path().join("u.sh"),
        "#!/bin/sh\ncase \"$1\" in bound) ip addr add $ip/$mask dev $interface; ip route add default via $router;; esac\n",
    )
    .unwrap();
    for h in [a, b] {
        lab.host(h).sh_ok(&format!(
            "chmod +x {d}/u.sh && timeout 20 busybox udhcpc -i eth0 -n -q -t 5 -T 1 -s {d}/u.sh"
        ));
    }
    assert!(lab.host(a).ping("10.0.1.5"));
    // SIGTERM: flushes the flow log and exits 0.
    // SAFETY: kill(2) on the `ip netns exec` child we spawned (it exec'd the switch).
    unsafe {
        libc::kill(sw.id() as i32, libc::SIGTERM);
    }
    let status = sw.wait().unwrap();
    assert!(status.success(), "switch exited with {status}");
    let flows = std::fs::read_to_string(dir.path().join("flows.log")).unwrap();
    assert!(flows.contains(" 10.0.1.4 10.0.1.5 0 0 1 "), "{flows}");
}

/// Opens a TAP device (as a VMM does: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) in the calling
/// thread's network namespace and returns its fd.
fn open_tap(name: &str) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    // SAFETY: ifreq is plain data; all-zero is valid before we fill name and flags.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads the ifreq we own; the fd is an open /dev/net/tun.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &req) };
    assert_eq!(r, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    f
}

/// Reads frames from the TAP until `want` matches one (or 3 s pass).
fn read_tap_until(
    tap: &mut std::fs::File,
    mut want: impl FnMut(&kumo_net::packet::Frame) -> bool,
) -> bool {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut buf = vec![0u8; 70_000];
    while std::time::Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        let n = tap.read(&mut buf).expect("read tap");
        let vnet = kumo_net::packet::VnetHdr::from_bytes(&buf[..n]).expect("vnet header");
        if let Ok(f) = kumo_net::packet::parse_frame(&buf[10..n], &vnet)
            && want(&f)
        {
            return true;
        }
    }
    false
}

/// A port on a TAP whose fd a VMM holds (here: the test): DHCP, ARP and forwarding to a veth host
/// work with virtio-net headers on the fd, as virtio-net in kumo-vmm sees them.
#[test]
fn tap_port_like_a_vmm() {
    use std::io::Write;
    if !can_run("tap_port_like_a_vmm", &["ping"]) {
        return;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        common::skip(
            "tap_port_like_a_vmm",
            "/dev/net/tun is missing (modprobe tun)",
        );
        return;
    }
    let mut lab = Lab::new();
    let b = lab.add_host("pb", &mac(6, 1));
    let mut tap = lab.sw.enter(|| open_tap("ktap0"));
    lab.start(json!({
        "vpcs": [{"cidr": "10.0.0.0/16", "subnets": [{"id": SUBNET_A, "cidr": "10.0.1.0/24"}]}],
        "ports": [
            {"netdev": "ktap0", "subnet": SUBNET_A, "mac": mac(5, 1), "private_ip": "10.0.1.5"},
            {"netdev": "pb", "subnet": SUBNET_A, "mac": mac(6, 1), "private_ip": "10.0.1.6"}
        ]
    }));
    lab.host(b).static_ip("10.0.1.6/24", "10.0.1.1");
    let guest: kumo_net::MacAddr = mac(5, 1).parse().unwrap();
    let router = kumo_net::switch::ROUTER_MAC;
    let mut send = |frame: &[u8]| {
        let mut m = kumo_net::packet::VnetHdr::default().to_bytes().to_vec();
        m.extend_from_slice(frame);
        tap.write_all(&m).expect("write tap");
    };
    // DHCP.
    let discover =
        kumo_net::dhcp::client_message(dhcproto::v4::MessageType::Discover, guest, 77, None, false);
    send(&kumo_net::packet::build_udp(
        guest,
        kumo_net::MacAddr::BROADCAST,
        (std::net::Ipv4Addr::UNSPECIFIED, 68),
        (std::net::Ipv4Addr::BROADCAST, 67),
        &discover,
    ));
    // ARP for the neighbour.
    send(&kumo_net::packet::build_arp(
        kumo_net::MacAddr::BROADCAST,
        guest,
        &kumo_net::packet::Arp {
            operation: kumo_net::packet::Arp::REQUEST,
            sender_mac: guest,
            sender_ip: "10.0.1.5".parse().unwrap(),
            target_mac: kumo_net::MacAddr::ZERO,
            target_ip: "10.0.1.6".parse().unwrap(),
        },
    ));
    // An echo request to the veth host.
    let echo = etherparse::PacketBuilder::ethernet2(guest.0, router.0)
        .ipv4([10, 0, 1, 5], [10, 0, 1, 6], 64)
        .icmpv4_echo_request(0x4b4d, 1);
    let mut frame = Vec::new();
    echo.write(&mut frame, b"kumo tap test").unwrap();
    send(&frame);
    let mut saw = (false, false, false);
    let got_all = read_tap_until(&mut tap, |f| {
        match f.kind {
            kumo_net::packet::FrameKind::Ipv4(info) if info.pkt.src_port() == Some(67) => {
                saw.0 = true
            }
            kumo_net::packet::FrameKind::Arp(a)
                if a.sender_ip == std::net::Ipv4Addr::new(10, 0, 1, 6) =>
            {
                assert_eq!(a.sender_mac, router);
                saw.1 = true
            }
            kumo_net::packet::FrameKind::Ipv4(info)
                if matches!(info.pkt.l4, kumo_net::policy::L4::Icmp { icmp_type: 0, .. }) =>
            {
                assert_eq!(info.pkt.src, std::net::Ipv4Addr::new(10, 0, 1, 6));
                assert_eq!(f.dst_mac, guest);
                saw.2 = true
            }
            _ => {}
        }
        saw == (true, true, true)
    });
    assert!(got_all, "DHCP offer, ARP reply, echo reply seen: {saw:?}");
}

/// systemd-networkd's DHCP client, run in the host namespace with a private mount namespace so
/// that only our .network file is seen and its state goes to a temporary directory. There is no
/// udevd for the namespace, so a minimal udev database entry marks the links initialized (what
/// udevd would have written).
#[test]
fn dhcp_with_systemd_networkd() {
    let networkd = "/lib/systemd/systemd-networkd";
    if !can_run("dhcp_with_systemd_networkd", &["unshare", "ping"]) {
        return;
    }
    if !std::path::Path::new(networkd).exists() {
        common::skip(
            "dhcp_with_systemd_networkd",
            "systemd-networkd is not installed (package systemd)",
        );
        return;
    }
    let mut lab = Lab::new();
    let a = lab.add_host("pa", &mac(7, 1));
    let b = lab.add_host("pb", &mac(8, 1));
    lab.start(json!({
        "vpcs": [{"cidr": "10.0.0.0/16", "subnets": [{"id": SUBNET_A, "cidr": "10.0.1.0/24"}]}],
        "ports": [
            {"netdev": "pa", "subnet": SUBNET_A, "mac": mac(7, 1), "private_ip": "10.0.1.7"},
            {"netdev": "pb", "subnet": SUBNET_A, "mac": mac(8, 1), "private_ip": "10.0.1.8"}
        ]
    }));
    lab.host(b).static_ip("10.0.1.8/24", "10.0.1.1");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    lab.host(a).sh_ok(&format!(
        "mkdir -p {d}/network {d}/netif {d}/udev/data && chown systemd-network:systemd-network {d}/netif && chmod 755 {d}/netif {d} && \
         printf '[Match]\\nName=eth0\\n[Network]\\nDHCP=ipv4\\nIPv6AcceptRA=no\\nLinkLocalAddressing=no\\n' > {d}/network/10-eth0.network && \
         printf 'I:1\\n' > {d}/udev/data/n$(cat /sys/class/net/eth0/ifindex) && printf 'I:1\\n' > {d}/udev/data/n1"
    ));
    let _networkd = lab.host(a).spawn(&format!(
        "unshare -m sh -c 'mount --make-rprivate / && \
         mkdir -p /run/udev /run/systemd/network && mount --bind {d}/udev /run/udev && \
         mount --bind {d}/network /run/systemd/network && \
         mount -t tmpfs tmpfs /etc/systemd/network 2>/dev/null; \
         mkdir -p /run/systemd/netif && mount --bind {d}/netif /run/systemd/netif && \
         exec {networkd}'"
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let addr = lab.host(a).sh_ok("ip -4 -o addr show dev eth0");
        if addr.contains("10.0.1.7/24") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "systemd-networkd got no lease: {addr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let route = lab.host(a).sh_ok("ip -4 route show default");
    assert!(route.contains("via 10.0.1.1"), "{route}");
    // The lease file records what the server said.
    let leases = lab
        .host(a)
        .sh_ok(&format!("cat {d}/netif/leases/* 2>/dev/null || true"));
    for want in [
        "ADDRESS=10.0.1.7",
        "ROUTER=10.0.1.1",
        "DNS=10.0.0.2",
        "HOSTNAME=ip-10-0-1-7",
        "DOMAINNAME=ec2.internal",
    ] {
        assert!(leases.contains(want), "lease lacks {want}: {leases}");
    }
    assert!(lab.host(a).ping("10.0.1.8"));
}

/// Segmentation-offloaded TCP (veth TSO/GRO) crosses the switch as super-packets: the policy is
/// decided once per header, and the frames are forwarded whole, not split to the MTU.
#[test]
fn offloaded_segments_stay_whole() {
    if !can_run("offloaded_segments_stay_whole", &["socat", "ss"]) {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.add_host("pa", &mac(5, 1));
    let b = lab.add_host("pb", &mac(5, 2));
    lab.start(json!({
        "vpcs": [{"cidr": "10.0.0.0/16",
                  "security_groups": [{"name": "sink", "ingress": [{"protocol": "tcp", "port": 5001, "cidr": "10.0.1.0/24"}]}],
                  "subnets": [{"id": SUBNET_A, "cidr": "10.0.1.0/24"}, {"id": SUBNET_B, "cidr": "10.0.2.0/24"}]}],
        "ports": [
            {"netdev": "pa", "subnet": SUBNET_A, "mac": mac(5, 1), "private_ip": "10.0.1.5"},
            {"netdev": "pb", "subnet": SUBNET_B, "mac": mac(5, 2), "private_ip": "10.0.2.5", "security_groups": ["sink"]}
        ]
    }));
    lab.host(a).static_ip("10.0.1.5/24", "10.0.1.1");
    lab.host(b).static_ip("10.0.2.5/24", "10.0.2.1");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("received");
    let _sink = lab.host(b).spawn(&format!(
        "socat -u TCP-LISTEN:5001,reuseaddr OPEN:{},creat",
        out.display()
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !lab
        .host(b)
        .sh("ss -Hltn 'sport = :5001' | grep -q LISTEN")
        .status
        .success()
    {
        assert!(std::time::Instant::now() < deadline, "sink did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = lab.rt().with_switch(|s| s.counters().forwarded);
    const BYTES: u64 = 64 << 20;
    lab.host(a).sh_ok(&format!(
        "head -c {BYTES} /dev/zero | socat -u - TCP:10.0.2.5:5001,connect-timeout=2"
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) < BYTES {
        assert!(
            std::time::Instant::now() < deadline,
            "not all bytes arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let frames = lab.rt().with_switch(|s| s.counters().forwarded) - before;
    // At the 1500-byte MTU this would be at least 2 * 46,000 frames (data plus ACKs); whole
    // super-packets need far fewer.
    let mtu_frames = BYTES / 1448;
    eprintln!("{frames} frames forwarded for {BYTES} bytes ({mtu_frames} MTU-sized data frames)");
    assert!(
        frames < mtu_frames,
        "{frames} frames forwarded for {BYTES} bytes: segments were split (MTU-sized would be {mtu_frames} data frames)"
    );
}
