//! The namespace launcher: `kumo __namespace-init ...`, the process `kumo run` starts for a
//! namespace instance (see [`super::namespace`] for the design). It is a fresh, single-threaded
//! process, which `unshare(CLONE_NEWNS)` requires, so it is this same binary started again rather
//! than a fork of the multi-threaded `kumo run`.
//!
//! Order matters: cgroups first (everything after inherits them); the network namespace; a
//! private mount namespace and the loop mount (by util-linux's `mount`, a child process, so
//! *before* the new PID namespace: the first child after `unshare(CLONE_NEWPID)` is that
//! namespace's PID 1); then PID, UTS, IPC and cgroup namespaces and init, which `pivot_root`s
//! into the disk between fork and exec. The launcher's exit status is init's (128 + signal when a
//! signal ended it: SIGINT after a poweroff, SIGHUP after a reboot); 125 when it could not start
//! init, with the reason on stderr (the instance's console).

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `kumo __namespace-init`'s arguments (internal: `kumo run` passes them).
#[derive(Debug, Clone, clap::Args)]
pub struct NamespaceInitArgs {
    /// The network namespace to enter (`/run/netns/NAME`).
    #[arg(long)]
    pub netns: PathBuf,
    /// The instance's root disk (raw ext4).
    #[arg(long)]
    pub disk: PathBuf,
    /// The empty directory to mount it on.
    #[arg(long)]
    pub root: PathBuf,
    /// Where to write init's pid.
    #[arg(long)]
    pub pid_file: PathBuf,
    /// cgroup directories to join (repeatable).
    #[arg(long)]
    pub cgroup: Vec<PathBuf>,
    /// KEY=VALUE for init's environment (repeatable).
    #[arg(long)]
    pub env: Vec<String>,
}

/// Runs the launcher; never returns.
pub fn main(args: NamespaceInitArgs) -> ! {
    match launch(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("kumo: cannot start the namespace instance: {e}");
            std::process::exit(125);
        }
    }
}

fn cstring(p: &std::path::Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} has a NUL", p.display()))
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn launch(args: &NamespaceInitArgs) -> Result<i32, String> {
    // 1. cgroups: init and everything it starts inherit them.
    for cg in &args.cgroup {
        if let Err(e) = std::fs::write(cg.join("cgroup.procs"), "0") {
            eprintln!("kumo: not limited by {}: {e}", cg.display());
        }
    }
    // 2. The instance's network namespace (eth0 is already in it).
    let netns = std::fs::File::open(&args.netns)
        .map_err(|e| format!("opening {}: {e}", args.netns.display()))?;
    // SAFETY: setns(2) on an open namespace fd; affects only this (single-threaded) process.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(os_err("entering the network namespace"));
    }
    drop(netns);
    // 3. A private mount namespace and the loop mount of the root disk.
    // SAFETY: unshare(2) with flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(os_err("unshare(CLONE_NEWNS)"));
    }
    let slash = CString::new("/").expect("no NUL");
    // SAFETY: mount(2) with a valid C string target and null source/type/data: makes every
    // mount in this new namespace private, so nothing propagates to or from the host.
    if unsafe {
        libc::mount(
            std::ptr::null(),
            slash.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(os_err("making mounts private"));
    }
    let out = Command::new("mount")
        .args(["-t", "ext4", "-o", "loop"])
        .arg(&args.disk)
        .arg(&args.root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running mount (util-linux): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -o loop {} {}: {}",
            args.disk.display(),
            args.root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if !args.root.join("sbin/init").exists() {
        return Err(format!(
            "{} has no /sbin/init: the namespace backend runs images whose init is kumo-agent",
            args.disk.display()
        ));
    }
    // 4. PID, UTS, IPC and cgroup namespaces; the next child is PID 1.
    // SAFETY: unshare(2) with flags only.
    if unsafe {
        libc::unshare(
            libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWCGROUP,
        )
    } != 0
    {
        return Err(os_err("unshare(PID, UTS, IPC, cgroup)"));
    }
    let root = cstring(&args.root)?;
    let dot = CString::new(".").expect("no NUL");
    let mut init = Command::new("/sbin/init");
    init.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("TERM", "linux")
        .stdin(Stdio::null());
    for kv in &args.env {
        if let Some((k, v)) = kv.split_once('=') {
            init.env(k, v);
        }
    }
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe system
    // calls (prctl, unshare, chdir, pivot_root, umount2) on C strings prepared before the fork.
    unsafe {
        init.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // init gets a mount namespace of its own (a copy of the launcher's, the root disk
            // included) so that pivot_root changes its root only, not the launcher's.
            // pivot_root(".", "."): the new root is stacked over the old one, which the lazy
            // unmount then detaches (the runc way; no directory for the old root needed).
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::chdir(root.as_ptr()) != 0
                || libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) != 0
                || libc::umount2(dot.as_ptr(), libc::MNT_DETACH) != 0
                || libc::chdir(slash.as_ptr()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = init
        .spawn()
        .map_err(|e| format!("starting /sbin/init: {e}"))?;
    std::fs::write(&args.pid_file, child.id().to_string())
        .map_err(|e| format!("writing {}: {e}", args.pid_file.display()))?;
    let status = child.wait().map_err(|e| format!("waiting for init: {e}"))?;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(125))
}
