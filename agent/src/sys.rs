//! Thin, checked wrappers over the Linux calls an init needs: mounts, hostname, reboot, the
//! console file descriptors, and syncing.

use std::ffi::CString;
use std::io;
use std::path::Path;

/// A file system the init mounts at boot.
#[derive(Debug, Clone, Copy)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: libc::c_ulong,
    pub data: &'static str,
}

/// What PID 1 mounts, in order.
pub const BOOT_MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=1777",
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=1777",
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=0755",
    },
];

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in string"))
}

/// Mounts one file system, creating the mount point. `Ok(false)` when something is already
/// mounted there (EBUSY), as when the kernel mounted devtmpfs itself.
pub fn mount(spec: &MountSpec) -> io::Result<bool> {
    std::fs::create_dir_all(spec.target)?;
    let source = cstring(spec.source)?;
    let target = cstring(spec.target)?;
    let fstype = cstring(spec.fstype)?;
    let data = cstring(spec.data)?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            spec.flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EBUSY) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Whether `path` is a mount point according to /proc/self/mountinfo.
pub fn is_mount_point(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(path)))
        .unwrap_or(false)
}

/// Sets the kernel hostname (of this UTS namespace).
pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_sethostname, name.as_ptr(), name.len()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kernel hostname.
pub fn hostname() -> io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its full length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// What to do once every process is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownAction {
    PowerOff,
    Reboot,
    Halt,
}

impl ShutdownAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownAction::PowerOff => "poweroff",
            ShutdownAction::Reboot => "reboot",
            ShutdownAction::Halt => "halt",
        }
    }

    fn reboot_cmd(self) -> libc::c_int {
        match self {
            ShutdownAction::PowerOff => libc::RB_POWER_OFF,
            ShutdownAction::Reboot => libc::RB_AUTOBOOT,
            ShutdownAction::Halt => libc::RB_HALT_SYSTEM,
        }
    }
}

/// reboot(2). Returns only on failure. In a child PID namespace the kernel ends the namespace's
/// init instead: with SIGINT for power off and halt, SIGHUP for reboot.
pub fn reboot(action: ShutdownAction) -> io::Error {
    // SAFETY: reboot takes a plain integer command.
    unsafe { libc::reboot(action.reboot_cmd()) };
    io::Error::last_os_error()
}

/// Makes Ctrl-Alt-Del send SIGINT to init instead of rebooting at once.
pub fn disable_ctrl_alt_del() {
    // SAFETY: reboot takes a plain integer command.
    unsafe { libc::reboot(libc::RB_DISABLE_CAD) };
}

/// Flushes file system buffers.
pub fn sync() {
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Makes sure fds 0, 1 and 2 are open: the kernel leaves them closed when the root file system
/// has no /dev/console. Opens /dev/console (or /dev/null) for the missing ones.
pub fn ensure_console_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor table.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
        if open {
            continue;
        }
        for path in ["/dev/console", "/dev/null"] {
            let Ok(c) = cstring(path) else { continue };
            let flags = if fd == 0 {
                libc::O_RDONLY
            } else {
                libc::O_WRONLY
            };
            // SAFETY: `c` is a valid NUL-terminated path.
            let new = unsafe { libc::open(c.as_ptr(), flags | libc::O_NOCTTY) };
            if new < 0 {
                continue;
            }
            if new != fd {
                // SAFETY: both are descriptors of this process; dup2 replaces `fd`.
                unsafe {
                    libc::dup2(new, fd);
                    libc::close(new);
                }
            }
            break;
        }
    }
}

/// Sends `signal` to every process but the caller (`kill(-1, sig)`), and does nothing unless the
/// caller is PID 1 of its PID namespace: anywhere else `kill(-1)` would reach every process the
/// caller may signal, on the whole host.
pub fn kill_all(signal: libc::c_int) {
    if getpid() != 1 {
        tracing::warn!("not PID 1: not sending signal {signal} to every process");
        return;
    }
    // SAFETY: plain syscall; the caller is PID 1, so this never reaches outside its namespace.
    unsafe { libc::kill(-1, signal) };
}

/// Reaps one exited child without blocking: `Some((pid, raw status))`, or `None` when no child
/// has exited yet, `Err` with ECHILD when there are no children.
pub fn try_reap() -> io::Result<Option<(i32, i32)>> {
    let mut status = 0;
    // SAFETY: `status` is a valid out pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    match pid {
        0 => Ok(None),
        p if p > 0 => Ok(Some((p, status))),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The current process id.
pub fn getpid() -> i32 {
    std::process::id() as i32
}

/// True if `path` (under the root) exists and is executable by someone.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
