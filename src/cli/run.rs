//! `kumo run`: launch one instance in the foreground, show its console and what its user-data
//! did, then terminate it (or keep it until Ctrl-C with `--keep-running`).
//!
//! ```text
//! kumo run --image kumo-minimal [--instance-type t3.micro] [--user-data FILE]
//!          [--key-name NAME --public-key FILE] [--backend auto|kvm|namespace]
//!          [--keep-running] [--timeout SECS] [--output text|json]
//! ```
//!
//! stdout carries the instance's console and kumo's narration ("==> network up: 10.0.1.4"),
//! ending with a one-line summary; `--output json` prints only a JSON summary there. Exit status:
//! the user-data's own exit status (0 when it succeeded, or when there was none); 124 when it did
//! not finish within `--timeout`; 125 when the instance stopped before its user-data finished;
//! 130 when interrupted; 1 with an error message when kumo could not launch it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use kumo_agent::report::Event;
use kumo_net::imds::PublicKey;

use crate::compute::backend::{AgentKnobs, BackendChoice, BackendKind};
use crate::compute::console::{ConsoleEvent, Sink, Stream, describe};
use crate::compute::instance_types;
use crate::compute::launch::{self, LaunchRequest, Launched};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The AMI: an image name (kumo-minimal, debian-12) or an ami- id.
    #[arg(long)]
    pub image: String,
    /// The instance type (vCPUs and memory): t3.micro, m5.large, ...
    #[arg(long, default_value = instance_types::DEFAULT)]
    pub instance_type: String,
    /// A user-data file (a #! script, #cloud-config, MIME multi-part, or gzip of those).
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// The key pair's name, as the metadata service's public-keys/ lists it.
    #[arg(long, value_name = "NAME")]
    pub key_name: Option<String>,
    /// An OpenSSH public key file to install for the instance's default user.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
    /// kvm: a micro-VM (needs hardware virtualization); namespace: the image's init in Linux
    /// namespaces (kumo-minimal only); auto: kvm where the host can boot Linux in a VM.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// Keep the instance after its user-data finished, until Ctrl-C; it gets a public address
    /// this host can reach (ssh, curl), through an internet gateway on the VPC.
    #[arg(long)]
    pub keep_running: bool,
    /// Give up (and terminate the instance) if the user-data has not finished after SECS.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,
    /// text: the console and what happened in words; json: only a JSON summary on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

/// What ended the wait.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Finished { exit: i32, failed: Vec<String> },
    NoUserData(String),
    Rejected(String),
    InstanceEnded(String),
    TimedOut,
    Interrupted(&'static str),
}

impl Outcome {
    fn exit_code(&self) -> u8 {
        match self {
            Outcome::Finished { exit, .. } => u8::try_from(*exit).unwrap_or(1),
            Outcome::NoUserData(_) => 0,
            Outcome::Rejected(_) => 1,
            Outcome::TimedOut => 124,
            Outcome::InstanceEnded(_) => 125,
            Outcome::Interrupted(_) => 130,
        }
    }

    fn words(&self) -> String {
        match self {
            Outcome::Finished { exit, failed } if failed.is_empty() => {
                format!("user-data finished: exit {exit}")
            }
            Outcome::Finished { exit, failed } => {
                format!(
                    "user-data finished: exit {exit} (failed: {})",
                    failed.join(", ")
                )
            }
            Outcome::NoUserData(reason) => format!("no user-data ran ({reason})"),
            Outcome::Rejected(reason) => format!("user-data rejected: {reason}"),
            Outcome::InstanceEnded(how) => {
                format!("the instance stopped before its user-data finished ({how})")
            }
            Outcome::TimedOut => "the user-data did not finish in time (--timeout)".into(),
            Outcome::Interrupted(sig) => format!("interrupted by {sig}"),
        }
    }

    fn status(&self) -> &'static str {
        match self {
            Outcome::Finished { .. } => "user-data-finished",
            Outcome::NoUserData(_) => "no-user-data",
            Outcome::Rejected(_) => "user-data-rejected",
            Outcome::InstanceEnded(_) => "instance-ended",
            Outcome::TimedOut => "timed-out",
            Outcome::Interrupted(_) => "interrupted",
        }
    }
}

enum Msg {
    Console(ConsoleEvent),
    Signal(libc::c_int),
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every thread started after) and
/// delivers them as messages from a dedicated thread, so that Ctrl-C leads to a clean stop.
fn forward_signals(tx: mpsc::Sender<Msg>) -> Result<()> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; these only write to it and to this thread's mask.
    let r = unsafe {
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if r != 0 {
        bail!("blocking signals: {}", std::io::Error::from_raw_os_error(r));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialised and `sig` a valid out-pointer.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0
                    && tx.send(Msg::Signal(sig)).is_err()
                {
                    break;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Prints to stdout, ignoring a closed stdout (`kumo run | head`).
macro_rules! out {
    ($($t:tt)*) => {{
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, $($t)*);
        let _ = o.flush();
    }};
}

fn read_public_key(args: &RunArgs) -> Result<Option<PublicKey>> {
    match (&args.key_name, &args.public_key) {
        (_, Some(path)) => {
            let key = std::fs::read_to_string(path)
                .with_context(|| format!("reading the public key {}", path.display()))?;
            let key = key.trim().to_string();
            if !key.starts_with("ssh-") && !key.starts_with("ecdsa-") {
                bail!(
                    "{} is not an OpenSSH public key (expected a line like `ssh-ed25519 AAAA... name`)",
                    path.display()
                );
            }
            let name = args.key_name.clone().unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "key".into())
            });
            Ok(Some(PublicKey {
                name,
                openssh_key: key,
            }))
        }
        (Some(name), None) => bail!(
            "--key-name {name}: kumo has no key pair store yet (CreateKeyPair comes with the EC2 \
             API): give the public key too, with --public-key FILE"
        ),
        (None, None) => Ok(None),
    }
}

/// Runs `kumo run`.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let user_data = match &args.user_data {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("reading the user-data {}", p.display()))?,
        ),
        None => None,
    };
    let key = read_public_key(&args)?;
    let request = LaunchRequest {
        image: args.image.clone(),
        instance_type: args.instance_type.clone(),
        user_data,
        key,
        backend: args.backend,
        knobs: AgentKnobs {
            script_timeout_secs: Some(args.timeout),
            ..Default::default()
        },
        kvm_anyway: std::env::var_os("KUMO_KVM_ANYWAY").is_some_and(|v| v == "1"),
        host_access: args.keep_running,
    };
    let (tx, rx) = mpsc::channel::<Msg>();
    forward_signals(tx.clone())?;
    let console_tx = Mutex::new(tx);
    let sink: Sink = Arc::new(move |e| {
        let _ = console_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Msg::Console(e));
    });
    let text = args.output == OutputFormat::Text;
    let home = crate::paths::kumo_home();
    let mut instance = match launch::launch(&request, &home, sink, started) {
        Ok(instance) => instance,
        Err(e) => {
            // What the instance printed before it failed (the launcher's or kumo-vmm's reason).
            while let Ok(Msg::Console(ConsoleEvent::Line(stream, line))) =
                rx.recv_timeout(Duration::from_millis(50))
            {
                eprintln!(
                    "{}{line}",
                    if stream == Stream::Vmm {
                        "[kumo-vmm] "
                    } else {
                        ""
                    }
                );
            }
            return Err(e.into());
        }
    };
    let launched_ms = started.elapsed().as_millis();
    if text {
        let r = &instance.record;
        let eni = r.eni.as_ref();
        out!(
            "==> launched {} ({} {}, {}, {} vCPUs, {} MiB) on the {} backend in {launched_ms} ms",
            r.instance_id,
            r.image_name,
            r.image_id,
            r.instance_type,
            r.vcpus,
            r.memory_mib,
            r.backend.name(),
        );
        if let Some(eni) = eni {
            out!(
                "==> {} in {} / {} ({}), private IP {}, MAC {}",
                eni.eni_id,
                r.vpc.vpc_id,
                r.vpc.subnet_id,
                crate::compute::network::AVAILABILITY_ZONE,
                eni.private_ip,
                eni.mac
            );
        }
        if let Some(limits) = &instance.limits {
            for a in &limits.applied {
                out!("==> limit: {a}");
            }
            for n in &limits.notes {
                out!("==> {n}");
            }
        }
    }

    let mut session = Session {
        text,
        outcome: None,
        events: Vec::new(),
    };
    let deadline = started + Duration::from_secs(args.timeout);
    let mut hints_shown = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Msg::Console(e)) => session.console(e, &mut instance),
            Ok(Msg::Signal(sig)) => {
                if session.outcome.is_none() || args.keep_running {
                    let name = signal_name(sig);
                    if session.outcome.is_none() {
                        session.outcome = Some(Outcome::Interrupted(name));
                    }
                    if text {
                        out!("==> {name}: stopping {}", instance.record.instance_id);
                    }
                }
                break;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some(status) = instance.try_wait() {
            // Let the readers deliver what is left of the console first.
            while let Ok(Msg::Console(e)) = rx.recv_timeout(Duration::from_millis(200)) {
                session.console(e, &mut instance);
            }
            if session.outcome.is_none() {
                session.outcome = Some(Outcome::InstanceEnded(exit_words(&instance, status)));
            } else if args.keep_running && text {
                out!(
                    "==> the instance stopped by itself ({})",
                    exit_words(&instance, status)
                );
            }
            break;
        }
        if session.outcome.is_some() {
            if !args.keep_running {
                break;
            }
            if !hints_shown && text {
                hints_shown = true;
                show_hints(&instance);
            }
        } else if Instant::now() >= deadline {
            session.outcome = Some(Outcome::TimedOut);
            break;
        }
    }

    // Terminate: the guest gets launch::GRACE to power off before it is forced.
    let terminated = instance.terminate(true, "Client.UserInitiatedShutdown: kumo run ended");
    while let Ok(Msg::Console(e)) = rx.recv_timeout(Duration::from_millis(50)) {
        session.console(e, &mut instance);
    }
    let outcome = session
        .outcome
        .clone()
        .unwrap_or(Outcome::Interrupted("a signal"));
    let total_ms = started.elapsed().as_millis();
    let r = &instance.record;
    let finished_ms = session
        .events
        .iter()
        .find(|(e, _)| matches!(e, Event::UserdataFinished { .. }))
        .map(|(_, ms)| *ms);
    if text {
        if !terminated.leftovers.is_empty() {
            out!("==> could not remove: {}", terminated.leftovers.join("; "));
        }
        let when = finished_ms
            .map(|ms| {
                format!(
                    "; user-data done {:.2} s after `kumo run` started",
                    ms as f64 / 1000.0
                )
            })
            .unwrap_or_default();
        out!(
            "{}: {} ({} {}, {}, {} backend, {}{when}; terminated {})",
            r.instance_id,
            outcome.words(),
            r.image_name,
            r.image_id,
            r.instance_type,
            r.backend.name(),
            r.eni
                .as_ref()
                .map(|e| e.private_ip.to_string())
                .unwrap_or_else(|| "no ENI".into()),
            if terminated.had_stopped {
                "after it had stopped"
            } else if terminated.graceful {
                "gracefully"
            } else {
                "forcibly"
            },
        );
    } else {
        let summary = serde_json::json!({
            "instance_id": r.instance_id,
            "reservation_id": r.reservation_id,
            "image_id": r.image_id,
            "image_name": r.image_name,
            "instance_type": r.instance_type,
            "vcpus": r.vcpus,
            "memory_mib": r.memory_mib,
            "backend": r.backend,
            "vpc_id": r.vpc.vpc_id,
            "subnet_id": r.vpc.subnet_id,
            "network_interface": r.eni,
            "hostname": instance.metadata.hostname,
            "key_name": r.key_name,
            "status": outcome.status(),
            "message": outcome.words(),
            "user_data_exit": match &outcome { Outcome::Finished { exit, .. } => Some(*exit), _ => None },
            "exit_status": outcome.exit_code(),
            "events": session.events.iter().map(|(e, ms)| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                if let Some(o) = v.as_object_mut() { o.insert("host_ms".into(), (*ms).into()); }
                v
            }).collect::<Vec<_>>(),
            "timings_ms": {
                "launched": launched_ms,
                "user_data_finished": finished_ms,
                "total": total_ms,
            },
            "limits": instance.limits,
            "root_disk_copy": instance.disk_copy,
            "terminated_gracefully": terminated.graceful,
            "instance_exit": terminated.exit.map(|s| s.to_string()),
            "leftovers": terminated.leftovers,
            "instance_dir": instance.dir(),
            "console_log": instance.dir().join("console.log"),
            "state": r.state,
            "state_reason": r.state_reason,
        });
        out!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(ExitCode::from(outcome.exit_code()))
}

fn exit_words(instance: &Launched, status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match instance.record.backend {
        BackendKind::Namespace => match status.code() {
            Some(c) if c == 128 + libc::SIGINT => "it powered off".into(),
            Some(c) if c == 128 + libc::SIGHUP => {
                "it rebooted; kumo run does not restart it".into()
            }
            Some(125) => "its init could not start".into(),
            Some(c) if c > 128 => format!("its init was killed by signal {}", c - 128),
            Some(c) => format!("its init exited with status {c}"),
            None => format!(
                "the launcher was killed by signal {}",
                status.signal().unwrap_or(0)
            ),
        },
        BackendKind::Kvm => match status.code() {
            Some(0) => "the VM powered off or reset".into(),
            Some(1) => "kumo-vmm failed; its reason is above".into(),
            Some(2) => "kumo-vmm refused its configuration; the reason is above".into(),
            Some(3) => {
                let host = crate::compute::backend::HostVirt::detect();
                if host.can_boot_linux() {
                    "the guest crashed (KVM could not run it); see the console above".into()
                } else {
                    "the guest crashed: this host's /dev/kvm cannot boot Linux \
                     (no hardware virtualization); use --backend namespace"
                        .into()
                }
            }
            Some(c) => format!("kumo-vmm exited with status {c}"),
            None => format!(
                "kumo-vmm was killed by signal {}",
                status.signal().unwrap_or(0)
            ),
        },
    }
}

fn show_hints(instance: &Launched) {
    let r = &instance.record;
    out!(
        "==> {} keeps running (--keep-running); Ctrl-C stops it and removes everything",
        r.instance_id
    );
    out!(
        "==>   console log: {}",
        instance.dir().join("console.log").display()
    );
    if let Some(ip) = r.eni.as_ref().and_then(|e| e.public_ip) {
        out!(
            "==>   public IP {ip}: this host reaches it (ssh, curl http://{ip}/); security group {} lets this host in",
            crate::compute::network::HOST_ACCESS_GROUP
        );
    }
    match (&r.backend, &instance.init) {
        (BackendKind::Namespace, Some(init)) => {
            out!("==>   a shell inside: nsenter -t {} -a /bin/sh", init.pid);
            out!(
                "==>   its metadata, from inside: nsenter -t {} -a /bin/sh -c 'wget -qO- http://169.254.169.254/latest/meta-data/'",
                init.pid
            );
        }
        (BackendKind::Kvm, _) => {
            out!(
                "==>   the VMM's API socket: {}",
                instance.dir().join("vmm.sock").display()
            );
        }
        _ => {}
    }
}

struct Session {
    text: bool,
    outcome: Option<Outcome>,
    /// Agent events with the host's ms since launch.
    events: Vec<(Event, u64)>,
}

impl Session {
    fn console(&mut self, e: ConsoleEvent, instance: &mut Launched) {
        match e {
            ConsoleEvent::Line(Stream::Console, line) => {
                if self.text && kumo_agent::report::parse_line(&line).is_none() {
                    out!("{line}");
                }
            }
            ConsoleEvent::Line(Stream::Vmm, line) => {
                if self.text {
                    out!("[kumo-vmm] {line}");
                }
            }
            ConsoleEvent::Report { event, host_ms, .. } => {
                if self.text {
                    out!("==> {}", describe(&event));
                }
                let done = match &event {
                    Event::UserdataFinished { exit, failed, .. } => {
                        instance.set_user_data_exit(*exit);
                        Some(Outcome::Finished {
                            exit: *exit,
                            failed: failed.clone(),
                        })
                    }
                    Event::UserdataSkipped { reason } => Some(Outcome::NoUserData(reason.clone())),
                    Event::UserdataRejected { reason } => Some(Outcome::Rejected(reason.clone())),
                    _ => None,
                };
                if self.outcome.is_none() {
                    self.outcome = done;
                }
                self.events.push((event, host_ms));
            }
            ConsoleEvent::UnknownReport(v) => {
                if self.text {
                    out!("==> (agent event this kumo does not know) {v}");
                }
            }
            ConsoleEvent::Closed(_) => {}
        }
    }
}
