//! Running user-data scripts and commands: output to the console and the log file, a timeout
//! that kills the whole process group, and exit statuses that work both when the agent is PID 1
//! (one reaper collects every child, including orphans, and hands our children's statuses on)
//! and when it is an ordinary service (each child is waited for directly).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::report::Reporter;

/// How exit statuses are collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaping {
    /// Each child is waited for by its own thread (not PID 1).
    PerChild,
    /// PID 1: the init loop reaps everything through [`Children::reap_available`].
    Central,
}

/// Spawns children and delivers their exit statuses.
#[derive(Debug, Clone)]
pub struct Children {
    reaping: Reaping,
    waiting: Arc<Mutex<HashMap<i32, Sender<ExitStatus>>>>,
}

impl Children {
    pub fn new(reaping: Reaping) -> Self {
        Self {
            reaping,
            waiting: Arc::default(),
        }
    }

    /// Spawns `cmd`; the receiver gets its exit status.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(i32, Receiver<ExitStatus>)> {
        let (tx, rx) = mpsc::channel();
        match self.reaping {
            Reaping::PerChild => {
                let mut child = cmd.spawn()?;
                let pid = child.id() as i32;
                std::thread::spawn(move || {
                    if let Ok(status) = child.wait() {
                        let _ = tx.send(status);
                    }
                });
                Ok((pid, rx))
            }
            Reaping::Central => {
                // Hold the lock across spawn and registration so that the reaper, which takes
                // the same lock, cannot collect this child before it is registered.
                let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                let child = cmd.spawn()?;
                let pid = child.id() as i32;
                waiting.insert(pid, tx);
                // The Child handle is dropped without waiting: the central reaper owns that.
                drop(child);
                Ok((pid, rx))
            }
        }
    }

    /// The central reaper: collects every exited child (`waitpid(-1, WNOHANG)`) and hands our
    /// children's statuses to their waiters; orphans are just collected. Holds the registry lock
    /// while reaping, so it never races a spawn (std waits for a child whose exec failed).
    /// Returns false when there are no children left at all (ECHILD).
    pub fn reap_available(&self) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match crate::sys::try_reap() {
                Ok(Some((pid, raw))) => {
                    if let Some(tx) = waiting.remove(&pid) {
                        let _ = tx.send(ExitStatus::from_raw(raw));
                    }
                }
                Ok(None) => return true,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// How a script ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signaled(i32),
    TimedOut(Duration),
    /// It could not be started; the reason says why.
    NotStarted(String),
}

impl Outcome {
    pub fn success(&self) -> bool {
        *self == Outcome::Exited(0)
    }

    /// A shell-style status: the exit code, 128+signal, 124 on timeout, 126 if not started.
    pub fn code(&self) -> i32 {
        match self {
            Outcome::Exited(c) => *c,
            Outcome::Signaled(s) => 128 + s,
            Outcome::TimedOut(_) => 124,
            Outcome::NotStarted(_) => 126,
        }
    }

    pub fn exit(&self) -> Option<i32> {
        match self {
            Outcome::Exited(c) => Some(*c),
            _ => None,
        }
    }

    pub fn signal(&self) -> Option<i32> {
        match self {
            Outcome::Signaled(s) => Some(*s),
            _ => None,
        }
    }

    /// Why it failed, in words; `None` on success.
    pub fn reason(&self) -> Option<String> {
        match self {
            Outcome::Exited(0) => None,
            Outcome::Exited(c) => Some(format!("exited with status {c}")),
            Outcome::Signaled(s) => Some(format!("killed by signal {s}")),
            Outcome::TimedOut(d) => Some(format!(
                "did not finish within {}s and was killed (set kumo.script_timeout to allow longer)",
                d.as_secs()
            )),
            Outcome::NotStarted(r) => Some(r.clone()),
        }
    }
}

/// Where script output goes: the console (through the reporter) and a log file.
#[derive(Debug, Clone)]
pub struct OutputSink {
    pub reporter: Reporter,
    pub log_path: Option<PathBuf>,
}

impl OutputSink {
    /// Writes a chunk to the console and appends it to the log.
    pub fn write(&self, bytes: &[u8]) {
        self.reporter.console(bytes);
        if let Some(path) = &self.log_path
            && let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path)
        {
            let _ = f.write_all(bytes);
        }
    }
}

/// The interpreter named on a script's `#!` line.
pub fn shebang_interpreter(script: &[u8]) -> Option<String> {
    let line = script.strip_prefix(b"#!")?.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    line.split_whitespace().next().map(str::to_owned)
}

fn describe_spawn_error(path: &Path, root: &Path, e: &std::io::Error) -> String {
    let script = std::fs::read(path).unwrap_or_default();
    match e.raw_os_error() {
        Some(libc::ENOENT) => match shebang_interpreter(&script) {
            Some(interp) if !root.join(interp.trim_start_matches('/')).exists() => {
                format!("its interpreter {interp} does not exist in this image")
            }
            _ => format!("cannot run it: {e}"),
        },
        Some(libc::ENOEXEC) => {
            "not executable: the kernel does not recognise its format (no #! line?)".into()
        }
        Some(libc::EACCES) => {
            format!(
                "permission denied running it (is {} on a noexec file system?)",
                path.display()
            )
        }
        _ => format!("cannot run it: {e}"),
    }
}

/// Runs an executable file with output to `sink`, killing its process group after `timeout`.
pub fn run_logged(
    children: &Children,
    path: &Path,
    root: &Path,
    sink: &OutputSink,
    timeout: Duration,
    env: &[(&str, &str)],
) -> Outcome {
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return Outcome::NotStarted(format!("cannot create a pipe: {e}")),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return Outcome::NotStarted(format!("cannot create a pipe: {e}")),
    };
    let mut cmd = Command::new(path);
    cmd.stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .current_dir(root)
        .process_group(0);
    if !env.iter().any(|(k, _)| *k == "PATH") {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    // A script written a moment ago may be "busy" while another thread forks: retry briefly.
    let mut attempts = 0;
    let spawned = loop {
        match children.spawn(&mut cmd) {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 20 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => break other,
        }
    };
    // The Command still holds the write ends; drop it so EOF arrives when the script exits.
    drop(cmd);
    let (pid, rx) = match spawned {
        Ok(s) => s,
        Err(e) => return Outcome::NotStarted(describe_spawn_error(path, root, &e)),
    };
    let forward_sink = sink.clone();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    // Forwards output until EOF. Processes the script left running in the background keep the
    // pipe open; their output keeps flowing to the console after the script is reported done.
    std::thread::spawn(move || {
        let mut reader = reader;
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => forward_sink.write(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = done_tx.send(());
    });
    let outcome = match rx.recv_timeout(timeout) {
        Ok(status) => status_outcome(status),
        Err(RecvTimeoutError::Timeout) => {
            // SAFETY: plain kill(2) of the script's own process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = rx.recv_timeout(Duration::from_secs(5));
            Outcome::TimedOut(timeout)
        }
        Err(RecvTimeoutError::Disconnected) => {
            Outcome::NotStarted("its exit status was lost".into())
        }
    };
    // Let the output catch up (EOF comes at once unless something still holds the pipe).
    let _ = done_rx.recv_timeout(Duration::from_millis(250));
    outcome
}

fn status_outcome(status: ExitStatus) -> Outcome {
    if let Some(code) = status.code() {
        Outcome::Exited(code)
    } else if let Some(sig) = status.signal() {
        Outcome::Signaled(sig)
    } else {
        Outcome::Exited(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    /// Whether process `pid` has ended (gone, or a zombie) within a few seconds: a killed
    /// process ends at once, so this only waits for the kernel to finish tearing it down.
    fn process_ends(pid: u32) -> bool {
        for _ in 0..100 {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                Ok(stat) => {
                    let state = stat
                        .rsplit_once(") ")
                        .and_then(|(_, rest)| rest.chars().next());
                    if state == Some('Z') {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn sink(dir: &Path) -> (OutputSink, Arc<Mutex<Vec<u8>>>) {
        #[derive(Clone)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let reporter = Reporter::new(Instant::now(), Box::new(Shared(buf.clone())));
        (
            OutputSink {
                reporter,
                log_path: Some(dir.join("out.log")),
            },
            buf,
        )
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        p
    }

    #[test]
    fn output_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, console) = sink(dir.path());
        let children = Children::new(Reaping::PerChild);
        let p = script(
            dir.path(),
            "s",
            "#!/bin/sh\necho out\necho err >&2\nexit 3\n",
        );
        let o = run_logged(
            &children,
            &p,
            Path::new("/"),
            &sink,
            Duration::from_secs(10),
            &[],
        );
        assert_eq!(o, Outcome::Exited(3));
        assert_eq!(o.code(), 3);
        let console = String::from_utf8(console.lock().unwrap().clone()).unwrap();
        assert_eq!(console, "out\nerr\n");
        let log = std::fs::read_to_string(dir.path().join("out.log")).unwrap();
        assert_eq!(log, "out\nerr\n");
    }

    #[test]
    fn timeout_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, _) = sink(dir.path());
        let children = Children::new(Reaping::PerChild);
        let bg_pid_file = dir.path().join("bg.pid");
        let p = script(
            dir.path(),
            "s",
            &format!(
                "#!/bin/sh\nsleep 30 &\necho $! > {}\nsleep 30\n",
                bg_pid_file.display()
            ),
        );
        let o = run_logged(
            &children,
            &p,
            Path::new("/"),
            &sink,
            Duration::from_millis(300),
            &[],
        );
        assert_eq!(o, Outcome::TimedOut(Duration::from_millis(300)));
        assert_eq!(o.code(), 124);
        // The whole process group went, the script's background child included.
        let bg_pid = std::fs::read_to_string(&bg_pid_file).unwrap();
        assert!(
            process_ends(bg_pid.trim().parse().unwrap()),
            "background child {bg_pid} survived the timeout"
        );
    }

    #[test]
    fn missing_interpreter_and_no_shebang() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, _) = sink(dir.path());
        let children = Children::new(Reaping::PerChild);
        let p = script(dir.path(), "a", "#!/nonexistent/bash\necho\n");
        let o = run_logged(
            &children,
            &p,
            Path::new("/"),
            &sink,
            Duration::from_secs(5),
            &[],
        );
        match o {
            Outcome::NotStarted(r) => {
                assert!(r.contains("/nonexistent/bash does not exist"), "{r}")
            }
            o => panic!("{o:?}"),
        }
        let p = script(dir.path(), "b", "\x7fELF garbage");
        let o = run_logged(
            &children,
            &p,
            Path::new("/"),
            &sink,
            Duration::from_secs(5),
            &[],
        );
        assert!(matches!(o, Outcome::NotStarted(_)), "{o:?}");
    }

    #[test]
    fn signaled() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, _) = sink(dir.path());
        let children = Children::new(Reaping::PerChild);
        let p = script(dir.path(), "s", "#!/bin/sh\nkill -9 $$\n");
        let o = run_logged(
            &children,
            &p,
            Path::new("/"),
            &sink,
            Duration::from_secs(5),
            &[],
        );
        assert_eq!(o, Outcome::Signaled(9));
        assert_eq!(o.code(), 137);
    }

    #[test]
    fn shebang() {
        assert_eq!(
            shebang_interpreter(b"#!/bin/sh -e\n").as_deref(),
            Some("/bin/sh")
        );
        assert_eq!(shebang_interpreter(b"echo"), None);
    }
}
