//! Network namespaces that tests make, deleted on drop.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A network namespace made by a test (`ip netns add`). Dropping it kills every process still
/// inside and deletes it, which also deletes the netdevs in it (a veth's peer with them).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`.
    pub fn add(name: impl Into<String>) -> io::Result<Netns> {
        let name = name.into();
        crate::run(&["ip", "netns", "add", &name])?;
        Ok(Netns { name })
    }

    /// Like [`Netns::add`], after deleting a namespace of that name a killed earlier run may
    /// have left.
    pub fn replace(name: impl Into<String>) -> io::Result<Netns> {
        let name = name.into();
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        Netns::add(name)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its file, for `setns(2)` or `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip netns exec NAME ARGS...`: a command that runs `args` inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs `args` inside the namespace; an error if it cannot start or fails (with its
    /// stderr).
    pub fn exec(&self, args: &[&str]) -> io::Result<Output> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        crate::run(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .stderr(Stdio::null())
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) takes no pointers; `pid` is a process inside this test's
                    // own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
