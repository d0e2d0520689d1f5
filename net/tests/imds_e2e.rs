//! End to end: real clients (curl, and cloud-init's own EC2 code) in a network namespace read
//! the metadata service through its smoltcp TCP termination.
//!
//! A veth pair joins a namespace ("the guest", eth0 = 10.0.1.5/24 with the ENI's MAC, default
//! route via 10.0.1.1) to the host, where one of two things serves the host end:
//!
//! * the real VPC switch (`kumo_net::runtime::SwitchRuntime`, configured like the `switch`
//!   example) with the guest's checksum offload left on, as a guest has it; or
//! * a test-only stand-in (`RouterStandIn` below, not product code): an AF_PACKET thread that
//!   answers every ARP request with the router's MAC and hands each IPv4 packet for
//!   169.254.169.254 straight to [`MetadataService::ingress`]. It keeps the metadata service's
//!   tests independent of the switch and lets a second namespace sit one routed hop behind the
//!   guest without NAT (the switch would rightly drop its foreign source address), which is
//!   how the PUT hop limit is shown end to end.
//!
//! Needs root, `ip`, `ethtool` and, per test, curl or cloud-init's runtime (Debian python3 with
//! requests, yaml, jinja2, jsonpatch, jsonschema, configobj; `scripts/install-deps` installs
//! them). cloud-init itself is never installed: the test runs `apt-get download cloud-init`
//! (or uses `$KUMO_CLOUD_INIT_DEB`) and unpacks it into a temporary directory. Whatever is
//! missing makes the test print `SKIPPED: ...` and return. Namespaces are removed by Drop
//! guards, also when a test fails.

mod imds_common;

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use imds_common::sample_metadata;
use kumo_net::PortId;
use kumo_net::config::SwitchConfig;
use kumo_net::imds::{HttpTokens, ImdsStats, InstanceMetadata, METADATA_IPV4, MetadataService};
use kumo_net::runtime::SwitchRuntime;
use kumo_testkit::{
    Netdev, Netns, PacketSocket, have_tool, is_root, missing_tool, run, skip, unique_name,
};

const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const PORT: PortId = PortId(1);

// ----- skipping -----

/// Why the namespace harness cannot run here, if it cannot.
fn harness_unavailable() -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespaces, veth, AF_PACKET)".into());
    }
    missing_tool(&["ip", "ethtool"])
        .map(|tool| format!("`{tool}` not found: run scripts/install-deps"))
}

// ----- the namespace and its veth -----

/// A network namespace joined to the host by a veth pair; deleted on drop (which deletes the
/// veth too).
struct GuestNamespace {
    ns: Netns,
    host_if: Netdev,
}

impl GuestNamespace {
    /// Namespace with eth0 = `mac`, 10.0.1.5/24, default route via 10.0.1.1; with
    /// `tx_checksum_offload` off, the host sees complete checksums on its end of the veth.
    fn create(mac: [u8; 6], tx_checksum_offload: bool) -> io::Result<Self> {
        let id = unique_name("");
        let ns = Self {
            ns: Netns::add(format!("kumo-imds-{id}"))?,
            host_if: Netdev::adopt(format!("kimh{id}")),
        };
        let guest_if = format!("kimg{id}");
        // `ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf: a
        // resolver on the namespace's own loopback fails lookups at once (cloud-init checks
        // for DNS hijacking) instead of timing out towards the host's resolver.
        std::fs::create_dir_all(ns.etc_dir())?;
        std::fs::write(ns.etc_dir().join("resolv.conf"), "nameserver 127.0.0.1\n")?;
        run(&[
            "ip",
            "link",
            "add",
            ns.host_if.name(),
            "type",
            "veth",
            "peer",
            "name",
            &guest_if,
            "netns",
            ns.ns.name(),
        ])?;
        // The host stays out of the VPC: no address, no IPv6 on its end.
        std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", ns.host_if.name()),
            "1",
        )?;
        run(&["ip", "link", "set", ns.host_if.name(), "up"])?;
        let mac = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns.exec(&["ip", "link", "set", &guest_if, "name", "eth0"])?;
        ns.exec(&["ip", "link", "set", "eth0", "address", &mac])?;
        ns.exec(&["ip", "addr", "add", "10.0.1.5/24", "dev", "eth0"])?;
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        ns.exec(&["ip", "link", "set", "eth0", "up"])?;
        ns.exec(&["ip", "route", "add", "default", "via", "10.0.1.1"])?;
        if !tx_checksum_offload {
            ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        Ok(ns)
    }

    fn etc_dir(&self) -> PathBuf {
        Path::new("/etc/netns").join(self.ns.name())
    }

    fn command(&self, args: &[&str]) -> Command {
        self.ns.command(args)
    }

    fn exec(&self, args: &[&str]) -> io::Result<Output> {
        self.ns.exec(args)
    }

    /// Adds a second namespace behind this one (a "container" one routed hop away):
    /// 192.168.50.2/24, default route via this namespace, which forwards. Deleted on drop.
    fn add_container(&self) -> io::Result<Netns> {
        let inner = Netns::add(format!("{}-c", self.ns.name()))?;
        let (outer_if, inner_if) = ("ctr0", "eth0");
        self.exec(&[
            "ip",
            "link",
            "add",
            outer_if,
            "type",
            "veth",
            "peer",
            "name",
            "ctrpeer",
            "netns",
            inner.name(),
        ])?;
        self.exec(&["ip", "addr", "add", "192.168.50.1/24", "dev", outer_if])?;
        self.exec(&["ip", "link", "set", outer_if, "up"])?;
        self.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        self.exec(&["ethtool", "-K", outer_if, "tx", "off"])?;
        inner.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        inner.exec(&["ip", "link", "set", "ctrpeer", "name", inner_if])?;
        inner.exec(&["ip", "addr", "add", "192.168.50.2/24", "dev", inner_if])?;
        inner.exec(&["ip", "link", "set", "lo", "up"])?;
        inner.exec(&["ip", "link", "set", inner_if, "up"])?;
        inner.exec(&["ip", "route", "add", "default", "via", "192.168.50.1"])?;
        inner.exec(&["ethtool", "-K", inner_if, "tx", "off"])?;
        Ok(inner)
    }
}

impl Drop for GuestNamespace {
    fn drop(&mut self) {
        // The namespace and the veth go with the fields' own guards.
        let _ = std::fs::remove_dir_all(self.etc_dir());
        let _ = std::fs::remove_dir(self.etc_dir().parent().unwrap_or(Path::new("/")));
    }
}

// ----- the AF_PACKET router stand-in -----

/// The thread that plays the VPC router for one port; stopped and joined on drop.
struct RouterStandIn {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    service: Arc<Mutex<MetadataService>>,
}

impl RouterStandIn {
    fn start(host_if: &str, metadata: InstanceMetadata) -> io::Result<Self> {
        let socket = PacketSocket::bind(host_if)?;
        socket.set_recv_timeout(Duration::from_millis(20))?;
        let mut service = MetadataService::default();
        service.set_instance(PORT, metadata);
        let service = Arc::new(Mutex::new(service));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (service, stop) = (service.clone(), stop.clone());
            std::thread::spawn(move || serve_port(&socket, &service, &stop))
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            service,
        })
    }

    fn set_instance(&self, metadata: InstanceMetadata) {
        self.service.lock().unwrap().set_instance(PORT, metadata);
    }
}

impl Drop for RouterStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_port(socket: &PacketSocket, service: &Mutex<MetadataService>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::SeqCst) {
        if let Some(len) = socket.recv(&mut buf) {
            handle_frame(socket, service, &buf[..len]);
        }
        let now = Instant::now();
        let mut service = service.lock().unwrap();
        if service.poll_at(now).is_some_and(|at| at <= now) {
            for (_, packet) in service.poll(now) {
                // The guest's MAC is the only one on this port.
                let _ = socket.send(&ethernet(
                    sample_metadata().interfaces[0].mac,
                    0x0800,
                    &packet,
                ));
            }
        }
    }
}

fn ethernet(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&ROUTER_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn handle_frame(socket: &PacketSocket, service: &Mutex<MetadataService>, frame: &[u8]) {
    if frame.len() < 14 || frame[6..12] == ROUTER_MAC {
        return; // runt, or our own frame seen on the way out
    }
    let src_mac: [u8; 6] = frame[6..12].try_into().unwrap();
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let payload = &frame[14..];
    match ethertype {
        0x0806 if payload.len() >= 28 && payload[6..8] == [0, 1] => {
            // ARP request: the router answers for every address but the asker's own.
            let (sender_ip, target_ip) = (&payload[14..18], &payload[24..28]);
            if sender_ip == target_ip {
                return;
            }
            let mut reply = Vec::with_capacity(28);
            reply.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
            reply.extend_from_slice(&ROUTER_MAC);
            reply.extend_from_slice(target_ip);
            reply.extend_from_slice(&src_mac);
            reply.extend_from_slice(sender_ip);
            let _ = socket.send(&ethernet(src_mac, 0x0806, &reply));
        }
        0x0800 if payload.len() >= 20 => {
            let total = usize::from(u16::from_be_bytes([payload[2], payload[3]]));
            let packet = &payload[..total.clamp(20, payload.len())];
            if packet[16..20] != METADATA_IPV4.octets() {
                return;
            }
            let replies = service
                .lock()
                .unwrap()
                .ingress(PORT, packet, Instant::now());
            for reply in replies {
                let _ = socket.send(&ethernet(src_mac, 0x0800, &reply));
            }
        }
        _ => {}
    }
}

// ----- what serves the host end: the real switch or the stand-in -----

/// Who answers the guest's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// kumo's VPC switch (`SwitchRuntime`), the product's data path.
    Switch,
    /// The AF_PACKET stand-in above (test harness only).
    StandIn,
}

/// A running backend: change the port's metadata, read the service's counters.
trait MetadataPort {
    fn set_instance(&self, metadata: InstanceMetadata);
    fn imds_stats(&self) -> ImdsStats;
}

impl MetadataPort for RouterStandIn {
    fn set_instance(&self, metadata: InstanceMetadata) {
        RouterStandIn::set_instance(self, metadata);
    }

    fn imds_stats(&self) -> ImdsStats {
        self.service.lock().unwrap().stats().clone()
    }
}

/// The real switch with one ENI port on the veth's host end; stopped on drop.
struct RealSwitch {
    runtime: SwitchRuntime,
    port: PortId,
}

impl RealSwitch {
    /// A VPC 10.0.0.0/16 with subnet 10.0.1.0/24 and the ENI of `metadata` on `host_if`,
    /// configured as the `switch` example's JSON does; the port then serves `metadata`
    /// exactly (the example derives generated ids, which the assertions don't know).
    fn start(host_if: &str, metadata: InstanceMetadata) -> Result<Self, String> {
        let eni = &metadata.interfaces[0];
        let config = serde_json::json!({
            "region": metadata.region,
            "account_id": metadata.account_id,
            "vpcs": [{
                "id": eni.vpc_id,
                "cidr": eni.vpc_ipv4_cidr_blocks[0].to_string(),
                "subnets": [{
                    "id": eni.subnet_id,
                    "cidr": eni.subnet_ipv4_cidr_block.to_string(),
                    "availability_zone": metadata.availability_zone,
                }],
            }],
            "ports": [{
                "netdev": host_if,
                "eni_id": eni.interface_id,
                "subnet": eni.subnet_id,
                "mac": kumo_net::imds::metadata::format_mac(&eni.mac),
                "private_ip": eni.local_ipv4s[0].to_string(),
                "instance": {"instance_id": metadata.instance_id},
            }],
        });
        let config = SwitchConfig::from_json(&config.to_string()).map_err(|e| e.to_string())?;
        let (switch, plans) = config.build().map_err(|e| e.to_string())?;
        let runtime = SwitchRuntime::start(switch).map_err(|e| e.to_string())?;
        let plan = &plans[0];
        runtime
            .attach(plan.port, &plan.netdev, plan.port_role())
            .map_err(|e| e.to_string())?;
        let switch = Self {
            runtime,
            port: plan.port,
        };
        switch.set_instance(metadata);
        Ok(switch)
    }
}

impl MetadataPort for RealSwitch {
    fn set_instance(&self, metadata: InstanceMetadata) {
        self.runtime
            .with_switch(|sw| sw.metadata_mut().set_instance(self.port, metadata));
    }

    fn imds_stats(&self) -> ImdsStats {
        self.runtime
            .with_switch(|sw| sw.metadata_mut().stats().clone())
    }
}

/// A guest namespace with `metadata`'s ENI, served by `backend`.
fn start_guest(
    backend: Backend,
    metadata: &InstanceMetadata,
) -> (GuestNamespace, Box<dyn MetadataPort>) {
    let mac = metadata.interfaces[0].mac;
    match backend {
        Backend::Switch => {
            // Offload on, as a real guest has it: the switch completes partial checksums.
            let ns = GuestNamespace::create(mac, true).expect("create namespace");
            let switch =
                RealSwitch::start(ns.host_if.name(), metadata.clone()).expect("start switch");
            (ns, Box::new(switch))
        }
        Backend::StandIn => {
            let ns = GuestNamespace::create(mac, false).expect("create namespace");
            let router =
                RouterStandIn::start(ns.host_if.name(), metadata.clone()).expect("start router");
            (ns, Box::new(router))
        }
    }
}

// ----- curl -----

/// Runs curl in a namespace: returns (HTTP status, body). `-w` appends the status.
fn curl(cmd: &mut Command) -> (u16, String) {
    let output = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

fn curl_args<'a>(extra: &[&'a str], path: &'a str) -> Vec<&'a str> {
    let mut args = vec!["curl", "-sS", "-m", "5", "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(path);
    args
}

const BASE: &str = "http://169.254.169.254";

#[test]
fn curl_reads_metadata_v1_and_v2_through_the_switch() {
    curl_reads_metadata_v1_and_v2(
        "imds_e2e::curl_reads_metadata_v1_and_v2_through_the_switch",
        Backend::Switch,
    );
}

#[test]
fn curl_reads_metadata_v1_and_v2_through_the_stand_in() {
    curl_reads_metadata_v1_and_v2(
        "imds_e2e::curl_reads_metadata_v1_and_v2_through_the_stand_in",
        Backend::StandIn,
    );
}

fn curl_reads_metadata_v1_and_v2(test: &str, backend: Backend) {
    if let Some(reason) = harness_unavailable() {
        return skip(test, &reason);
    }
    if !have_tool("curl") {
        return skip(test, "curl not found: run scripts/install-deps");
    }
    let metadata = sample_metadata();
    let (ns, router) = start_guest(backend, &metadata);
    let url = |path: &str| format!("{BASE}{path}");

    // IMDSv1.
    let u = url("/latest/meta-data/instance-id");
    let (status, body) = curl(&mut ns.command(&curl_args(&[], &u)));
    assert_eq!((status, body.as_str()), (200, "i-0123456789abcdef0"));
    let u = url("/latest/meta-data/");
    let (status, listing) = curl(&mut ns.command(&curl_args(&[], &u)));
    assert_eq!(status, 200);
    assert!(
        listing.starts_with("ami-id\nami-launch-index\n"),
        "{listing}"
    );
    assert!(listing.contains("\nnetwork/\nplacement/\n"));
    let u = url("/latest/user-data");
    let (status, user_data) = curl(&mut ns.command(&curl_args(&[], &u)));
    assert_eq!(status, 200);
    assert_eq!(user_data, "#!/bin/sh\necho hello from user-data\n");
    let u = url("/latest/meta-data/nope");
    let (status, body) = curl(&mut ns.command(&curl_args(&[], &u)));
    assert_eq!(status, 404);
    assert!(body.contains("<title>404 - Not Found</title>"));
    let u = url("/latest/meta-data/");
    assert_eq!(
        curl(&mut ns.command(&curl_args(&["-X", "POST"], &u))).0,
        405
    );

    // IMDSv2.
    let u = url("/latest/api/token");
    let (status, token) = curl(&mut ns.command(&curl_args(
        &[
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 21600",
        ],
        &u,
    )));
    assert_eq!(status, 200);
    assert!(token.len() >= 32, "{token}");
    let token_header = format!("X-aws-ec2-metadata-token: {token}");
    let u = url("/latest/meta-data/placement/availability-zone");
    let (status, az) = curl(&mut ns.command(&curl_args(&["-H", &token_header], &u)));
    assert_eq!((status, az.as_str()), (200, "us-east-1a"));
    let u = url("/latest/meta-data/instance-id");
    let bad = curl(&mut ns.command(&curl_args(&["-H", "X-aws-ec2-metadata-token: forged"], &u)));
    assert_eq!(bad.0, 401);
    let u = url("/latest/api/token");
    let (status, _) = curl(&mut ns.command(&curl_args(
        &["-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 0"],
        &u,
    )));
    assert_eq!(status, 400);
    let (status, _) = curl(&mut ns.command(&curl_args(
        &[
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 60",
            "-H",
            "X-Forwarded-For: 203.0.113.1",
        ],
        &u,
    )));
    assert_eq!(status, 403);

    // HttpTokens=required: v1 is refused, v2 still works (the same token stays valid).
    let mut required = metadata.clone();
    required.http_tokens = HttpTokens::Required;
    router.set_instance(required);
    let u = url("/latest/meta-data/instance-id");
    assert_eq!(curl(&mut ns.command(&curl_args(&[], &u))).0, 401);
    let (status, body) = curl(&mut ns.command(&curl_args(&["-H", &token_header], &u)));
    assert_eq!((status, body.as_str()), (200, "i-0123456789abcdef0"));

    let stats = router.imds_stats();
    assert_eq!(stats.dropped_malformed, 0, "{stats:?}");
    assert!(stats.connections_accepted >= 10, "{stats:?}");
}

#[test]
fn the_token_put_does_not_survive_a_routed_hop_with_hop_limit_1() {
    const TEST: &str = "imds_e2e::the_token_put_does_not_survive_a_routed_hop_with_hop_limit_1";
    if let Some(reason) = harness_unavailable() {
        return skip(TEST, &reason);
    }
    if !have_tool("curl") {
        return skip(TEST, "curl not found: run scripts/install-deps");
    }
    let metadata = sample_metadata();
    let ns = GuestNamespace::create(metadata.interfaces[0].mac, false).expect("create namespace");
    let container = ns.add_container().expect("create the container namespace");
    let router = RouterStandIn::start(ns.host_if.name(), metadata.clone()).expect("start router");
    let put = [
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
    ];
    let token_url = format!("{BASE}/latest/api/token");
    let id_url = format!("{BASE}/latest/meta-data/instance-id");
    let mut put_args = curl_args(&put, &token_url);
    put_args[3] = "3"; // `-m 3`: the PUT's answer never arrives, don't wait long for it

    // On the instance itself (no routed hop) the PUT works.
    assert_eq!(curl(&mut ns.command(&curl_args(&put, &token_url))).0, 200);
    // One routed hop away, the GET's answer (TTL 64) arrives, the PUT's (TTL 1) dies in the
    // forwarding namespace: exactly why EC2's default hop limit keeps containers off IMDSv2.
    let (status, body) = curl(&mut container.command(&curl_args(&[], &id_url)));
    assert_eq!((status, body.as_str()), (200, "i-0123456789abcdef0"));
    let (status, _) = curl(&mut container.command(&put_args));
    assert_eq!(status, 0, "the PUT response must not reach the container");

    // HttpPutResponseHopLimit=2 lets it through.
    let mut two_hops = metadata;
    two_hops.http_put_response_hop_limit = 2;
    router.set_instance(two_hops);
    let (status, token) = curl(&mut container.command(&curl_args(&put, &token_url)));
    assert_eq!(status, 200);
    assert!(token.len() >= 32);
}

// ----- cloud-init -----

/// Unpacks Debian's cloud-init (downloaded with apt-get, never installed) into `dir`; returns
/// its Python package directory.
fn unpack_cloud_init(dir: &Path) -> Result<PathBuf, String> {
    let deb = match std::env::var_os("KUMO_CLOUD_INIT_DEB") {
        Some(path) => PathBuf::from(path),
        None => {
            let output = Command::new("apt-get")
                .args(["download", "-q", "cloud-init"])
                .current_dir(dir)
                .output()
                .map_err(|e| format!("apt-get download cloud-init: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "apt-get download cloud-init failed (offline? set KUMO_CLOUD_INIT_DEB): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            std::fs::read_dir(dir)
                .map_err(|e| e.to_string())?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
                .ok_or("apt-get download left no .deb")?
        }
    };
    let root = dir.join("root");
    run(&[
        "dpkg-deb",
        "-x",
        deb.to_str().ok_or("non-UTF-8 path")?,
        root.to_str().ok_or("non-UTF-8 path")?,
    ])
    .map_err(|e| e.to_string())?;
    let packages = root.join("usr/lib/python3/dist-packages");
    if !packages.join("cloudinit/sources/DataSourceEc2.py").exists() {
        return Err(format!("{} holds no cloud-init", deb.display()));
    }
    Ok(packages)
}

/// Debian's python3 (which sees the python3-* packages cloud-init needs), if usable.
fn cloud_init_python() -> Result<&'static str, String> {
    let python = "/usr/bin/python3";
    let ok = Command::new(python)
        .args([
            "-c",
            "import requests, yaml, jinja2, jsonpatch, jsonschema, configobj",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(python)
    } else {
        Err(format!(
            "{python} lacks cloud-init's modules (python3-requests, -yaml, -jinja2, -jsonpatch, \
             -jsonschema, -configobj): run scripts/install-deps"
        ))
    }
}

fn run_cloud_init(
    ns: &GuestNamespace,
    python: &str,
    packages: &Path,
    work: &Path,
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/imds_cloud_init.py");
    let output = ns
        .command(&[
            "env",
            &format!("PYTHONPATH={}", packages.display()),
            python,
            script.to_str().unwrap(),
            work.to_str().unwrap(),
        ])
        .output()
        .expect("run cloud-init");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "cloud-init driver failed:\n{log}");
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("cloud-init printed no JSON ({e}):\n{log}"));
    eprintln!(
        "cloud-init: v1 helpers crawl {}s, DataSourceEc2 {}s",
        seen["helpers_seconds"], seen["datasource_seconds"]
    );
    seen
}

#[test]
fn cloud_init_ec2_datasource_reads_metadata_through_the_switch() {
    cloud_init_ec2_datasource_reads_metadata(
        "imds_e2e::cloud_init_ec2_datasource_reads_metadata_through_the_switch",
        Backend::Switch,
    );
}

#[test]
fn cloud_init_ec2_datasource_reads_metadata_through_the_stand_in() {
    cloud_init_ec2_datasource_reads_metadata(
        "imds_e2e::cloud_init_ec2_datasource_reads_metadata_through_the_stand_in",
        Backend::StandIn,
    );
}

fn cloud_init_ec2_datasource_reads_metadata(test: &str, backend: Backend) {
    if let Some(reason) = harness_unavailable() {
        return skip(test, &reason);
    }
    let python = match cloud_init_python() {
        Ok(python) => python,
        Err(reason) => return skip(test, &reason),
    };
    let work = tempfile::tempdir().expect("temp dir");
    let packages = match unpack_cloud_init(work.path()) {
        Ok(packages) => packages,
        Err(reason) => return skip(test, &reason),
    };
    let mut metadata = sample_metadata();
    let (ns, router) = start_guest(backend, &metadata);

    let seen = run_cloud_init(&ns, python, &packages, work.path());

    // The v1 helpers crawled the whole tree.
    let helpers = &seen["helpers"];
    let md = &helpers["meta-data"];
    assert_eq!(md["instance-id"], "i-0123456789abcdef0");
    assert_eq!(md["ami-id"], "ami-0fedcba9876543210");
    assert_eq!(md["instance-type"], "t3.micro");
    assert_eq!(md["local-ipv4"], "10.0.1.5");
    assert_eq!(md["local-hostname"], "ip-10-0-1-5.ec2.internal");
    assert_eq!(md["placement"]["availability-zone"], "us-east-1a");
    assert_eq!(
        md["public-keys"]["my-key"],
        metadata.public_keys[0].openssh_key
    );
    assert_eq!(md["security-groups"], serde_json::json!(["default", "web"]));
    let eni = &md["network"]["interfaces"]["macs"]["02:4b:55:00:01:05"];
    assert_eq!(eni["vpc-id"], "vpc-0123456789abcdef0");
    assert_eq!(eni["subnet-ipv4-cidr-block"], "10.0.1.0/24");
    assert_eq!(eni["device-number"], "0");
    assert_eq!(
        helpers["user-data"],
        "#!/bin/sh\necho hello from user-data\n"
    );
    assert_eq!(
        helpers["identity"]["document"]["instanceId"],
        "i-0123456789abcdef0"
    );

    // The datasource, the way cloud-init runs on EC2 (IMDSv2 token first).
    let ds = &seen["datasource"];
    assert_eq!(ds["found"], true, "DataSourceEc2.get_data() failed");
    assert_eq!(ds["token_used"], true);
    assert_eq!(ds["api_version"], "2021-03-23");
    assert_eq!(ds["instance_id"], "i-0123456789abcdef0");
    assert_eq!(ds["availability_zone"], "us-east-1a");
    assert_eq!(ds["region"], "us-east-1");
    assert_eq!(ds["hostname"], "ip-10-0-1-5");
    assert_eq!(ds["user-data"], "#!/bin/sh\necho hello from user-data\n");
    assert_eq!(ds["identity"]["privateIp"], "10.0.1.5");
    assert_eq!(
        ds["public_keys"],
        serde_json::json!([metadata.public_keys[0].openssh_key])
    );
    let ethernets = &ds["network_config"]["ethernets"]["eth0"];
    assert_eq!(ethernets["match"]["macaddress"], "02:4b:55:00:01:05");
    assert_eq!(ethernets["dhcp4"], true);
    assert_eq!(
        ds["meta-data"], helpers["meta-data"],
        "v1 and v2 crawls agree"
    );

    // HttpTokens=required: the datasource still works (it uses tokens), v1 helpers get 401s.
    metadata.http_tokens = HttpTokens::Required;
    router.set_instance(metadata);
    let seen = run_cloud_init(&ns, python, &packages, work.path());
    assert_eq!(seen["datasource"]["found"], true);
    assert_eq!(seen["datasource"]["instance_id"], "i-0123456789abcdef0");
    assert_eq!(seen["helpers"]["meta-data"], serde_json::json!({}));

    let stats = router.imds_stats();
    assert!(stats.responses() > 50, "{stats:?}");
    assert!(stats.responses_by_status.contains_key(&401));
    assert_eq!(stats.connections_timed_out, 0, "{stats:?}");
    drop(router);
    drop(ns);
}
