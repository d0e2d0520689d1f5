//! The standalone kumo VPC switch, for tests, benchmarks and other parts' integration tests.
//!
//! ```text
//! cargo run -p kumo-net --example switch -- --config FILE.json
//! ```
//!
//! Runs as root (AF_PACKET). The netdevs named in the file must exist in the switch's network
//! namespace (run it under `ip netns exec NS` to keep it in one); the switch removes any IPv6
//! from them, disables forwarding on them and brings them up, and refuses a netdev with an IPv4
//! address. Once every port is attached it prints ONE line to stdout:
//!
//! ```text
//! {"ready":true,"ports":[{"port":1,"netdev":"sw-a","role":"eni","eni_id":"eni-...","mac":"02:..","private_ip":"10.0.1.5","public_ip":null}, ...]}
//! ```
//!
//! SIGUSR1 writes pending flow-log records and the counters (to stderr, as one `counters: ...`
//! line); SIGINT/SIGTERM do the same and exit 0. Logs go to stderr (`RUST_LOG=debug` shows every
//! drop with its reason).
//!
//! # The file
//!
//! ```json
//! {
//!   "region": "us-east-1",                      // default us-east-1 (names: ip-10-0-1-5.ec2.internal)
//!   "account_id": "123456789012",
//!   "dhcp_lease_secs": 3600,
//!   "flow_log": {"path": "/tmp/flows.log", "drop_log": "/tmp/drops.log",
//!                "interval_secs": 60, "format": "${version} ... ${reject-reason}"},
//!   "internet_gateway": {"netdev": "sw-igw", "host_ip": "198.18.0.1", "public_cidr": "198.18.0.0/24"},
//!   "vpcs": [{
//!     "id": "vpc-0000000000000000a", "cidr": "10.0.0.0/16",
//!     "internet_gateway": true,                 // or "igw-...": create and attach one
//!     "main_routes": [{"destination": "0.0.0.0/0", "target": "igw"}],
//!     "route_tables": [{"id": "rtb-...", "routes": [{"destination": "0.0.0.0/0", "target": "igw"}]}],
//!     "network_acls": [{"id": "acl-0000000000000000b", "entries": [
//!        {"rule_number": 100, "egress": false, "protocol": "tcp", "port_range": [22, 22],
//!         "cidr": "10.0.2.0/24", "action": "allow"},
//!        {"rule_number": 110, "egress": true, "protocol": "-1", "cidr": "0.0.0.0/0", "action": "allow"},
//!        {"rule_number": 120, "protocol": "icmp", "icmp": [8, -1], "cidr": "0.0.0.0/0", "action": "deny"}]}],
//!     "security_groups": [{"id": "sg-0000000000000000c", "name": "web", "description": "web",
//!        "ingress": [{"protocol": "tcp", "port": 80, "cidr": "0.0.0.0/0"},
//!                    {"protocol": "tcp", "from_port": 5000, "to_port": 5100, "group": "db"},
//!                    {"protocol": "icmp", "from_port": 8, "to_port": -1, "cidr": "10.0.0.0/16"}],
//!        "egress": [{"protocol": "-1", "cidr": "0.0.0.0/0"}]}],   // omitted = allow all
//!     "default_security_group": {"ingress": [...], "egress": [...]},  // extra rules for "default"
//!     "subnets": [{"id": "subnet-0000000000000000d", "cidr": "10.0.1.0/24",
//!                  "availability_zone": "us-east-1a", "network_acl": "acl-...",
//!                  "route_table": "rtb-...", "map_public_ip_on_launch": false}]
//!   }],
//!   "ports": [{
//!     "netdev": "sw-a",                         // TAP (its fd held by a VMM) or veth end
//!     "eni_id": "eni-...", "subnet": "subnet-0000000000000000d",
//!     "mac": "02:00:0a:00:01:05",               // default: random, unique
//!     "private_ip": "10.0.1.5",                 // default: lowest free (first 4 + last reserved)
//!     "security_groups": ["web", "sg-..."],     // ids or names; default: the VPC's "default"
//!     "associate_public_ip": true, "public_ip": "198.18.0.5",
//!     "instance": {"instance_id": "i-...", "ami_id": "ami-...", "instance_type": "t3.micro",
//!                  "user_data": "#!/bin/sh\necho hi", "user_data_file": "/path",
//!                  "public_keys": [{"name": "key", "openssh_key": "ssh-ed25519 AAAA..."}],
//!                  "http_tokens": "optional", "http_endpoint": "enabled",
//!                  "http_put_response_hop_limit": 1}
//!   }]
//! }
//! ```
//! (Comments are for this doc only: the file is plain JSON.) Security-group rules take
//! `protocol` (`tcp`, `udp`, `icmp`, `-1` or a number), `port` or `from_port`/`to_port` (for ICMP:
//! type/code, -1 = any) and one of `cidr` or `group`. Unknown keys are errors.

use std::path::PathBuf;

use anyhow::{Context, bail};
use kumo_net::config::SwitchConfig;
use kumo_net::runtime::SwitchRuntime;

fn usage() -> ! {
    eprintln!("usage: switch --config FILE.json");
    std::process::exit(2);
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only write to it and the thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

fn report(rt: &SwitchRuntime) {
    rt.with_switch(|sw| {
        sw.flush_flow_log();
        eprintln!("counters: {}", sw.counters());
    });
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let mut config: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config = Some(args.next().unwrap_or_else(|| usage()).into()),
            "-h" | "--help" => usage(),
            other => bail!("unknown argument {other:?} (usage: switch --config FILE.json)"),
        }
    }
    let path = config.unwrap_or_else(|| usage());
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = SwitchConfig::from_json(&text).with_context(|| format!("in {}", path.display()))?;
    let (switch, plans) = cfg
        .build()
        .with_context(|| format!("in {}", path.display()))?;
    // Signals are handled by this thread only (sigwait below); block them before the switch
    // thread starts so it inherits the mask.
    let set = block_signals();
    let rt = SwitchRuntime::start(switch).context("starting the switch")?;
    for p in &plans {
        rt.attach(p.port, &p.netdev, p.port_role())
            .with_context(|| format!("attaching port {} to netdev {}", p.port, p.netdev))?;
    }
    println!("{}", serde_json::json!({"ready": true, "ports": plans}));
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised signal set and `sig` a valid out-pointer.
        let r = unsafe { libc::sigwait(&set, &mut sig) };
        if r != 0 {
            continue;
        }
        report(&rt);
        if sig != libc::SIGUSR1 {
            break;
        }
        if !rt.is_running() {
            bail!("the switch thread stopped unexpectedly");
        }
    }
    rt.stop();
    Ok(())
}
