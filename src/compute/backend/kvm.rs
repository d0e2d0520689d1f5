//! The kvm backend: one `kumo-vmm` process per instance, driven as a separate program (never
//! linked in), as Firecracker's jailer drives Firecracker.
//!
//! kumo-vmm is found as `$KUMO_VMM`, else next to the running `kumo` binary. It gets:
//!
//! ```text
//! kumo-vmm --kernel <the AMI's kernel> --disk <the instance's root disk copy>
//!          --cmdline "<the AMI's KernelParams> <kumo-agent knobs>"
//!          --vcpus <type's vCPUs> --memory-mib <type's memory>
//!          --net tap=kumot<id>,mac=<ENI MAC> --console stdio --api-socket <instance dir>/vmm.sock
//! ```
//!
//! The serial console comes back on kumo-vmm's stdout (a pipe kumo reads into console.log); its
//! own messages (`kumo-vmm: ...`, the reason it stopped) on stderr. Stopping is graceful first:
//! `{"op":"shutdown","timeout_ms":N}` on the API socket presses Ctrl-Alt-Del (kumo-agent powers
//! off on it, and `reboot=k` makes the guest's reset end the VM); then `{"op":"stop"}`; then
//! SIGKILL. kumo-vmm's exit status: 0 the guest ended, 1 VMM failure, 2 bad configuration,
//! 3 guest crash (vmm/README.md).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{AgentKnobs, InstanceProcess, instance_child};
use crate::compute::console::{ConsoleFiles, Sink, Stream, spawn_reader};

/// kumo-vmm's vCPU limit.
pub const MAX_VCPUS: u32 = 32;

/// Errors starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error(
        "kumo-vmm not found (looked at {0}): build it (`cargo build --release -p kumo-vmm`, or \
         scripts/quickstart) or point $KUMO_VMM at it"
    )]
    NoVmm(String),
    #[error("{name} has {vcpus} vCPUs; kumo-vmm runs at most {MAX_VCPUS}: choose a smaller size")]
    TooManyVcpus { name: String, vcpus: u32 },
    #[error(
        "{name} has {memory_mib} MiB of memory but this host has {host_mib} MiB: choose a smaller type"
    )]
    TooMuchMemory {
        name: String,
        memory_mib: u64,
        host_mib: u64,
    },
    #[error("starting {vmm}: {source}")]
    Spawn {
        vmm: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything kumo-vmm is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmSpec {
    pub kernel: PathBuf,
    pub disk: PathBuf,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub tap: String,
    pub mac: String,
    pub api_socket: PathBuf,
}

/// The guest's command line: the image's `KernelParams` (console=ttyS0, root=/dev/vda, ...)
/// plus kumo-agent's knobs. `console=ttyS0`, `root=/dev/vda` and `earlyprintk=ttyS0` are added
/// where the image's own parameters lack them (a registered image's may).
pub fn kernel_cmdline(image_params: &str, knobs: &AgentKnobs) -> String {
    let mut parts: Vec<String> = image_params.split_whitespace().map(str::to_owned).collect();
    if !parts.iter().any(|p| p.starts_with("console=")) {
        parts.insert(0, "console=ttyS0".into());
    }
    if !parts.iter().any(|p| p.starts_with("root=")) {
        parts.push("root=/dev/vda".into());
    }
    // Early messages reach the console even when the kernel dies before its console driver
    // starts (otherwise a failed boot shows nothing at all); the output is not doubled.
    if !parts.iter().any(|p| p.starts_with("earlyprintk=")) {
        parts.push("earlyprintk=ttyS0".into());
    }
    parts.extend(knobs.cmdline());
    parts.join(" ")
}

/// kumo-vmm's arguments for `spec`.
pub fn vmm_args(spec: &VmmSpec) -> Vec<String> {
    vec![
        "--kernel".into(),
        spec.kernel.display().to_string(),
        "--cmdline".into(),
        spec.cmdline.clone(),
        "--vcpus".into(),
        spec.vcpus.to_string(),
        "--memory-mib".into(),
        spec.memory_mib.to_string(),
        "--disk".into(),
        spec.disk.display().to_string(),
        "--net".into(),
        format!("tap={},mac={}", spec.tap, spec.mac),
        "--console".into(),
        "stdio".into(),
        "--api-socket".into(),
        spec.api_socket.display().to_string(),
    ]
}

/// Checks that kumo-vmm can run a type this size on this host.
pub fn check_size(name: &str, vcpus: u32, memory_mib: u64) -> Result<(), KvmError> {
    if vcpus > MAX_VCPUS {
        return Err(KvmError::TooManyVcpus {
            name: name.into(),
            vcpus,
        });
    }
    if let Some(host_mib) = host_memory_mib()
        && memory_mib > host_mib
    {
        return Err(KvmError::TooMuchMemory {
            name: name.into(),
            memory_mib,
            host_mib,
        });
    }
    Ok(())
}

fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// Where kumo-vmm is: `$KUMO_VMM`, else `kumo-vmm` next to the running `kumo`.
pub fn find_vmm() -> Result<PathBuf, KvmError> {
    if let Some(p) = std::env::var_os("KUMO_VMM").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(KvmError::NoVmm(format!("$KUMO_VMM={}", p.display())))
        };
    }
    let exe = std::env::current_exe().map_err(|e| KvmError::NoVmm(e.to_string()))?;
    let next_to = exe.with_file_name("kumo-vmm");
    if next_to.is_file() {
        Ok(next_to)
    } else {
        Err(KvmError::NoVmm(next_to.display().to_string()))
    }
}

/// A running kumo-vmm.
pub struct Vmm {
    child: Child,
    api_socket: PathBuf,
}

/// Starts kumo-vmm; its console and messages go to `files` and `sink`.
pub fn spawn(
    vmm: &Path,
    spec: &VmmSpec,
    files: &ConsoleFiles,
    sink: &Sink,
) -> Result<Vmm, KvmError> {
    let err = |source| KvmError::Spawn {
        vmm: vmm.to_path_buf(),
        source,
    };
    let mut cmd = Command::new(vmm);
    cmd.args(vmm_args(spec))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    instance_child(&mut cmd);
    let mut child = cmd.spawn().map_err(err)?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    spawn_reader(stdout, Stream::Console, files.clone(), sink.clone()).map_err(err)?;
    spawn_reader(stderr, Stream::Vmm, files.clone(), sink.clone()).map_err(err)?;
    Ok(Vmm {
        child,
        api_socket: spec.api_socket.clone(),
    })
}

impl Vmm {
    /// Sends one request on the API socket and reads the one-line answer.
    fn api(&self, request: &serde_json::Value) -> Result<serde_json::Value, String> {
        let mut s = UnixStream::connect(&self.api_socket)
            .map_err(|e| format!("{}: {e}", self.api_socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        writeln!(s, "{request}").map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(&s)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let answer: serde_json::Value =
            serde_json::from_str(line.trim()).map_err(|e| format!("{e}: {line:?}"))?;
        if answer["ok"] == true {
            Ok(answer)
        } else {
            Err(answer["error"].as_str().unwrap_or("refused").to_string())
        }
    }
}

/// How long the guest gets to power off before kumo-vmm stops it itself.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl InstanceProcess for Vmm {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn request_shutdown(&mut self) -> Result<(), String> {
        let timeout_ms = SHUTDOWN_GRACE.as_millis() as u64;
        self.api(&serde_json::json!({"op": "shutdown", "timeout_ms": timeout_ms}))
            .map(|_| ())
    }

    fn force_stop(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        if self.api(&serde_json::json!({"op": "stop"})).is_ok()
            && self.wait_timeout(Duration::from_secs(2)).is_some()
        {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.force_stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmmSpec {
        VmmSpec {
            kernel: "/k/kernels/aki-0123456789abcdef0/vmlinux".into(),
            disk: "/k/instances/i-0123456789abcdef0/root.ext4".into(),
            cmdline: kernel_cmdline(
                "console=ttyS0 reboot=k panic=1 root=/dev/vda rw",
                &AgentKnobs {
                    script_timeout_secs: Some(600),
                    ..Default::default()
                },
            ),
            vcpus: 2,
            memory_mib: 1024,
            tap: "kumot789abcdef0".into(),
            mac: "02:11:22:33:44:55".into(),
            api_socket: "/k/instances/i-0123456789abcdef0/vmm.sock".into(),
        }
    }

    #[test]
    fn cmdline_keeps_the_images_params_and_adds_the_agents() {
        assert_eq!(
            spec().cmdline,
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw earlyprintk=ttyS0 kumo.script_timeout=600"
        );
        // A registered image without them still gets a console and a root.
        assert_eq!(
            kernel_cmdline("quiet", &AgentKnobs::default()),
            "console=ttyS0 quiet root=/dev/vda earlyprintk=ttyS0"
        );
        assert_eq!(
            kernel_cmdline(
                "console=hvc0 root=/dev/vdb earlyprintk=hvc0",
                &AgentKnobs::default()
            ),
            "console=hvc0 root=/dev/vdb earlyprintk=hvc0"
        );
    }

    #[test]
    fn vmm_arguments() {
        let args = vmm_args(&spec());
        let expected: Vec<String> = [
            "--kernel",
            "/k/kernels/aki-0123456789abcdef0/vmlinux",
            "--cmdline",
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw earlyprintk=ttyS0 kumo.script_timeout=600",
            "--vcpus",
            "2",
            "--memory-mib",
            "1024",
            "--disk",
            "/k/instances/i-0123456789abcdef0/root.ext4",
            "--net",
            "tap=kumot789abcdef0,mac=02:11:22:33:44:55",
            "--console",
            "stdio",
            "--api-socket",
            "/k/instances/i-0123456789abcdef0/vmm.sock",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(args, expected);
    }

    #[test]
    fn sizes_kumo_vmm_cannot_run() {
        assert!(check_size("t3.micro", 2, 1024).is_ok());
        let e = check_size("m5.12xlarge", 48, 1024).unwrap_err().to_string();
        assert!(e.contains("48 vCPUs") && e.contains("at most 32"), "{e}");
        let e = check_size("r5.24xlarge", 32, 786_432)
            .unwrap_err()
            .to_string();
        assert!(e.contains("786432 MiB") && e.contains("smaller"), "{e}");
    }

    #[test]
    fn vmm_not_found_says_how_to_build_it() {
        let e = KvmError::NoVmm("/nowhere/kumo-vmm".into()).to_string();
        assert!(e.contains("cargo build --release -p kumo-vmm") && e.contains("$KUMO_VMM"));
    }
}
