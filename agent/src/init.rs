//! PID 1: mounts, the signal loop (reaping every child, orphans included), and shutdown.
//!
//! Signals follow busybox's `halt`/`poweroff`/`reboot`, which signal PID 1: SIGUSR1 halts,
//! SIGUSR2 powers off, SIGTERM reboots. SIGPWR (power button, sysvinit) powers off and SIGINT
//! (Ctrl-Alt-Del) reboots. Shutdown sends SIGTERM to every process, waits up to
//! [`STOP_GRACE`], sends SIGKILL, syncs, and calls reboot(2). The root file system is not
//! remounted read-only: in the namespace backend that would change the host's mount, and ext4's
//! journal makes a synced but still-mounted file system safe.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::agent::{self, Settings};
use crate::exec::{Children, Reaping};
use crate::report::{Event, Reporter};
use crate::sys::{self, ShutdownAction};

/// How long processes get to exit after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

const HANDLED: &[libc::c_int] = &[
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPWR,
    libc::SIGHUP,
];

/// What a signal to PID 1 asks for.
pub fn action_for_signal(signal: libc::c_int) -> Option<ShutdownAction> {
    match signal {
        libc::SIGUSR2 | libc::SIGPWR => Some(ShutdownAction::PowerOff),
        libc::SIGTERM | libc::SIGINT => Some(ShutdownAction::Reboot),
        libc::SIGUSR1 => Some(ShutdownAction::Halt),
        _ => None,
    }
}

/// Blocks the handled signals in this thread (and so in threads spawned later) and returns a
/// signalfd that reads them.
fn signal_fd() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for these calls.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
    }
    // SAFETY: `set` is initialised; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    // SAFETY: `set` is initialised; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits up to `timeout` for one signal; `None` on timeout.
fn next_signal(fd: &OwnedFd, timeout: Option<Duration>) -> Option<libc::c_int> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc <= 0 {
        return None;
    }
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is writable for `size` bytes.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    (n as usize == size).then_some(info.ssi_signo as libc::c_int)
}

/// Mounts what an init must; failures are reported and boot goes on.
pub fn mount_basics(reporter: &Reporter) {
    for spec in sys::BOOT_MOUNTS {
        let mounted = if spec.target == "/proc" {
            std::path::Path::new("/proc/self/mountinfo").exists()
        } else {
            sys::is_mount_point(spec.target)
        };
        if mounted {
            continue;
        }
        if let Err(e) = sys::mount(spec) {
            // A kernel without devtmpfs: a tmpfs /dev at least gives scripts a place for nodes.
            if spec.fstype == "devtmpfs" {
                let fallback = sys::MountSpec {
                    source: "tmpfs",
                    fstype: "tmpfs",
                    ..*spec
                };
                if sys::mount(&fallback).is_ok() {
                    continue;
                }
            }
            reporter.send(Event::Warning {
                message: format!("cannot mount {} on {}: {e}", spec.fstype, spec.target),
            });
        }
    }
}

/// Runs as PID 1 (after [`mount_basics`]). Never returns.
pub fn run(settings: Settings, reporter: Reporter) -> ! {
    sys::ensure_console_fds();
    sys::disable_ctrl_alt_del();
    // SAFETY: setsid has no arguments; failure (already a session leader) is harmless.
    unsafe { libc::setsid() };
    let signals = match signal_fd() {
        Ok(fd) => Some(fd),
        Err(e) => {
            reporter.send(Event::Warning {
                message: format!("cannot set up signal handling ({e}); poweroff will not work"),
            });
            None
        }
    };
    let children = Children::new(Reaping::Central);
    {
        let settings = settings.clone();
        let reporter = reporter.clone();
        let children = children.clone();
        std::thread::spawn(move || {
            // A bug in the boot sequence must not take PID 1 (and so the kernel) down with it:
            // report it and keep reaping.
            let boot = std::panic::AssertUnwindSafe(|| {
                let lease = settings
                    .configure_network
                    .then(|| agent::bring_up_network(&settings, &reporter))
                    .and_then(|r| {
                        r.map_err(|reason| {
                            tracing::error!("network not configured: {reason}");
                            reporter.send(Event::NetworkFailed {
                                interface: settings.interface.clone(),
                                reason,
                            });
                        })
                        .ok()
                    })
                    .map(|(_, _, lease)| lease);
                agent::provision(&settings, &reporter, &children, lease.as_ref());
                start_ssh_server(&settings, &children);
            });
            if let Err(panic) = std::panic::catch_unwind(boot) {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                reporter.send(Event::Warning {
                    message: format!("kumo-agent's boot sequence failed: {what}"),
                });
            }
        });
    }
    let Some(signals) = signals else {
        loop {
            children.reap_available();
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    loop {
        let Some(signal) = next_signal(&signals, None) else {
            continue;
        };
        if signal == libc::SIGCHLD {
            children.reap_available();
        } else if let Some(action) = action_for_signal(signal) {
            shutdown(action, &children, &reporter, &signals);
        }
    }
}

/// Starts the image's OpenSSH server, if it has one, once keys are installed.
fn start_ssh_server(settings: &Settings, children: &Children) {
    let sshd = settings.root.join("usr/sbin/sshd");
    if !sys::is_executable(&sshd) {
        return;
    }
    let keygen = settings.root.join("usr/bin/ssh-keygen");
    if sys::is_executable(&keygen) {
        let mut cmd = std::process::Command::new(&keygen);
        cmd.arg("-A");
        if let Ok((_, rx)) = children.spawn(&mut cmd) {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
    }
    let _ = std::fs::create_dir_all("/run/sshd");
    let mut cmd = std::process::Command::new(&sshd);
    match children.spawn(&mut cmd) {
        Ok(_) => tracing::info!("started sshd"),
        Err(e) => tracing::warn!("cannot start sshd: {e}"),
    }
}

/// Stops every process, syncs and powers off or reboots. Never returns.
pub fn shutdown(
    action: ShutdownAction,
    children: &Children,
    reporter: &Reporter,
    signals: &OwnedFd,
) -> ! {
    tracing::info!("{}: stopping all processes", action.as_str());
    reporter.send(Event::Shutdown {
        action: action.as_str().to_string(),
    });
    sys::kill_all(libc::SIGTERM);
    sys::kill_all(libc::SIGCONT);
    let deadline = Instant::now() + STOP_GRACE;
    while children.reap_available() && Instant::now() < deadline {
        let _ = next_signal(signals, Some(Duration::from_millis(100)));
    }
    sys::kill_all(libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(2);
    while children.reap_available() && Instant::now() < deadline {
        let _ = next_signal(signals, Some(Duration::from_millis(50)));
    }
    sys::sync();
    let err = sys::reboot(action);
    // Only reached when reboot(2) failed.
    tracing::error!("reboot({}) failed: {err}; exiting", action.as_str());
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_signals() {
        assert_eq!(
            action_for_signal(libc::SIGUSR2),
            Some(ShutdownAction::PowerOff)
        );
        assert_eq!(
            action_for_signal(libc::SIGTERM),
            Some(ShutdownAction::Reboot)
        );
        assert_eq!(action_for_signal(libc::SIGUSR1), Some(ShutdownAction::Halt));
        assert_eq!(action_for_signal(libc::SIGHUP), None);
    }
}
