//! The harness for kumo-vmm's KVM tests: build a tiny guest, run the real `kumo-vmm` binary on
//! it with a timeout, get back its serial output, stderr and exit status.
//!
//! ```ignore
//! mod common;
//! use common::*;
//!
//! #[test]
//! fn my_test() {
//!     if !kvm_available("my_test") { return; }          // prints SKIPPED and returns
//!     let guest = build_guest("hello");                   // vmm/guests/src/bin/hello.rs
//!     let run = Vmm::new(&guest).args(["--memory-mib", "64"]).run();
//!     run.assert_success();                               // exit 0, or panics with all output
//!     assert!(run.serial.contains("hello from a kumo test guest"), "{run}");
//! }
//! ```
//!
//! - [`build_guest`] builds the Rust guests of `vmm/guests` once per test process (cargo, host
//!   target, `vmm/guests/.cargo/config.toml`); [`build_asm_guest`] assembles
//!   `vmm/guests/asm/NAME.S` with GNU `as` + `ld` (PVH guests).
//! - [`Vmm`] runs `kumo-vmm --kernel GUEST --console stdio` with stdin from /dev/null; the
//!   serial console is its stdout. [`Vmm::run`] waits (default timeout 30 s) and kills it on
//!   timeout; [`Vmm::spawn`] gives a [`RunningVmm`] for tests that talk to it while it runs
//!   (API socket): it reads output as it comes and kills the process when dropped, so a failing
//!   test leaves nothing behind.
//! - [`skip`] (from kumo-testkit) prints `SKIPPED: <test>: <reason>` on stderr and appends it to
//!   `$KUMO_SKIP_LOG`.
#![allow(dead_code)]

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The kumo-vmm binary cargo built for these tests.
pub const KUMO_VMM: &str = env!("CARGO_BIN_EXE_kumo-vmm");
/// Default time limit for one VM run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub use kumo_testkit::skip;

/// Whether /dev/kvm can be opened; if not, reports `test` as skipped.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skip(test, &format!("/dev/kvm is not usable here ({e})"));
            false
        }
    }
}

fn repo_vmm_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where guests are built (inside cargo's target directory, apart from the workspace build).
pub fn guest_target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kumo-guests")
}

static GUESTS_BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Builds every Rust guest in `vmm/guests` (once per process) and returns the ELF of `name`.
pub fn build_guest(name: &str) -> PathBuf {
    let dir = GUESTS_BUILT
        .get_or_init(|| {
            let guests = repo_vmm_dir().join("guests");
            let target = guest_target_dir();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = Command::new(cargo)
                .args(["build", "--release", "--offline", "--quiet"])
                .current_dir(&guests)
                .env("CARGO_TARGET_DIR", &target)
                // The outer cargo's settings are for the workspace, not for freestanding guests.
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("CARGO_BUILD_RUSTFLAGS")
                .env_remove("CARGO_BUILD_TARGET")
                .env_remove("CARGO_MAKEFLAGS")
                .output()
                .map_err(|e| format!("cannot run cargo to build the test guests: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "building the test guests in {} failed:\n{}",
                    guests.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(target.join("x86_64-unknown-linux-gnu").join("release"))
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "no guest named {name:?} in vmm/guests/src/bin"
    );
    path
}

/// Assembles and links `vmm/guests/asm/NAME.S` (with `asm/pvh.ld`); returns the ELF.
pub fn build_asm_guest(name: &str) -> PathBuf {
    let asm = repo_vmm_dir().join("guests").join("asm");
    let out_dir = guest_target_dir().join("asm");
    std::fs::create_dir_all(&out_dir).unwrap();
    let obj = out_dir.join(format!("{name}.o"));
    let elf = out_dir.join(name);
    let run = |cmd: &mut Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install binutils)"));
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("as")
        .arg("--64")
        .arg("-o")
        .arg(&obj)
        .arg(asm.join(format!("{name}.S"))));
    run(Command::new("ld")
        .args(["-m", "elf_x86_64", "--no-warn-rwx-segments", "-T"])
        .arg(asm.join("pvh.ld"))
        .arg("-o")
        .arg(&elf)
        .arg(&obj));
    elf
}

/// A finished kumo-vmm run.
pub struct VmmRun {
    /// Exit status (None if it was killed on timeout).
    pub status: Option<ExitStatus>,
    /// Everything the guest wrote to the serial console.
    pub serial: String,
    /// kumo-vmm's stderr.
    pub stderr: String,
    /// Whether the run hit its time limit.
    pub timed_out: bool,
    /// Wall time.
    pub elapsed: Duration,
}

impl VmmRun {
    /// The exit code (None if killed by a signal or on timeout).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Panics (showing everything) unless kumo-vmm exited 0 within its time limit.
    pub fn assert_success(&self) {
        assert!(
            !self.timed_out && self.code() == Some(0),
            "kumo-vmm did not exit 0:\n{self}"
        );
    }

    /// The lines of stderr that are not log lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

impl fmt::Display for VmmRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "status: {:?} (timed out: {}, {:?})",
            self.status, self.timed_out, self.elapsed
        )?;
        writeln!(f, "--- serial ---\n{}", self.serial)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

/// A kumo-vmm command line.
pub struct Vmm {
    args: Vec<String>,
    timeout: Duration,
    env: Vec<(String, String)>,
    console_stdio: bool,
}

impl Vmm {
    /// `kumo-vmm --kernel KERNEL` (plus `--console stdio` unless `--console` is given).
    pub fn new(kernel: &Path) -> Self {
        Self {
            args: vec!["--kernel".into(), kernel.display().to_string()],
            timeout: DEFAULT_TIMEOUT,
            env: vec![],
            console_stdio: true,
        }
    }

    /// No `--kernel` at all (for configuration-error tests).
    pub fn bare() -> Self {
        Self {
            args: vec![],
            timeout: DEFAULT_TIMEOUT,
            env: vec![],
            console_stdio: true,
        }
    }

    /// More arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for a in args {
            let a = a.as_ref().to_string();
            if a == "--console" {
                self.console_stdio = false;
            }
            self.args.push(a);
        }
        self
    }

    /// An environment variable for kumo-vmm.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The time limit.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(KUMO_VMM);
        cmd.args(&self.args);
        if self.console_stdio {
            cmd.args(["--console", "stdio"]);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts kumo-vmm; the returned guard kills it when dropped.
    pub fn spawn(&self) -> RunningVmm {
        let started = Instant::now();
        let mut child = self
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {KUMO_VMM}: {e}"));
        let serial = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            pump(child.stdout.take().unwrap(), serial.clone()),
            pump(child.stderr.take().unwrap(), stderr.clone()),
        ];
        RunningVmm {
            child: Some(child),
            serial,
            stderr,
            readers,
            started,
            timeout: self.timeout,
        }
    }

    /// Runs kumo-vmm to the end (or its time limit).
    pub fn run(&self) -> VmmRun {
        self.spawn().wait()
    }
}

fn pump(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// A kumo-vmm process; killed (and reaped) when dropped.
pub struct RunningVmm {
    child: Option<Child>,
    serial: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    timeout: Duration,
}

impl RunningVmm {
    /// The serial output so far.
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&self.serial.lock().unwrap()).into_owned()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits until the serial output contains `text`; false if the time limit passes or the
    /// process exits first.
    pub fn wait_for_serial(&mut self, text: &str, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.serial().contains(text) {
                return true;
            }
            if let Some(c) = self.child.as_mut()
                && matches!(c.try_wait(), Ok(Some(_)))
            {
                std::thread::sleep(Duration::from_millis(50));
                return self.serial().contains(text);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Kills the process now and collects everything (`timed_out` is false unless it had
    /// already ended by itself, in which case `status` is its own).
    pub fn kill(mut self) -> VmmRun {
        if let Some(c) = self.child.as_mut()
            && matches!(c.try_wait(), Ok(None))
        {
            let _ = c.kill();
        }
        self.timeout = Duration::ZERO;
        let mut run = self.wait();
        run.timed_out = false;
        run
    }

    /// Waits for the process to end (killing it at the time limit) and collects everything.
    pub fn wait(mut self) -> VmmRun {
        let mut child = self.child.take().expect("not waited yet");
        let deadline = self.started + self.timeout;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("waiting for kumo-vmm: {e}"),
            }
        };
        let elapsed = self.started.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        VmmRun {
            status,
            serial: String::from_utf8_lossy(&self.serial.lock().unwrap()).into_owned(),
            stderr: String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned(),
            timed_out,
            elapsed,
        }
    }
}

impl Drop for RunningVmm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh temporary directory (removed when dropped).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("cannot create a temporary directory")
}
