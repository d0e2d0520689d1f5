//! Child processes that tests start: killed and reaped on drop; their output line by line.

use std::io::{BufRead, BufReader, Read};
use std::ops::{Deref, DerefMut};
use std::process::Child;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// A child process that is stopped and reaped when dropped, if it is still running: at once
/// with SIGKILL ([`ChildGuard::new`]), or with SIGTERM first and SIGKILL after a grace period
/// ([`ChildGuard::terminate_first`]), for children that clean up after themselves.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    grace: Option<Duration>,
}

impl ChildGuard {
    /// Killed with SIGKILL when dropped.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child, grace: None }
    }

    /// Sent SIGTERM when dropped, and SIGKILL if it has not ended within `grace`.
    pub fn terminate_first(child: Child, grace: Duration) -> ChildGuard {
        ChildGuard {
            child,
            grace: Some(grace),
        }
    }

    /// Kills it (SIGKILL) if it still runs, and reaps it.
    fn kill_and_reap(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for it to end; its status, or None if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Some(grace) = self.grace
            && let Ok(pid) = i32::try_from(self.child.id())
        {
            // SAFETY: kill(2) takes no pointers; `pid` is this guard's own child, not yet
            // reaped, so the id cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if self.wait_timeout(grace).is_some() {
                return;
            }
        }
        self.kill_and_reap();
    }
}

/// The lines of a child's output (or any reader), read by a thread as they come; the channel
/// ends with the output.
pub fn lines_of(reader: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
