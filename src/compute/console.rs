//! The instance's console: read it, keep it, and understand kumo-agent's reports on it.
//!
//! A reader thread per output stream (the namespace init's stdout+stderr, or kumo-vmm's serial
//! console on its stdout and its own messages on stderr) splits the bytes into lines, appends the
//! console to `console.log` (what GetConsoleOutput will return), recognises kumo-agent's report
//! lines (`kumo-agent: {"event":...}`, parsed with the agent's own
//! [`kumo_agent::report::parse_line`]), appends each event with the host's clock to
//! `events.jsonl`, and hands everything to a sink as [`ConsoleEvent`]s. [`describe`] says what an
//! event means in plain words ("network up: 10.0.1.4").

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kumo_agent::report::{Event, ReportLine, parse_line};

/// Longest line kept whole; longer output is split (a guest may print without newlines).
const MAX_LINE: usize = 16 * 1024;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The instance's console.
    Console,
    /// kumo-vmm's own messages (its stderr).
    Vmm,
}

/// What the readers report.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsoleEvent {
    /// A line of console output (report lines included, as they appear on the console).
    Line(Stream, String),
    /// A kumo-agent report, with the agent's clock and the host's (ms since launch).
    Report {
        event: Event,
        agent_ms: u64,
        host_ms: u64,
    },
    /// A report line with an event this kumo does not know.
    UnknownReport(serde_json::Value),
    /// The stream ended (the process closed it or exited).
    Closed(Stream),
}

/// Where console events go.
pub type Sink = Arc<dyn Fn(ConsoleEvent) + Send + Sync>;

/// Files the readers append to, shared by all of an instance's readers.
#[derive(Clone)]
pub struct ConsoleFiles {
    console: Arc<Mutex<File>>,
    events: Arc<Mutex<File>>,
    started: Instant,
}

impl ConsoleFiles {
    /// Opens (appending) `console.log` and `events.jsonl` in `dir`.
    pub fn open(dir: &Path, started: Instant) -> std::io::Result<ConsoleFiles> {
        let open = |name: &str| {
            File::options()
                .create(true)
                .append(true)
                .open(dir.join(name))
        };
        Ok(ConsoleFiles {
            console: Arc::new(Mutex::new(open("console.log")?)),
            events: Arc::new(Mutex::new(open("events.jsonl")?)),
            started,
        })
    }

    fn host_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn log_line(&self, stream: Stream, line: &str) {
        let mut f = self.console.lock().unwrap_or_else(|p| p.into_inner());
        let _ = match stream {
            Stream::Console => writeln!(f, "{line}"),
            Stream::Vmm => writeln!(f, "[kumo-vmm] {line}"),
        };
    }

    fn log_event(&self, value: &serde_json::Value, host_ms: u64) {
        let mut value = value.clone();
        if let Some(obj) = value.as_object_mut() {
            obj.insert("host_ms".into(), host_ms.into());
        }
        let mut f = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{value}");
    }
}

/// Handles one complete line: log it, parse it, emit events.
pub fn handle_line(files: &ConsoleFiles, stream: Stream, line: &str, sink: &Sink) {
    files.log_line(stream, line);
    sink(ConsoleEvent::Line(stream, line.to_string()));
    if stream != Stream::Console {
        return;
    }
    match parse_line(line) {
        Some(ReportLine::Event { event, t_ms }) => {
            let host_ms = files.host_ms();
            if let Ok(v) = serde_json::to_value(&event) {
                let mut v = v;
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("t_ms".into(), t_ms.into());
                }
                files.log_event(&v, host_ms);
            }
            sink(ConsoleEvent::Report {
                event,
                agent_ms: t_ms,
                host_ms,
            });
        }
        Some(ReportLine::Unknown(v)) => {
            files.log_event(&v, files.host_ms());
            sink(ConsoleEvent::UnknownReport(v));
        }
        None => {}
    }
}

/// Splits a byte stream into lines (bounded), calling `line` for each.
pub fn split_lines(mut reader: impl Read, mut line: impl FnMut(&str)) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&mut pending, &mut line);
            } else {
                pending.push(b);
                if pending.len() >= MAX_LINE {
                    emit(&mut pending, &mut line);
                }
            }
        }
    }
    if !pending.is_empty() {
        emit(&mut pending, &mut line);
    }
}

fn emit(pending: &mut Vec<u8>, line: &mut impl FnMut(&str)) {
    let text = String::from_utf8_lossy(pending);
    line(text.trim_end_matches('\r'));
    pending.clear();
}

/// Starts a thread that reads `reader` until it ends.
pub fn spawn_reader(
    reader: impl Read + Send + 'static,
    stream: Stream,
    files: ConsoleFiles,
    sink: Sink,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("console-{stream:?}").to_lowercase())
        .spawn(move || {
            split_lines(reader, |l| handle_line(&files, stream, l, &sink));
            sink(ConsoleEvent::Closed(stream));
        })
}

/// What an event means, in plain words ("network up: 10.0.1.4").
pub fn describe(event: &Event) -> String {
    match event {
        Event::Booted { version, .. } => format!("instance booted (kumo-agent {version})"),
        Event::NetworkUp {
            interface,
            address,
            gateway,
            ..
        } => {
            let ip = address.split('/').next().unwrap_or(address);
            match gateway {
                Some(gw) => format!("network up: {ip} ({interface}, gateway {gw})"),
                None => format!("network up: {ip} ({interface})"),
            }
        }
        Event::NetworkFailed { reason, .. } => format!("network failed: {reason}"),
        Event::MetadataReady { imds_version, .. } => {
            format!("metadata service answered (IMDS{imds_version})")
        }
        Event::MetadataUnavailable { reason } => format!("metadata service unavailable: {reason}"),
        Event::Hostname { hostname } => format!("hostname: {hostname}"),
        Event::SshKeysInstalled { user, count, .. } => {
            format!("ssh keys installed for {user} ({count})")
        }
        Event::UserdataSkipped { reason } => format!("user-data skipped: {reason}"),
        Event::UserdataRejected { reason } => format!("user-data rejected: {reason}"),
        Event::UserdataStarted { bytes, parts } => {
            format!("user-data started ({bytes} bytes: {})", parts.join(", "))
        }
        Event::UserdataPartFailed { part, reason } => {
            format!("user-data part {part} failed: {reason}")
        }
        Event::ScriptFinished {
            script,
            exit,
            signal,
            reason,
        } => {
            let how = match (exit, signal) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                (None, None) => "ended".to_string(),
            };
            match reason {
                Some(r) => format!("script {script} finished: {how} ({r})"),
                None => format!("script {script} finished: {how}"),
            }
        }
        Event::UserdataFinished { exit, failed, .. } => {
            if failed.is_empty() {
                format!("user-data finished: exit {exit}")
            } else {
                format!(
                    "user-data finished: exit {exit} (failed: {})",
                    failed.join(", ")
                )
            }
        }
        Event::Warning { message } => format!("warning: {message}"),
        Event::Shutdown { action } => format!("instance shutting down ({action})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn collect(dir: &Path, input: &[u8]) -> Vec<ConsoleEvent> {
        let files = ConsoleFiles::open(dir, Instant::now()).unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let sink: Sink = Arc::new(move |e| {
            let _ = tx.lock().unwrap().send(e);
        });
        let h = spawn_reader(
            std::io::Cursor::new(input.to_vec()),
            Stream::Console,
            files,
            sink,
        )
        .unwrap();
        h.join().unwrap();
        rx.try_iter().collect()
    }

    #[test]
    fn lines_reports_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let input = b"Linux version 6.1\r\nkumo-agent: {\"event\":\"network-up\",\"interface\":\"eth0\",\"mac\":\"02:00:00:00:00:01\",\"address\":\"10.0.1.4/24\",\"gateway\":\"10.0.1.1\",\"dns\":[\"10.0.0.2\"],\"mtu\":null,\"lease_secs\":3600,\"dhcp_server\":\"10.0.1.1\",\"t_ms\":12}\nkumo-agent: {\"event\":\"from-the-future\"}\nno newline at the end";
        let events = collect(dir.path(), input);
        assert_eq!(
            events[0],
            ConsoleEvent::Line(Stream::Console, "Linux version 6.1".into())
        );
        let report = events
            .iter()
            .find_map(|e| match e {
                ConsoleEvent::Report {
                    event, agent_ms, ..
                } => Some((event.clone(), *agent_ms)),
                _ => None,
            })
            .unwrap();
        assert_eq!(report.1, 12);
        assert_eq!(
            describe(&report.0),
            "network up: 10.0.1.4 (eth0, gateway 10.0.1.1)"
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ConsoleEvent::UnknownReport(_)))
        );
        assert!(events.contains(&ConsoleEvent::Line(
            Stream::Console,
            "no newline at the end".into()
        )));
        assert_eq!(events.last(), Some(&ConsoleEvent::Closed(Stream::Console)));
        let log = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
        assert_eq!(log.lines().count(), 4, "{log}");
        let ev = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(ev.lines().next().unwrap()).unwrap();
        assert_eq!(first["event"], "network-up");
        assert_eq!(first["t_ms"], 12);
        assert!(first["host_ms"].is_u64());
    }

    #[test]
    fn long_lines_are_split_and_bad_utf8_survives() {
        let dir = tempfile::tempdir().unwrap();
        let mut input = vec![b'x'; MAX_LINE * 2 + 5];
        input.extend_from_slice(b"\n\xff\xfe ok\n");
        let events = collect(dir.path(), &input);
        let lines: Vec<&String> = events
            .iter()
            .filter_map(|e| match e {
                ConsoleEvent::Line(_, l) => Some(l),
                _ => None,
            })
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert!(lines[3].ends_with(" ok"));
    }

    #[test]
    fn plain_words() {
        let finished = Event::UserdataFinished {
            exit: 3,
            failed: vec!["part-001".into()],
            duration_ms: 5,
        };
        assert_eq!(
            describe(&finished),
            "user-data finished: exit 3 (failed: part-001)"
        );
        let ok = Event::UserdataFinished {
            exit: 0,
            failed: vec![],
            duration_ms: 5,
        };
        assert_eq!(describe(&ok), "user-data finished: exit 0");
        let started = Event::UserdataStarted {
            bytes: 40,
            parts: vec!["x-shellscript".into()],
        };
        assert_eq!(
            describe(&started),
            "user-data started (40 bytes: x-shellscript)"
        );
        let killed = Event::ScriptFinished {
            script: "part-001".into(),
            exit: None,
            signal: Some(9),
            reason: Some("timeout".into()),
        };
        assert_eq!(
            describe(&killed),
            "script part-001 finished: killed by signal 9 (timeout)"
        );
    }
}
