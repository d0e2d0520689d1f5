//! The namespace backend: the AMI's root file system with its own init (kumo-agent) as PID 1 of
//! fresh mount, PID, UTS, IPC, cgroup and network namespaces, for hosts without hardware
//! virtualization.
//!
//! The root file system is the instance's own copy of the AMI's ext4 root disk, loop-mounted.
//! (The other way, extracting the image into a directory with `debugfs rdump`, was not taken:
//! a loop mount costs nothing for any image size, keeps ownership, modes and special files exact,
//! and makes the instance write to its own disk file, as the kvm backend's VM does to /dev/vda.)
//! The mount is made *inside* the instance's private mount namespace, never in the host's: the
//! host sees an empty `rootfs/` directory, and when the namespace's last process ends the kernel
//! drops the mount and, because util-linux's `mount -o loop` sets LO_FLAGS_AUTOCLEAR, the loop
//! device with it, even if kumo was killed.
//!
//! `kumo` starts itself as the launcher (`kumo __namespace-init ...`, see [`super::ns_init`]):
//! it joins the instance's cgroups, enters its network namespace (made with `ip netns add`, the
//! veth's instance end inside as `eth0`), unshares a mount namespace and loop-mounts the disk,
//! unshares PID, UTS, IPC and cgroup namespaces, and starts `/sbin/init` as PID 1 after
//! `pivot_root` into the disk (so the host's file systems are out of reach, not merely outside a
//! chroot). It writes init's host pid to `init.pid` and waits for it. init's stdout and stderr
//! are the console: one pipe that kumo reads.
//!
//! Stopping: SIGUSR2 to init (busybox's `poweroff` signal: kumo-agent stops every process, syncs
//! and powers off, which in a PID namespace ends init), then SIGKILL to init (which ends every
//! process of the PID namespace), then to the launcher. The namespace backend is for testing
//! user-data, not a security boundary: the instance runs as the host's root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{AgentKnobs, InstanceProcess, instance_child};
use crate::compute::console::{ConsoleFiles, Sink, Stream, spawn_reader};
use crate::compute::instance::HostProcess;

/// The hidden subcommand the launcher runs as.
pub const LAUNCHER_SUBCOMMAND: &str = "__namespace-init";

/// Errors starting a namespace instance.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("starting the namespace launcher ({exe}): {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the instance's init did not start: {0}")]
    NoInit(String),
}

/// What the launcher is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSpec {
    /// The network namespace's name (`/run/netns/<name>`).
    pub netns: String,
    /// The instance's root disk.
    pub disk: PathBuf,
    /// The (empty) directory the disk is mounted on inside the mount namespace.
    pub root: PathBuf,
    /// cgroup directories to join.
    pub cgroups: Vec<PathBuf>,
    /// Where the launcher writes init's host pid.
    pub pid_file: PathBuf,
    pub knobs: AgentKnobs,
}

/// The launcher's arguments (after the program name).
pub fn launcher_args(spec: &NamespaceSpec) -> Vec<String> {
    let mut args = vec![
        LAUNCHER_SUBCOMMAND.to_string(),
        "--netns".into(),
        Path::new("/run/netns")
            .join(&spec.netns)
            .display()
            .to_string(),
        "--disk".into(),
        spec.disk.display().to_string(),
        "--root".into(),
        spec.root.display().to_string(),
        "--pid-file".into(),
        spec.pid_file.display().to_string(),
    ];
    for cg in &spec.cgroups {
        args.push("--cgroup".into());
        args.push(cg.display().to_string());
    }
    for (k, v) in spec.knobs.env() {
        args.push("--env".into());
        args.push(format!("{k}={v}"));
    }
    args
}

/// A running namespace instance.
pub struct NamespaceInstance {
    launcher: Child,
    init: Option<HostProcess>,
}

impl NamespaceInstance {
    /// init's host process.
    pub fn init(&self) -> Option<&HostProcess> {
        self.init.as_ref()
    }

    pub fn launcher_pid(&self) -> i32 {
        self.launcher.id() as i32
    }

    fn signal_init(&self, sig: libc::c_int) -> bool {
        match &self.init {
            Some(p) if p.is_alive() => {
                // SAFETY: plain kill(2) of the instance's init, checked to be the same process.
                unsafe { libc::kill(p.pid, sig) == 0 }
            }
            _ => false,
        }
    }
}

/// Starts the launcher (this very `kumo` binary) and waits until init runs.
pub fn spawn(
    spec: &NamespaceSpec,
    files: &ConsoleFiles,
    sink: &Sink,
) -> Result<NamespaceInstance, NamespaceError> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let err = |source| NamespaceError::Spawn {
        exe: exe.clone(),
        source,
    };
    let _ = std::fs::remove_file(&spec.pid_file);
    let (reader, writer) = std::io::pipe().map_err(err)?;
    let mut cmd = Command::new(&exe);
    cmd.args(launcher_args(spec))
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(writer.try_clone().map_err(err)?)
        .stderr(writer);
    instance_child(&mut cmd);
    let launcher = cmd.spawn().map_err(err)?;
    // Our copies of the pipe's write end go with `cmd`, so the reader sees EOF when the
    // instance's processes are gone.
    drop(cmd);
    spawn_reader(reader, Stream::Console, files.clone(), sink.clone()).map_err(err)?;
    let mut instance = NamespaceInstance {
        launcher,
        init: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&spec.pid_file)
            && let Ok(pid) = text.trim().parse::<i32>()
        {
            instance.init = HostProcess::of(pid, "init");
            return Ok(instance);
        }
        if let Some(status) = instance.try_wait() {
            return Err(NamespaceError::NoInit(format!(
                "the launcher exited ({status}); its reason is above"
            )));
        }
        if Instant::now() > deadline {
            instance.force_stop();
            return Err(NamespaceError::NoInit("no init after 30 s".into()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl InstanceProcess for NamespaceInstance {
    fn pid(&self) -> i32 {
        self.launcher_pid()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.launcher.try_wait().ok().flatten()
    }

    fn request_shutdown(&mut self) -> Result<(), String> {
        if self.signal_init(libc::SIGUSR2) {
            Ok(())
        } else {
            Err("the instance's init is not running".into())
        }
    }

    fn force_stop(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        // SIGKILL to PID 1 of the namespace ends every process in it.
        self.signal_init(libc::SIGKILL);
        if self.wait_timeout(Duration::from_secs(2)).is_some() {
            return;
        }
        let _ = self.launcher.kill();
        let _ = self.launcher.wait();
    }
}

impl Drop for NamespaceInstance {
    fn drop(&mut self) {
        self.force_stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_arguments() {
        let spec = NamespaceSpec {
            netns: "kumo-i-0123456789abcdef0".into(),
            disk: "/k/i/root.ext4".into(),
            root: "/k/i/rootfs".into(),
            cgroups: vec![
                "/sys/fs/cgroup/memory/kumo/i-0123456789abcdef0".into(),
                "/sys/fs/cgroup/cpu/kumo/i-0123456789abcdef0".into(),
            ],
            pid_file: "/k/i/init.pid".into(),
            knobs: AgentKnobs {
                script_timeout_secs: Some(300),
                ..Default::default()
            },
        };
        assert_eq!(
            launcher_args(&spec),
            [
                "__namespace-init",
                "--netns",
                "/run/netns/kumo-i-0123456789abcdef0",
                "--disk",
                "/k/i/root.ext4",
                "--root",
                "/k/i/rootfs",
                "--pid-file",
                "/k/i/init.pid",
                "--cgroup",
                "/sys/fs/cgroup/memory/kumo/i-0123456789abcdef0",
                "--cgroup",
                "/sys/fs/cgroup/cpu/kumo/i-0123456789abcdef0",
                "--env",
                "KUMO_AGENT_SCRIPT_TIMEOUT=300",
            ]
        );
    }
}
