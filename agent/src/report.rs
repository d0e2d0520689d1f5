//! The report line protocol: how kumo-agent tells the host what happened during boot.
//!
//! kumo-agent writes one line per event to its standard output, which is the serial console when
//! it runs as PID 1 in a VM (and so ends up in GetConsoleOutput), or the pipe a test or the
//! namespace backend reads. A report line is
//!
//! ```text
//! kumo-agent: {"event":"<name>", ...fields..., "t_ms":<milliseconds since the agent started>}
//! ```
//!
//! that is the literal prefix [`PREFIX`] (`kumo-agent: `) followed by one JSON object on a single
//! line. Every other console line (kernel messages, the agent's human-readable log lines, which
//! start with `kumo-agent[LEVEL]: `, and the output of user-data scripts) is not a report line.
//! The host parses a line with [`parse_line`]. Events, in the order they normally appear:
//!
//! | event | fields | meaning |
//! |---|---|---|
//! | `booted` | `version`, `mode` (`init` or `service`) | the agent started |
//! | `network-up` | `interface`, `mac`, `address` (CIDR), `gateway`, `dns`, `mtu`, `lease_secs`, `dhcp_server` | DHCP finished and the address is configured |
//! | `network-failed` | `interface`, `reason` | no usable NIC or no DHCP answer; boot goes on |
//! | `metadata-ready` | `imds_version` (`v2` or `v1`), `instance_id` | the instance metadata service answered |
//! | `metadata-unavailable` | `reason` | it never answered within the bounded wait; boot goes on without it |
//! | `hostname` | `hostname` | the hostname was set |
//! | `ssh-keys-installed` | `user`, `path`, `count` | public keys were written to authorized_keys |
//! | `userdata-skipped` | `reason` | there is no user-data, or it already ran for this instance |
//! | `userdata-rejected` | `reason` | the user-data cannot be used at all (too large, corrupt gzip, not UTF-8 ...) |
//! | `userdata-started` | `bytes`, `parts` (the kind of each part) | user-data processing begins |
//! | `userdata-part-failed` | `part`, `reason` | a part could not be used or a cloud-config step failed |
//! | `script-finished` | `script`, `exit`, `signal`, `reason` | one script (bootcmd, runcmd or a `#!` part) ended |
//! | `userdata-finished` | `exit`, `failed`, `duration_ms` | all user-data is done; `exit` is 0 when everything succeeded, else the first failing script's status (128+signal if killed, 124 on timeout, 1 for a failed step) |
//! | `warning` | `message` | something was ignored (an unsupported cloud-config key ...) |
//! | `shutdown` | `action` (`poweroff`, `reboot`, `halt`) | the agent is stopping processes and will power off or reboot |
//!
//! Fields may be added in later versions; a parser must ignore unknown fields, and unknown events
//! are returned as [`ReportLine::Unknown`] by [`parse_line`]. A line printed by a user-data script
//! that starts with the prefix is indistinguishable from a real report: report lines are
//! informational, not authenticated.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The literal prefix of every report line.
pub const PREFIX: &str = "kumo-agent: ";

/// How the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// PID 1 of the image: mounts, network, reaping, shutdown.
    Init,
    /// An ordinary service next to another init system.
    Service,
}

/// One report event. Serialized as a JSON object whose `event` member is the kebab-case name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Booted {
        version: String,
        mode: Mode,
    },
    NetworkUp {
        interface: String,
        mac: String,
        address: String,
        gateway: Option<String>,
        dns: Vec<String>,
        mtu: Option<u16>,
        lease_secs: Option<u32>,
        dhcp_server: Option<String>,
    },
    NetworkFailed {
        interface: Option<String>,
        reason: String,
    },
    MetadataReady {
        imds_version: String,
        instance_id: Option<String>,
    },
    MetadataUnavailable {
        reason: String,
    },
    Hostname {
        hostname: String,
    },
    SshKeysInstalled {
        user: String,
        path: String,
        count: usize,
    },
    UserdataSkipped {
        reason: String,
    },
    UserdataRejected {
        reason: String,
    },
    UserdataStarted {
        bytes: usize,
        parts: Vec<String>,
    },
    UserdataPartFailed {
        part: String,
        reason: String,
    },
    ScriptFinished {
        script: String,
        exit: Option<i32>,
        signal: Option<i32>,
        reason: Option<String>,
    },
    UserdataFinished {
        exit: i32,
        failed: Vec<String>,
        duration_ms: u64,
    },
    Warning {
        message: String,
    },
    Shutdown {
        action: String,
    },
}

impl Event {
    /// The kebab-case name that appears in the `event` member.
    pub fn name(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_default()
    }
}

#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(flatten)]
    event: Event,
    t_ms: u64,
}

/// Formats one report line (without the trailing newline).
pub fn format_line(event: &Event, t_ms: u64) -> String {
    let line = Line {
        event: event.clone(),
        t_ms,
    };
    // Serializing plain strings, numbers and vectors cannot fail.
    let json = serde_json::to_string(&line).unwrap_or_else(|_| String::from("{}"));
    format!("{PREFIX}{json}")
}

/// What [`parse_line`] found on a console line.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportLine {
    /// A known event and the agent's clock (milliseconds since it started) when it was sent.
    Event { event: Event, t_ms: u64 },
    /// A report line with an event this version does not know, kept as raw JSON.
    Unknown(serde_json::Value),
}

/// Parses one console line; `None` when it is not a report line (other console output).
pub fn parse_line(line: &str) -> Option<ReportLine> {
    let line = line.trim_end_matches(['\r', '\n']);
    let json = line.strip_prefix(PREFIX)?;
    if !json.starts_with('{') {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    value.get("event")?.as_str()?;
    match serde_json::from_value::<Line>(value.clone()) {
        Ok(l) => Some(ReportLine::Event {
            event: l.event,
            t_ms: l.t_ms,
        }),
        Err(_) => Some(ReportLine::Unknown(value)),
    }
}

/// Writes report lines to a sink (the console), stamping each with the time since `start`.
#[derive(Clone)]
pub struct Reporter {
    start: Instant,
    sink: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("start", &self.start)
            .finish()
    }
}

impl Reporter {
    /// A reporter writing to the process's standard output.
    pub fn stdout(start: Instant) -> Self {
        Self::new(start, Box::new(std::io::stdout()))
    }

    pub fn new(start: Instant, sink: Box<dyn Write + Send>) -> Self {
        Self {
            start,
            sink: Arc::new(Mutex::new(sink)),
        }
    }

    /// Milliseconds since the agent started.
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Sends one event. Errors writing to the console are ignored: there is nowhere else to
    /// report them, and the agent must go on booting.
    pub fn send(&self, event: Event) {
        let line = format_line(&event, self.elapsed_ms());
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(sink, "{line}");
        let _ = sink.flush();
    }

    /// Writes raw console output (a script's output) through the same sink, so that lines from
    /// different threads never interleave within a line.
    pub fn console(&self, bytes: &[u8]) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let _ = sink.write_all(bytes);
        let _ = sink.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_round_trips() {
        let event = Event::UserdataFinished {
            exit: 3,
            failed: vec!["part-001".into()],
            duration_ms: 12,
        };
        let line = format_line(&event, 42);
        assert_eq!(
            line,
            r#"kumo-agent: {"event":"userdata-finished","exit":3,"failed":["part-001"],"duration_ms":12,"t_ms":42}"#
        );
        assert_eq!(
            parse_line(&line),
            Some(ReportLine::Event { event, t_ms: 42 })
        );
    }

    #[test]
    fn other_lines_are_not_reports() {
        assert_eq!(parse_line("hello"), None);
        assert_eq!(parse_line("kumo-agent[INFO]: hi"), None);
        assert_eq!(parse_line("kumo-agent: not json"), None);
        assert_eq!(parse_line("kumo-agent: {\"no_event\":1}"), None);
    }

    #[test]
    fn unknown_events_are_kept() {
        let parsed = parse_line(r#"kumo-agent: {"event":"from-the-future","x":1}"#);
        assert!(matches!(parsed, Some(ReportLine::Unknown(_))));
    }

    #[test]
    fn event_names() {
        assert_eq!(
            Event::Booted {
                version: "1".into(),
                mode: Mode::Init
            }
            .name(),
            "booted"
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = parse_line(&s);
            let _ = parse_line(&format!("{PREFIX}{s}"));
        }
    }
}
