//! Test harness for the switch: network namespaces as hosts, veth pairs as switch ports, and
//! the switch itself in its own namespace. Everything is removed by Drop guards, even when a test
//! fails (the guards and the skip are kumo-testkit's). Tests that cannot run here (not root, a
//! tool missing) print `SKIPPED: ...` and append it to `$KUMO_SKIP_LOG`.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kumo_net::config::{PortPlan, SwitchConfig};
use kumo_net::runtime::SwitchRuntime;
use kumo_testkit::ChildGuard;

pub use kumo_testkit::{skip, unique_name as unique};

/// True when the test can run: root, and every tool present. Otherwise logs a skip.
pub fn can_run(test: &str, tools: &[&str]) -> bool {
    if !kumo_testkit::is_root() {
        skip(
            test,
            "needs root (network namespaces, veth pairs, AF_PACKET)",
        );
        return false;
    }
    let needed: Vec<&str> = ["ip"].iter().chain(tools).copied().collect();
    if let Some(t) = kumo_testkit::missing_tool(&needed) {
        skip(
            test,
            &format!("{t} is not installed (scripts/apt/net.txt lists it)"),
        );
        return false;
    }
    true
}

fn run(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn must(cmd: &[&str]) {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A network namespace with its loopback up; deleted on drop (with whatever still runs in it).
pub struct Netns {
    ns: kumo_testkit::Netns,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let ns = kumo_testkit::Netns::add(unique(prefix))
            .unwrap_or_else(|e| panic!("creating a network namespace: {e}"));
        must(&["ip", "-n", ns.name(), "link", "set", "lo", "up"]);
        Netns { ns }
    }

    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// Runs a shell command inside the namespace.
    pub fn sh(&self, cmd: &str) -> Output {
        run(&["ip", "netns", "exec", self.name(), "sh", "-c", cmd])
    }

    /// Runs a shell command and returns its stdout; panics if it fails.
    pub fn sh_ok(&self, cmd: &str) -> String {
        let o = self.sh(cmd);
        assert!(
            o.status.success(),
            "[{}] {cmd} failed ({}): {}{}",
            self.name(),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Starts a background command inside the namespace, killed on drop.
    pub fn spawn(&self, cmd: &str) -> ChildGuard {
        let child = self
            .ns
            .command(&["sh", "-c", &format!("exec {cmd}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd}: {e}"));
        ChildGuard::new(child)
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = self.ns.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open netns");
                // SAFETY: setns on this thread only, with a valid namespace fd.
                let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    r,
                    0,
                    "setns {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }
}

/// A host: a namespace whose `eth0` is the peer of a switch port netdev.
pub struct Host {
    pub ns: Netns,
    pub port_netdev: String,
    pub mac: String,
}

impl std::ops::Deref for Host {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

impl Host {
    /// Configures the address statically (what DHCP would give) and a default route.
    pub fn static_ip(&self, cidr: &str, router: &str) {
        self.sh_ok(&format!(
            "ip addr add {cidr} dev eth0 && ip route add default via {router} dev eth0"
        ));
    }

    /// Pings once; true if answered.
    pub fn ping(&self, dst: &str) -> bool {
        self.sh(&format!("ping -c 1 -W 1 {dst}")).status.success()
    }

    /// Opens a TCP connection and returns what the server said ("" if nothing).
    pub fn tcp(&self, dst: &str, port: u16) -> String {
        let o = self.sh(&format!(
            "socat -T 1 - TCP:{dst}:{port},connect-timeout=1 </dev/null 2>/dev/null"
        ));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Sends a UDP datagram and returns the reply ("" if none).
    pub fn udp(&self, dst: &str, port: u16) -> String {
        let o = self.sh(&format!(
            "echo ping | socat -T 1 - UDP:{dst}:{port} 2>/dev/null"
        ));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Starts TCP and UDP servers answering `reply` on each port.
    pub fn serve(&self, tcp: &[u16], udp: &[u16], reply: &str) -> Vec<ChildGuard> {
        let mut v = Vec::new();
        for p in tcp {
            v.push(self.spawn(&format!(
                "socat TCP-LISTEN:{p},reuseaddr,fork SYSTEM:'echo {reply}'"
            )));
        }
        for p in udp {
            v.push(self.spawn(&format!(
                "socat UDP-RECVFROM:{p},fork SYSTEM:'read x; echo {reply}'"
            )));
        }
        // Wait until the listeners are up.
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in tcp {
            while !self
                .sh(&format!("ss -Hltn 'sport = :{p}' | grep -q LISTEN"))
                .status
                .success()
            {
                assert!(Instant::now() < deadline, "TCP server on {p} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for p in udp {
            while !self
                .sh(&format!("ss -Hlun 'sport = :{p}' | grep -q {p}"))
                .status
                .success()
            {
                assert!(Instant::now() < deadline, "UDP server on {p} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        v
    }
}

/// A switch namespace with hosts attached to it, and the switch running in-process.
pub struct Lab {
    pub runtime: Option<SwitchRuntime>,
    pub plans: Vec<PortPlan>,
    pub hosts: Vec<Host>,
    pub sw: Netns,
}

impl Lab {
    pub fn new() -> Lab {
        Lab {
            runtime: None,
            plans: Vec::new(),
            hosts: Vec::new(),
            sw: Netns::new("kts"),
        }
    }

    /// Adds a host whose eth0 (with `mac`) is the peer of switch netdev `port_netdev`.
    pub fn add_host(&mut self, port_netdev: &str, mac: &str) -> usize {
        let ns = Netns::new("kth");
        must(&[
            "ip",
            "link",
            "add",
            port_netdev,
            "netns",
            self.sw.name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        ns.sh_ok(&format!(
            "ip link set eth0 address {mac} && sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1 && ip link set eth0 up"
        ));
        self.hosts.push(Host {
            ns,
            port_netdev: port_netdev.to_string(),
            mac: mac.to_string(),
        });
        self.hosts.len() - 1
    }

    /// Adds the host side of the internet gateway: a namespace with `host_cidr` on its eth0,
    /// peer of switch netdev `port_netdev`.
    pub fn add_gateway_host(&mut self, port_netdev: &str, host_cidr: &str) -> usize {
        let i = self.add_host(port_netdev, "02:00:00:00:00:fe");
        self.hosts[i].sh_ok(&format!("ip addr add {host_cidr} dev eth0"));
        i
    }

    /// Builds the switch from `config` and attaches every port.
    pub fn start(&mut self, config: serde_json::Value) {
        let cfg = SwitchConfig::from_json(&config.to_string()).expect("config");
        let (switch, plans) = cfg.build().expect("build switch");
        let rt = SwitchRuntime::start(switch).expect("start switch");
        self.sw.enter(|| {
            for p in &plans {
                rt.attach(p.port, &p.netdev, p.port_role())
                    .unwrap_or_else(|e| panic!("attach {}: {e}", p.netdev));
            }
        });
        self.plans = plans;
        self.runtime = Some(rt);
    }

    pub fn rt(&self) -> &SwitchRuntime {
        self.runtime.as_ref().expect("switch started")
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The switch's drop counter for a reason.
    pub fn dropped(&self, reason: kumo_net::counters::DropReason) -> u64 {
        self.rt().with_switch(|s| s.counters().dropped(reason))
    }

    /// Flushes the flow log and returns every record and drop-log line so far.
    pub fn flow_log(&self) -> (Vec<String>, Vec<String>) {
        self.rt().with_switch(|s| {
            s.flush_flow_log();
            (
                s.flow_log().recent_records().cloned().collect(),
                s.flow_log().recent_drops().cloned().collect(),
            )
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.stop();
        }
        self.hosts.clear();
    }
}
