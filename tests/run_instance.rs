//! End-to-end tests of `kumo run`: the real `kumo` binary launches the real kumo-minimal AMI on
//! the namespace backend (kumo-agent as PID 1 in fresh namespaces, its NIC on kumo's VPC switch,
//! DHCP, the metadata service and the user-data all for real), and afterwards nothing it made is
//! left on the host: no namespace, veth, TAP, mount, loop device, cgroup or process.
//!
//! Needs root and kumo-minimal built in $KUMO_HOME (`kumo images build kumo-minimal`;
//! scripts/test.d/50-run builds it and runs these); otherwise each test says SKIPPED. The kvm
//! backend cannot boot Linux on hosts without hardware virtualization (kvm-pvm): there the test
//! checks that kumo refuses with a clear error, and, with KUMO_KVM_ANYWAY=1, that the VM really
//! starts (the kernel's banner reaches the console through the TAP-and-VMM plumbing), dies as the
//! host makes it die, is reported as such, and leaves nothing behind; the full boot is SKIPPED.
//!
//! The tests run one at a time (a lock), so that what one leaves is never blamed on another.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kumo_testkit::{ChildGuard, is_root, lines_of, no_hardware_virtualization};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn skip(name: &str, reason: &str) {
    kumo_testkit::skip(&format!("run_instance {name}"), reason);
}

fn kumo() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kumo"))
}

fn home() -> PathBuf {
    match std::env::var_os("KUMO_HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".local/share/kumo"),
    }
}

/// Why the namespace tests cannot run here, if they cannot.
fn missing_prerequisite() -> Option<String> {
    if !is_root() {
        return Some("needs root (namespaces, veth, loop mounts, cgroups)".into());
    }
    let out = Command::new(kumo())
        .args(["images", "path", "kumo-minimal"])
        .output()
        .ok()?;
    if !out.status.success() {
        return Some(format!(
            "kumo-minimal is not built in {} (run `kumo images build kumo-minimal`; \
             scripts/test.d/50-run does)",
            home().display()
        ));
    }
    None
}

/// A `kumo run` in progress: its output lines as they come. It is killed if the test ends
/// before it does.
struct Run {
    child: ChildGuard,
    stdout: Receiver<String>,
    stdout_lines: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

fn start(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(kumo());
    cmd.arg("run")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = ChildGuard::new(cmd.spawn().expect("starting kumo run"));
    let stdout = lines_of(child.stdout.take().unwrap());
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    Run {
        child,
        stdout,
        stdout_lines: Vec::new(),
        stderr,
    }
}

impl Run {
    /// Reads stdout until a line contains `needle`.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Ok(line) = self
            .stdout
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let hit = line.contains(needle);
            self.stdout_lines.push(line);
            if hit {
                return true;
            }
        }
        false
    }

    /// Waits for the end; returns (exit code, stdout, stderr).
    fn finish(mut self, timeout: Duration) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(2)) {
            self.stdout_lines.push(line);
        }
        let stdout = self.stdout_lines.join("\n");
        let stderr = self.stderr.join().unwrap_or_default();
        (status.and_then(|s| s.code()), stdout, stderr)
    }
}

fn user_data(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn instance_id(stdout: &str) -> String {
    let i = stdout
        .find("launched i-")
        .map(|i| i + "launched ".len())
        .or_else(|| stdout.find("\"instance_id\": \"i-").map(|i| i + 16))
        .unwrap_or_else(|| panic!("no instance id in:\n{stdout}"));
    let id = &stdout[i..i + 19];
    assert!(
        id.starts_with("i-")
            && id[2..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{id:?}"
    );
    id.to_string()
}

fn grep_proc(file: &str, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return hits;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == std::process::id().to_string() {
            continue;
        }
        if let Ok(text) = std::fs::read(e.path().join(file))
            && String::from_utf8_lossy(&text).contains(needle)
        {
            hits.push(format!("/proc/{name}/{file}"));
        }
    }
    hits
}

/// Everything the instance could have left, or nothing.
fn leftovers(id: &str) -> Vec<String> {
    let suffix = &id[id.len() - 10..];
    let mut left = Vec::new();
    let netns = format!("/run/netns/kumo-{id}");
    if Path::new(&netns).exists() {
        left.push(netns);
    }
    for prefix in ["kumot", "kumov", "kumoi", "kumog", "kumoh"] {
        let dev = format!("/sys/class/net/{prefix}{suffix}");
        if Path::new(&dev).exists() {
            left.push(dev);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.flatten() {
            if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file"))
                && b.contains(id)
            {
                left.push(format!("loop device {:?} on {}", e.file_name(), b.trim()));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let cg = e.path().join("kumo").join(id);
            if cg.exists() {
                left.push(cg.display().to_string());
            }
        }
    }
    // Mounts in any mount namespace, processes by command line or cgroup.
    left.extend(
        grep_proc("mountinfo", id)
            .into_iter()
            .map(|p| format!("mount in {p}")),
    );
    left.extend(
        grep_proc("cmdline", id)
            .into_iter()
            .map(|p| format!("process {p}")),
    );
    left.extend(
        grep_proc("cgroup", id)
            .into_iter()
            .map(|p| format!("process {p}")),
    );
    left
}

/// Asserts that nothing of instance `id` is left on the host (the kernel gets a moment to drop
/// a namespace's mounts and loop device after its last process).
fn assert_nothing_left(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = leftovers(id);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = leftovers(id);
    }
    assert!(left.is_empty(), "instance {id} left: {left:#?}");
    let dir = home().join("instances").join(id);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("instance.json")).unwrap()).unwrap();
    assert_eq!(record["state"], "terminated", "{record:#}");
    assert!(!dir.join("root.ext4").exists(), "the disk copy is deleted");
    assert!(!dir.join("rootfs").exists());
}

const LONG: Duration = Duration::from_secs(120);

#[test]
fn namespace_user_data_exit_0_shows_its_output() {
    let _serial = serial();
    if let Some(reason) = missing_prerequisite() {
        return skip("namespace_user_data_exit_0_shows_its_output", &reason);
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("kumo-e2e-marker-{}", std::process::id());
    let script = user_data(
        dir.path(),
        "hello.sh",
        &format!(
            "#!/bin/sh\necho \"{marker} from $(hostname) as pid $$\"\n\
             md=http://169.254.169.254/latest/meta-data\n\
             echo \"type=$(wget -qO- $md/instance-type)\"\n\
             echo \"key=$(wget -qO- $md/public-keys/0/openssh-key)\"\nexit 0\n"
        ),
    );
    let key = user_data(
        dir.path(),
        "id_test.pub",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKumoRunE2E kumo-e2e\n",
    );
    let started = Instant::now();
    let run = start(
        &[
            "--image",
            "kumo-minimal",
            "--backend",
            "namespace",
            "--instance-type",
            "t3.small",
            "--user-data",
            script.to_str().unwrap(),
            "--key-name",
            "e2e-key",
            "--public-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let (code, stdout, stderr) = run.finish(LONG);
    eprintln!("kumo run took {:?}\n{stdout}\n{stderr}", started.elapsed());
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("{marker} from ip-10-0-1-4")),
        "{stdout}"
    );
    assert!(
        stdout.contains("type=t3.small"),
        "the metadata service answered: {stdout}"
    );
    assert!(
        stdout.contains("key=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKumoRunE2E kumo-e2e"),
        "the public key is in the metadata: {stdout}"
    );
    for words in [
        "on the namespace backend",
        "==> instance booted",
        "==> network up: 10.0.1.4",
        "==> metadata service answered (IMDSv2)",
        "==> user-data started",
        "==> user-data finished: exit 0",
    ] {
        assert!(stdout.contains(words), "no {words:?} in:\n{stdout}");
    }
    let id = instance_id(&stdout);
    let summary = stdout.lines().last().unwrap();
    assert!(
        summary.starts_with(&format!(
            "{id}: user-data finished: exit 0 (kumo-minimal ami-"
        )),
        "{summary}"
    );
    assert!(
        summary.contains("t3.small, namespace backend, 10.0.1.4"),
        "{summary}"
    );
    assert!(summary.contains("terminated gracefully"), "{summary}");
    // The console log holds the script's output too.
    let console =
        std::fs::read_to_string(home().join("instances").join(&id).join("console.log")).unwrap();
    assert!(console.contains(&marker), "{console}");
    assert_nothing_left(&id);
}

#[test]
fn namespace_user_data_exit_3_is_kumo_runs_exit_status() {
    let _serial = serial();
    if let Some(reason) = missing_prerequisite() {
        return skip(
            "namespace_user_data_exit_3_is_kumo_runs_exit_status",
            &reason,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let script = user_data(
        dir.path(),
        "fail.sh",
        "#!/bin/sh\necho about to fail\nexit 3\n",
    );
    let run = start(
        &[
            "--image",
            "kumo-minimal",
            "--backend",
            "namespace",
            "--user-data",
            script.to_str().unwrap(),
            "--output",
            "json",
        ],
        &[],
    );
    let (code, stdout, stderr) = run.finish(LONG);
    assert_eq!(code, Some(3), "{stdout}\n{stderr}");
    // --output json: stdout is the summary and nothing else.
    let summary: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(summary["status"], "user-data-finished");
    assert_eq!(summary["user_data_exit"], 3);
    assert_eq!(summary["exit_status"], 3);
    assert_eq!(summary["backend"], "namespace");
    assert_eq!(summary["instance_type"], "t3.micro");
    assert_eq!(summary["vcpus"], 2);
    assert_eq!(summary["memory_mib"], 1024);
    assert_eq!(summary["network_interface"]["private_ip"], "10.0.1.4");
    assert_eq!(summary["state"], "terminated");
    let events: Vec<&str> = summary["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    for e in [
        "booted",
        "network-up",
        "metadata-ready",
        "userdata-started",
        "userdata-finished",
    ] {
        assert!(events.contains(&e), "{events:?}");
    }
    let id = summary["instance_id"].as_str().unwrap().to_string();
    let console =
        std::fs::read_to_string(home().join("instances").join(&id).join("console.log")).unwrap();
    assert!(console.contains("about to fail"), "{console}");
    assert_nothing_left(&id);
}

/// HTTP GET / from the host; the response, or why not.
fn http_get(ip: &str) -> Result<String, String> {
    use std::io::Write;
    let addr: std::net::SocketAddr = format!("{ip}:80").parse().map_err(|e| format!("{e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    s.read_to_string(&mut response).map_err(|e| e.to_string())?;
    Ok(response)
}

/// --keep-running: the instance stays up, the host reaches it on its public address through the
/// VPC's internet gateway (a web server its user-data started), and Ctrl-C stops it cleanly.
#[test]
fn ctrl_c_stops_a_kept_instance_and_cleans_up() {
    let _serial = serial();
    if let Some(reason) = missing_prerequisite() {
        return skip("ctrl_c_stops_a_kept_instance_and_cleans_up", &reason);
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("kumo-web-marker-{}", std::process::id());
    let script = user_data(
        dir.path(),
        "web.sh",
        &format!(
            "#!/bin/sh\nmkdir -p /www && echo {marker} > /www/index.html\nhttpd -p 80 -h /www\n"
        ),
    );
    let mut run = start(
        &[
            "--image",
            "kumo-minimal",
            "--backend",
            "namespace",
            "--keep-running",
            "--user-data",
            script.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        run.wait_for("keeps running", LONG),
        "{:?}",
        run.stdout_lines
    );
    assert!(
        run.wait_for("public IP", Duration::from_secs(5)),
        "{:?}",
        run.stdout_lines
    );
    let output = run.stdout_lines.join("\n");
    let id = instance_id(&output);
    assert!(
        Path::new(&format!("/run/netns/kumo-{id}")).exists(),
        "it runs"
    );
    let public_ip = output
        .split("public IP ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .unwrap()
        .to_string();
    assert!(public_ip.starts_with("198.1"), "{public_ip}");
    let page = http_get(&public_ip).unwrap_or_else(|e| panic!("GET http://{public_ip}/: {e}"));
    assert!(page.contains(&marker), "{page}");
    // SAFETY: plain kill(2) of the kumo run this test started.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGINT) };
    let (code, stdout, stderr) = run.finish(LONG);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("==> SIGINT: stopping"), "{stdout}");
    assert!(
        stdout.contains("==> instance shutting down (poweroff)"),
        "{stdout}"
    );
    assert!(stdout.contains("terminated gracefully"), "{stdout}");
    assert_nothing_left(&id);
}

#[test]
fn a_killed_run_is_cleaned_up_by_the_next() {
    let _serial = serial();
    if let Some(reason) = missing_prerequisite() {
        return skip("a_killed_run_is_cleaned_up_by_the_next", &reason);
    }
    let mut run = start(
        &[
            "--image",
            "kumo-minimal",
            "--backend",
            "namespace",
            "--keep-running",
        ],
        &[],
    );
    assert!(
        run.wait_for("keeps running", LONG),
        "{:?}",
        run.stdout_lines
    );
    let killed = instance_id(&run.stdout_lines.join("\n"));
    // SIGKILL: kumo gets no chance to clean up. The instance's processes die with it (they are
    // tied to it), but its namespace, veth and cgroups stay until the next kumo run.
    // SAFETY: plain kill(2) of the kumo run this test started.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGKILL) };
    let _ = run.finish(LONG);
    assert!(
        !leftovers(&killed).is_empty(),
        "a SIGKILLed kumo run should have left its network namespace"
    );
    let next = start(&["--image", "kumo-minimal", "--backend", "namespace"], &[]);
    let (code, stdout, stderr) = next.finish(LONG);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("cleaned up instance {killed}")),
        "{stderr}"
    );
    assert_nothing_left(&killed);
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(home().join("instances").join(&killed).join("instance.json"))
            .unwrap(),
    )
    .unwrap();
    assert!(
        record["state_reason"]
            .as_str()
            .unwrap()
            .contains("cleaned up by a later kumo run"),
        "{record:#}"
    );
    assert_nothing_left(&instance_id(&stdout));
}

/// A user-data that does not finish in --timeout: kumo gives up, stops the instance (the agent
/// kills the script as it powers off) and exits 124.
#[test]
fn timeout_stops_a_user_data_that_hangs() {
    let _serial = serial();
    if let Some(reason) = missing_prerequisite() {
        return skip("timeout_stops_a_user_data_that_hangs", &reason);
    }
    let dir = tempfile::tempdir().unwrap();
    let script = user_data(
        dir.path(),
        "hang.sh",
        "#!/bin/sh\necho hanging\nsleep 600\n",
    );
    let run = start(
        &[
            "--image",
            "kumo-minimal",
            "--backend",
            "namespace",
            "--timeout",
            "3",
            "--user-data",
            script.to_str().unwrap(),
        ],
        &[],
    );
    let (code, stdout, stderr) = run.finish(LONG);
    assert_eq!(code, Some(124), "{stdout}\n{stderr}");
    assert!(stdout.contains("hanging"), "{stdout}");
    assert!(
        stdout.contains("the user-data did not finish in time (--timeout)"),
        "{stdout}"
    );
    assert_nothing_left(&instance_id(&stdout));
}

#[test]
fn errors_say_what_to_do() {
    let _serial = serial();
    if !is_root() {
        return skip(
            "errors_say_what_to_do",
            "needs root (kumo run checks it first)",
        );
    }
    let empty = tempfile::tempdir().unwrap();
    let home = empty.path().to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--image", "kumo-minimal"],
            "image kumo-minimal is not built: run `kumo images build kumo-minimal`",
        ),
        (
            &["--image", "my-own"],
            "no image \"my-own\" in the catalog: `kumo images list` shows the images",
        ),
        (
            &["--image", "kumo-minimal", "--instance-type", "t4g.micro"],
            "arm64",
        ),
        (
            &["--image", "kumo-minimal", "--user-data", "/nonexistent"],
            "reading the user-data /nonexistent",
        ),
        (
            &["--image", "kumo-minimal", "--key-name", "k"],
            "--public-key FILE",
        ),
    ];
    for (args, expected) in cases {
        let out = Command::new(kumo())
            .arg("run")
            .args(*args)
            .env("KUMO_HOME", home)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// The kvm backend. With hardware virtualization: a full boot of kumo-minimal with a user-data
/// marker. Without (kvm-pvm here): kumo refuses with a clear error; forced, the VM starts, prints
/// its kernel's banner, dies, and kumo says why and cleans up; the full boot is SKIPPED.
#[test]
fn kvm_backend() {
    let _serial = serial();
    if let Some(reason) = missing_prerequisite() {
        return skip("kvm_backend", &reason);
    }
    let hardware_virtualization = no_hardware_virtualization().is_none();
    if !Path::new("/dev/kvm").exists() {
        return skip("kvm_backend", "no /dev/kvm");
    }
    let vmm = std::env::var_os("KUMO_VMM")
        .map(PathBuf::from)
        .unwrap_or_else(|| kumo().with_file_name("kumo-vmm"));
    let kernel_built = Command::new(kumo())
        .args(["images", "path", "kumo-minimal", "--kernel"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !vmm.is_file() || !kernel_built {
        return skip(
            "kvm_backend",
            &format!(
                "needs kumo-vmm ({}: cargo build -p kumo-vmm) and the kernel (kumo images build kernel)",
                vmm.display()
            ),
        );
    }
    let vmm_env = vmm.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("kumo-kvm-marker-{}", std::process::id());
    let script = user_data(
        dir.path(),
        "hello.sh",
        &format!("#!/bin/sh\necho {marker}\n"),
    );
    let args = [
        "--image",
        "kumo-minimal",
        "--backend",
        "kvm",
        "--user-data",
        script.to_str().unwrap(),
    ];
    if hardware_virtualization {
        let (code, stdout, stderr) = start(&args, &[("KUMO_VMM", &vmm_env)]).finish(LONG);
        assert_eq!(code, Some(0), "{stdout}\n{stderr}");
        assert!(stdout.contains(&marker), "{stdout}");
        assert!(stdout.contains("==> network up: 10.0.1.4"), "{stdout}");
        assert_nothing_left(&instance_id(&stdout));
        return;
    }
    // No hardware virtualization: refused, with what to do instead.
    let (code, stdout, stderr) = start(&args, &[("KUMO_VMM", &vmm_env)]).finish(LONG);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("no hardware virtualization"), "{stderr}");
    assert!(stderr.contains("use --backend namespace"), "{stderr}");
    // Forced: the TAP, the switch port and kumo-vmm are real; the guest kernel starts and dies.
    let (code, stdout, stderr) =
        start(&args, &[("KUMO_VMM", &vmm_env), ("KUMO_KVM_ANYWAY", "1")]).finish(LONG);
    assert!(stdout.contains("on the kvm backend"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Linux version"),
        "the kernel's banner: {stdout}"
    );
    assert!(
        stdout.contains("[kumo-vmm] kumo-vmm: guest crashed"),
        "{stdout}"
    );
    assert_eq!(code, Some(125), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("the instance stopped before its user-data finished"),
        "{stdout}"
    );
    assert!(stdout.contains("cannot boot Linux"), "{stdout}");
    assert_nothing_left(&instance_id(&stdout));
    skip(
        "kvm_backend (full boot)",
        "this host has no hardware virtualization (kvm-pvm): a Linux guest cannot boot; \
         checked the refusal, and that a forced VM starts, prints its banner and is cleaned up",
    );
}
