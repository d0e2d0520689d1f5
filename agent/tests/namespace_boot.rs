//! kumo-agent as PID 1 of a kumo-minimal root file system, for real: fresh mount, PID, UTS, IPC and
//! network namespaces, its NIC a veth end plugged into a port of kumo's VPC switch (the
//! `kumo-net` example switch in its own network namespace), so that DHCP, the metadata service
//! (IMDSv2, served by the switch) and the user-data all run for real. The host sees the
//! script's output and exit status through the agent's report lines.
//!
//! Needs root, `unshare`/`nsenter`/`ip` (util-linux, iproute2), a static busybox, the static
//! agent (`KUMO_AGENT_STATIC`, from `agent/build-static`) and the switch (`KUMO_SWITCH_BIN`).
//! `scripts/test.d/40-agent` provides them and runs these tests (they are `#[ignore]`d in a
//! plain `cargo test`). When `KUMO_MINIMAL_IMAGE` names the images part's kumo-minimal ext4
//! image, the root file system is that image (loop-mounted read-only under an overlay, with the
//! agent under test copied over /sbin/init); otherwise an equivalent directory is assembled from
//! busybox and the agent.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use kumo_agent::report::{Event, ReportLine, parse_line};
use kumo_testkit::{ChildGuard, Netns, lines_of};

const INSTANCE_ID: &str = "i-0123456789abcdef0";
const ENI_MAC: &str = "02:00:0a:00:01:05";
const PRIVATE_IP: &str = "10.0.1.5";
const PUBLIC_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKumoNamespaceTest kumo-test";

fn skip(reason: &str) {
    kumo_testkit::skip("agent namespace_boot", reason);
}

/// What the test needs from the host; `Err` is the reason to skip.
struct Tools {
    agent: PathBuf,
    switch: PathBuf,
    busybox: PathBuf,
    image: Option<PathBuf>,
}

fn tools() -> Result<Tools, String> {
    if !kumo_testkit::is_root() {
        return Err("needs root (namespaces, veth, AF_PACKET)".into());
    }
    if let Some(tool) = kumo_testkit::missing_tool(&["unshare", "nsenter", "ip", "chroot"]) {
        return Err(format!("{tool} is not installed"));
    }
    let env_path = |name: &str| -> Result<PathBuf, String> {
        let p = std::env::var_os(name)
            .map(PathBuf::from)
            .ok_or_else(|| format!("{name} is not set (scripts/test.d/40-agent sets it)"))?;
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{name}={} does not exist", p.display()))
        }
    };
    let agent = env_path("KUMO_AGENT_STATIC")?;
    let switch = env_path("KUMO_SWITCH_BIN")?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("busybox is not installed (apt-get install busybox-static)")?;
    let image = std::env::var_os("KUMO_MINIMAL_IMAGE")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    Ok(Tools {
        agent,
        switch,
        busybox,
        image,
    })
}

fn sh(cmd: &str) -> Result<(), String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A network namespace for this test, replacing one a killed earlier run may have left; deleted
/// (with the veth ends in it) when dropped.
fn netns(name: String) -> Netns {
    Netns::replace(name).unwrap()
}

/// Unmounts (lazily) when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process that gets SIGTERM, then SIGKILL after 3 s, and is reaped when dropped.
fn guard(child: Child) -> ChildGuard {
    ChildGuard::terminate_first(child, Duration::from_secs(3))
}

/// The kumo-minimal root file system: the image under an overlay, or an assembled directory.
struct RootFs {
    path: PathBuf,
    _mounts: Vec<Mount>,
    description: String,
}

fn assemble_root(dir: &Path, t: &Tools) -> RootFs {
    let root = dir.join("root");
    if let Some(image) = &t.image {
        let lower = dir.join("lower");
        let upper = dir.join("upper");
        let work = dir.join("work");
        for d in [&lower, &upper, &work, &root] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut mounts = Vec::new();
        sh(&format!(
            "mount -o loop,ro {} {}",
            image.display(),
            lower.display()
        ))
        .unwrap();
        mounts.push(Mount(lower.clone()));
        sh(&format!(
            "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}",
            lower.display(),
            upper.display(),
            work.display(),
            root.display()
        ))
        .unwrap();
        // A Vec drops in order: the overlay is unmounted before the image under it.
        mounts.insert(0, Mount(root.clone()));
        install_agent(&root, &t.agent);
        return RootFs {
            path: root,
            _mounts: mounts,
            description: format!("kumo-minimal image {}", image.display()),
        };
    }
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "var/log", "var/lib", "proc",
        "sys", "dev", "run", "home",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(&t.busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(&t.busybox)
        .arg("--list-full")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join(applet);
        if applet.is_empty() || link.exists() || applet == "bin/busybox" {
            continue;
        }
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let _ = std::os::unix::fs::symlink("/bin/busybox", &link);
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    std::fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    // As in kumo-minimal: resolv.conf lives on the /run tmpfs.
    std::os::unix::fs::symlink("../run/resolv.conf", root.join("etc/resolv.conf")).unwrap();
    install_agent(&root, &t.agent);
    RootFs {
        path: root,
        _mounts: Vec::new(),
        description: format!(
            "a directory assembled from {} and the static agent (no kumo-minimal image given)",
            t.busybox.display()
        ),
    }
}

fn install_agent(root: &Path, agent: &Path) {
    for dst in ["sbin/init", "usr/bin/kumo-agent"] {
        let p = root.join(dst);
        let _ = std::fs::remove_file(&p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(agent, &p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A VPC switch in its own network namespace with one port, and the instance's network
/// namespace holding the other veth end as eth0.
struct Vpc {
    instance_ns: Netns,
    _switch: ChildGuard,
    _switch_ns: Netns,
    switch_stderr: Receiver<String>,
}

fn start_vpc(t: &Tools, dir: &Path, tag: &str, instance: serde_json::Value) -> Vpc {
    let switch_ns = netns(format!("kagsw{tag}"));
    let instance_ns = netns(format!("kagin{tag}"));
    let sw_dev = format!("kag{tag}s");
    let in_dev = format!("kag{tag}i");
    sh(&format!(
        "ip link add {in_dev} type veth peer name {sw_dev} && \
         ip link set {sw_dev} netns {sw} && \
         ip link set {in_dev} netns {inst} && \
         ip -n {inst} link set {in_dev} name eth0 && \
         ip -n {inst} link set eth0 address {ENI_MAC}",
        sw = switch_ns.name(),
        inst = instance_ns.name(),
    ))
    .unwrap();
    let config = serde_json::json!({
        "region": "us-east-1",
        // Short leases, so that the second boot sees the agent renew its lease.
        "dhcp_lease_secs": 6,
        "vpcs": [{
            "id": "vpc-0000000000000000a",
            "cidr": "10.0.0.0/16",
            "subnets": [{"id": "subnet-0000000000000000d", "cidr": "10.0.1.0/24",
                         "availability_zone": "us-east-1a"}]
        }],
        "ports": [{
            "netdev": sw_dev,
            "eni_id": "eni-0000000000000000e",
            "subnet": "subnet-0000000000000000d",
            "mac": ENI_MAC,
            "private_ip": PRIVATE_IP,
            "instance": instance
        }]
    });
    let config_path = dir.join("switch.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", switch_ns.name()])
        .arg(&t.switch)
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let switch_stderr = lines_of(child.stderr.take().unwrap());
    let switch = guard(child);
    let ready = stdout.recv_timeout(Duration::from_secs(30));
    match ready {
        Ok(line) if line.contains("\"ready\":true") => {}
        other => {
            let err: Vec<String> = switch_stderr.try_iter().collect();
            panic!("the switch did not start: {other:?}\n{}", err.join("\n"));
        }
    }
    Vpc {
        instance_ns,
        _switch: switch,
        _switch_ns: switch_ns,
        switch_stderr,
    }
}

/// kumo-agent as PID 1 of `root` in new PID, mount, UTS and IPC namespaces, inside the
/// instance's network namespace.
fn boot(root: &Path, vpc: &Vpc) -> (ChildGuard, Receiver<String>, Receiver<String>) {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", vpc.instance_ns.path().display()))
        .args([
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--uts",
            "--ipc",
            "--propagation",
            "private",
            "chroot",
        ])
        .arg(root)
        .arg("/sbin/init")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("KUMO_AGENT_DHCP_TIMEOUT", "20")
        .env("KUMO_AGENT_IMDS_TIMEOUT", "20")
        .env("KUMO_AGENT_SCRIPT_TIMEOUT", "30")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    (guard(child), out, err)
}

/// Reads console lines until `until` matches an event, the process ends, or the timeout.
fn read_until(
    out: &Receiver<String>,
    console: &mut Vec<String>,
    timeout: Duration,
    until: impl Fn(&Event) -> bool,
) -> Option<(Event, u64)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = out.recv_timeout(left).ok()?;
        console.push(line.clone());
        if let Some(ReportLine::Event { event, t_ms }) = parse_line(&line)
            && until(&event)
        {
            return Some((event, t_ms));
        }
    }
}

fn events(console: &[String]) -> Vec<(Event, u64)> {
    console
        .iter()
        .filter_map(|l| match parse_line(l) {
            Some(ReportLine::Event { event, t_ms }) => Some((event, t_ms)),
            _ => None,
        })
        .collect()
}

/// The pid of the namespace's init: the child of `unshare`, which `boot` started.
fn namespace_init(unshare: &Child) -> i32 {
    let unshare_pid = unshare.id();
    let children =
        std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
            .unwrap_or_default();
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("no init process")
}

fn user_data() -> Vec<u8> {
    // A MIME multi-part with cloud-config and a script, gzip-compressed, as cloud-init accepts.
    let mime = r#"Content-Type: multipart/mixed; boundary="==KUMO=="
MIME-Version: 1.0

--==KUMO==
Content-Type: text/cloud-config; charset="us-ascii"
Content-Disposition: attachment; filename="config.yaml"

#cloud-config
write_files:
  - path: /etc/kumo/written-by-cloud-config
    content: aGVsbG8gZnJvbSB3cml0ZV9maWxlcwo=
    encoding: b64
    permissions: '0600'
bootcmd:
  - echo "bootcmd ran as pid $$"
runcmd:
  - 'echo "runcmd: $(cat /etc/kumo/written-by-cloud-config)"'
  - (sleep 1; poweroff) &

--==KUMO==
Content-Type: text/x-shellscript; charset="us-ascii"
Content-Disposition: attachment; filename="10-check.sh"

#!/bin/sh
echo "check: hostname=$(hostname)"
echo "check: pid1=$(cat /proc/1/comm)"
echo "check: addr=$(ip -4 -o addr show dev eth0 | awk '{print $4}')"
echo "check: route=$(ip route show default)"
echo "check: resolv=$(grep -c nameserver /etc/resolv.conf)"
echo "check: to stderr" >&2
exit 3
--==KUMO==--
"#;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(mime.as_bytes()).unwrap();
    e.finish().unwrap()
}

#[test]
#[ignore = "needs root, the static agent and the switch: scripts/test.d/40-agent runs it"]
fn agent_boots_as_pid1_on_the_vpc_switch() {
    let t = match tools() {
        Ok(t) => t,
        Err(reason) => return skip(&reason),
    };
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("{}", std::process::id() % 100_000);
    let rootfs = assemble_root(dir.path(), &t);
    eprintln!("root file system: {}", rootfs.description);
    let ud_path = dir.path().join("user-data.gz");
    std::fs::write(&ud_path, user_data()).unwrap();
    let vpc = start_vpc(
        &t,
        dir.path(),
        &tag,
        serde_json::json!({
            "instance_id": INSTANCE_ID,
            "user_data_file": ud_path,
            "public_keys": [{"name": "kumo-test", "openssh_key": PUBLIC_KEY}],
            "http_tokens": "required"
        }),
    );

    // First boot: DHCP, metadata, user-data, then the script's in-guest `poweroff`.
    let started = Instant::now();
    let (mut agent, out, err) = boot(&rootfs.path, &vpc);
    let mut console = Vec::new();
    let finished = read_until(&out, &mut console, Duration::from_secs(90), |e| {
        matches!(e, Event::UserdataFinished { .. })
    });
    let wall_to_finished = started.elapsed();
    let dump = |console: &[String]| {
        let errs: Vec<String> = err.try_iter().collect();
        let sw: Vec<String> = vpc.switch_stderr.try_iter().collect();
        format!(
            "console:\n{}\nagent stderr:\n{}\nswitch stderr:\n{}",
            console.join("\n"),
            errs.join("\n"),
            sw.join("\n")
        )
    };
    let Some((Event::UserdataFinished { exit, failed, .. }, _)) = finished else {
        panic!("no userdata-finished\n{}", dump(&console));
    };
    // The user-data's own poweroff ends the namespace's init (reboot(2) in a PID namespace).
    let shutdown = read_until(&out, &mut console, Duration::from_secs(20), |e| {
        matches!(e, Event::Shutdown { .. })
    });
    let status = agent.wait_timeout(Duration::from_secs(20));
    let all = events(&console);
    let text = console.join("\n");
    eprintln!("{}", dump(&console));

    assert_eq!(exit, 3, "the script's exit status reaches the host");
    assert_eq!(failed, vec!["10-check.sh".to_string()]);
    let find = |name: &str| {
        all.iter()
            .find(|(e, _)| e.name() == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} event\n{text}"))
    };
    assert!(matches!(
        find("booted").0,
        Event::Booted {
            mode: kumo_agent::report::Mode::Init,
            ..
        }
    ));
    let (network, network_ms) = find("network-up");
    let Event::NetworkUp {
        interface,
        mac,
        address,
        gateway,
        dns,
        ..
    } = network
    else {
        unreachable!()
    };
    assert_eq!(interface, "eth0");
    assert_eq!(mac, ENI_MAC);
    assert_eq!(address, format!("{PRIVATE_IP}/24"));
    assert_eq!(gateway.as_deref(), Some("10.0.1.1"));
    assert!(!dns.is_empty());
    assert_eq!(
        find("metadata-ready").0,
        Event::MetadataReady {
            imds_version: "v2".into(),
            instance_id: Some(INSTANCE_ID.into())
        }
    );
    assert_eq!(
        find("hostname").0,
        Event::Hostname {
            hostname: "ip-10-0-1-5".into()
        }
    );
    let (_, started_ms) = find("userdata-started");
    // Script output, seen from the host on the console.
    for expected in [
        "check: hostname=ip-10-0-1-5",
        "check: pid1=init",
        "check: addr=10.0.1.5/24",
        "check: route=default via 10.0.1.1 dev eth0",
        "check: resolv=1",
        "check: to stderr",
        "runcmd: hello from write_files",
        "bootcmd ran as pid",
    ] {
        assert!(
            text.contains(expected),
            "console lacks {expected:?}\n{text}"
        );
    }
    assert!(all.iter().any(|(e, _)| *e
        == Event::ScriptFinished {
            script: "runcmd".into(),
            exit: Some(0),
            signal: None,
            reason: None
        }));
    // Output log and write_files inside the guest's file system.
    let log = std::fs::read_to_string(rootfs.path.join("var/log/cloud-init-output.log")).unwrap();
    assert!(log.contains("check: hostname=ip-10-0-1-5"), "{log}");
    let written = rootfs.path.join("etc/kumo/written-by-cloud-config");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "hello from write_files\n"
    );
    assert_eq!(
        std::fs::metadata(&written).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // In-guest poweroff: busybox signals PID 1 (SIGUSR2); the agent stops everything and calls
    // reboot(2), which in a PID namespace ends init with SIGINT.
    assert_eq!(
        shutdown.map(|s| s.0),
        Some(Event::Shutdown {
            action: "poweroff".into()
        }),
        "{text}"
    );
    let status = status.expect("the namespace did not end after poweroff");
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    eprintln!(
        "timings: network-up at {network_ms} ms, user-data started at {started_ms} ms after the agent started; \
         userdata-finished seen by the host {} ms after spawn",
        wall_to_finished.as_millis()
    );

    // Second boot of the same instance: the user-data does not run again (bootcmd does), and a
    // SIGTERM from the host (busybox's `reboot` convention) reboots: SIGHUP in a PID namespace.
    let (mut agent, out, err) = boot(&rootfs.path, &vpc);
    let mut console = Vec::new();
    let skipped = read_until(&out, &mut console, Duration::from_secs(60), |e| {
        matches!(e, Event::UserdataSkipped { .. })
    });
    assert!(skipped.is_some(), "{}", console.join("\n"));
    assert!(console.iter().any(|l| l.contains("bootcmd ran as pid")));
    assert!(!console.iter().any(|l| l.contains("check: hostname")));
    // The lease (6 s) is renewed at T1 (3 s) with the switch.
    let renewed = std::iter::from_fn(|| err.recv_timeout(Duration::from_secs(15)).ok())
        .find(|l| l.contains("DHCP lease for 10.0.1.5 on eth0 renewed"));
    assert!(renewed.is_some(), "the agent did not renew its DHCP lease");
    let init_pid = namespace_init(&agent);
    // SAFETY: plain kill(2) of the namespace's init, a process this test started.
    unsafe { libc::kill(init_pid, libc::SIGTERM) };
    let shutdown = read_until(&out, &mut console, Duration::from_secs(20), |e| {
        matches!(e, Event::Shutdown { .. })
    });
    assert_eq!(
        shutdown.map(|s| s.0),
        Some(Event::Shutdown {
            action: "reboot".into()
        })
    );
    let status = agent
        .wait_timeout(Duration::from_secs(20))
        .expect("no exit after SIGTERM");
    assert_eq!(status.signal(), Some(libc::SIGHUP), "{status:?}");
}

#[test]
#[ignore = "needs root, the static agent and the switch: scripts/test.d/40-agent runs it"]
fn agent_boots_on_when_metadata_is_off() {
    let t = match tools() {
        Ok(t) => t,
        Err(reason) => return skip(&reason),
    };
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("{}", (std::process::id() + 1) % 100_000);
    let rootfs = assemble_root(dir.path(), &t);
    // HttpEndpoint=disabled: the metadata service refuses everything.
    let vpc = start_vpc(
        &t,
        dir.path(),
        &tag,
        serde_json::json!({
            "instance_id": INSTANCE_ID,
            "user_data": "#!/bin/sh\necho must-not-run\n",
            "http_endpoint": "disabled"
        }),
    );
    let (mut agent, out, err) = boot(&rootfs.path, &vpc);
    let mut console = Vec::new();
    let unavailable = read_until(&out, &mut console, Duration::from_secs(60), |e| {
        matches!(e, Event::MetadataUnavailable { .. })
    });
    let Some((Event::MetadataUnavailable { reason }, _)) = unavailable else {
        panic!("no metadata-unavailable\n{}", console.join("\n"));
    };
    assert!(reason.contains("disabled"), "{reason}");
    // Boot goes on: the hostname comes from the DHCP lease, and init still answers poweroff.
    let hostname = read_until(&out, &mut console, Duration::from_secs(10), |e| {
        matches!(e, Event::Hostname { .. })
    });
    assert_eq!(
        hostname.map(|h| h.0),
        Some(Event::Hostname {
            hostname: "ip-10-0-1-5".into()
        })
    );
    let stderr: Vec<String> =
        std::iter::from_fn(|| err.recv_timeout(Duration::from_millis(500)).ok()).collect();
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("Booting on without metadata")),
        "{stderr:?}"
    );
    let init_pid = namespace_init(&agent);
    // SAFETY: plain kill(2) of the namespace's init, a process this test started.
    unsafe { libc::kill(init_pid, libc::SIGUSR2) };
    let status = agent
        .wait_timeout(Duration::from_secs(20))
        .expect("no exit after SIGUSR2");
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert!(!console.iter().any(|l| l.contains("must-not-run")));
}
