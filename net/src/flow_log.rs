//! VPC flow logs: one record per flow (ENI, addresses, ports, protocol, action) and aggregation
//! interval, in AWS's default format:
//!
//! `version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status`
//!
//! e.g. `2 123456789012 eni-0a1b2c3d4e5f60718 10.0.2.5 10.0.1.5 40312 22 6 3 180 1700000000 1700000060 REJECT OK`.
//!
//! A packet crossing two ENIs gets a record at each (as on AWS): ACCEPT at both, or ACCEPT at
//! the sender and REJECT at the receiver whose security group or subnet NACL refused it. Custom
//! formats may use any of the default fields plus `${reject-reason}`, kumo's sentence for why
//! the flow was rejected (`sg-0abc: no inbound rule for tcp/22 from 10.0.2.5`); `-` for
//! accepted flows. Every dropped packet, policy or not, is also counted by reason
//! ([`crate::counters`]) and written to the drop log, one aggregated line per ENI and reason:
//! `<end> <interface-id> <count> <reason-code> <sentence>`.

use std::collections::HashMap;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::counters::DropReason;
use crate::policy::Packet4;

/// The AWS default format.
pub const DEFAULT_FORMAT: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}";

/// Accept or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// Index into `FlowLog::interfaces` (no allocation per packet).
    interface: u32,
    pkt: (std::net::Ipv4Addr, std::net::Ipv4Addr, u16, u16, u8),
    action: Action,
}

/// One aggregated flow record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    pub interface_id: String,
    pub srcaddr: std::net::Ipv4Addr,
    pub dstaddr: std::net::Ipv4Addr,
    pub srcport: u16,
    pub dstport: u16,
    pub protocol: u8,
    pub packets: u64,
    pub bytes: u64,
    pub start: u64,
    pub end: u64,
    pub action: Action,
    pub reject_reason: Option<String>,
}

/// An unknown `${field}` in a custom format.
#[derive(Debug, thiserror::Error)]
#[error("unknown flow log field {0:?}: use the default-format fields or ${{reject-reason}}")]
pub struct FormatError(pub String);

const FIELDS: &[&str] = &[
    "version",
    "account-id",
    "interface-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "log-status",
    "reject-reason",
];

impl FlowRecord {
    /// Renders the record in `format` (fields checked by [`check_format`]).
    pub fn render(&self, format: &str, account_id: &str) -> String {
        let mut out = String::with_capacity(160);
        let mut rest = format;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let Some(j) = rest[i..].find('}') else {
                out.push_str(&rest[i..]);
                rest = "";
                break;
            };
            let name = &rest[i + 2..i + j];
            out.push_str(&self.field(name, account_id));
            rest = &rest[i + j + 1..];
        }
        out.push_str(rest);
        out
    }

    fn field(&self, name: &str, account_id: &str) -> String {
        match name {
            "version" => "2".into(),
            "account-id" => account_id.into(),
            "interface-id" => self.interface_id.clone(),
            "srcaddr" => self.srcaddr.to_string(),
            "dstaddr" => self.dstaddr.to_string(),
            "srcport" => self.srcport.to_string(),
            "dstport" => self.dstport.to_string(),
            "protocol" => self.protocol.to_string(),
            "packets" => self.packets.to_string(),
            "bytes" => self.bytes.to_string(),
            "start" => self.start.to_string(),
            "end" => self.end.to_string(),
            "action" => match self.action {
                Action::Accept => "ACCEPT".into(),
                Action::Reject => "REJECT".into(),
            },
            "log-status" => "OK".into(),
            "reject-reason" => self.reject_reason.clone().unwrap_or_else(|| "-".into()),
            _ => "-".into(),
        }
    }
}

/// Checks that every `${field}` of a custom format is known.
pub fn check_format(format: &str) -> Result<(), FormatError> {
    let mut rest = format;
    while let Some(i) = rest.find("${") {
        let j = rest[i..]
            .find('}')
            .ok_or_else(|| FormatError(rest[i..].to_string()))?;
        let name = &rest[i + 2..i + j];
        if !FIELDS.contains(&name) {
            return Err(FormatError(name.to_string()));
        }
        rest = &rest[i + j + 1..];
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
struct DropLine {
    count: u64,
    reason: DropReason,
    sentence: String,
    end: u64,
}

/// Collects flow records and drop reasons, and writes them out each aggregation interval.
pub struct FlowLog {
    account_id: String,
    format: String,
    pending: HashMap<Key, FlowRecord>,
    interface_index: HashMap<String, u32>,
    drops: HashMap<(String, String), DropLine>,
    sink: Option<Box<dyn Write + Send>>,
    drop_sink: Option<Box<dyn Write + Send>>,
    /// Records flushed so far, kept (bounded) for tests and `describe`-style queries.
    recent: std::collections::VecDeque<String>,
    recent_drops: std::collections::VecDeque<String>,
    max_pending: usize,
}

impl std::fmt::Debug for FlowLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowLog")
            .field("pending", &self.pending.len())
            .field("drops", &self.drops.len())
            .finish()
    }
}

const RECENT: usize = 4096;

impl FlowLog {
    pub fn new(account_id: &str) -> FlowLog {
        FlowLog {
            account_id: account_id.to_string(),
            format: DEFAULT_FORMAT.to_string(),
            pending: HashMap::new(),
            interface_index: HashMap::new(),
            drops: HashMap::new(),
            sink: None,
            drop_sink: None,
            recent: Default::default(),
            recent_drops: Default::default(),
            max_pending: 65_536,
        }
    }

    /// Sets a custom format (AWS `${field}` syntax).
    pub fn set_format(&mut self, format: &str) -> Result<(), FormatError> {
        check_format(format)?;
        self.format = format.to_string();
        Ok(())
    }

    /// Where flow records go (a file, usually).
    pub fn set_sink(&mut self, sink: Box<dyn Write + Send>) {
        self.sink = Some(sink);
    }

    /// Where drop-log lines go.
    pub fn set_drop_sink(&mut self, sink: Box<dyn Write + Send>) {
        self.drop_sink = Some(sink);
    }

    /// Counts `packets`/`bytes` of `pkt` at ENI `interface_id`.
    pub fn record(
        &mut self,
        interface_id: &str,
        pkt: &Packet4,
        packets: u64,
        bytes: u64,
        action: Action,
        reject_reason: Option<&str>,
    ) {
        let interface = match self.interface_index.get(interface_id) {
            Some(i) => *i,
            None => {
                let i = self.interface_index.len() as u32;
                self.interface_index.insert(interface_id.to_string(), i);
                i
            }
        };
        let key = Key {
            interface,
            pkt: (
                pkt.src,
                pkt.dst,
                pkt.src_port().unwrap_or(0),
                pkt.dst_port().unwrap_or(0),
                pkt.protocol,
            ),
            action,
        };
        let now = unix_now();
        if let Some(r) = self.pending.get_mut(&key) {
            r.packets += packets;
            r.bytes += bytes;
            r.end = now;
            if let Some(reason) = reject_reason
                && r.reject_reason.as_deref() != Some(reason)
            {
                r.reject_reason = Some(reason.to_string());
            }
            return;
        }
        if self.pending.len() >= self.max_pending {
            // Bounded memory under floods: write out what we have first.
            self.flush();
        }
        self.pending.insert(
            key,
            FlowRecord {
                interface_id: interface_id.to_string(),
                srcaddr: pkt.src,
                dstaddr: pkt.dst,
                srcport: pkt.src_port().unwrap_or(0),
                dstport: pkt.dst_port().unwrap_or(0),
                protocol: pkt.protocol,
                packets,
                bytes,
                start: now,
                end: now,
                action,
                reject_reason: reject_reason.map(str::to_string),
            },
        );
    }

    /// Notes a dropped packet at `interface_id` (or `-` when no ENI is known) with its reason.
    pub fn note_drop(&mut self, interface_id: &str, reason: DropReason, sentence: &str) {
        let now = unix_now();
        let key = (interface_id.to_string(), sentence.to_string());
        if let Some(d) = self.drops.get_mut(&key) {
            d.count += 1;
            d.end = now;
            return;
        }
        if self.drops.len() >= self.max_pending {
            self.flush();
        }
        self.drops.insert(
            key,
            DropLine {
                count: 1,
                reason,
                sentence: sentence.to_string(),
                end: now,
            },
        );
    }

    /// Writes every pending record and drop line.
    pub fn flush(&mut self) {
        let mut records: Vec<FlowRecord> = self.pending.drain().map(|(_, r)| r).collect();
        records.sort_by_key(|r| (r.start, r.interface_id.clone()));
        for r in records {
            let line = r.render(&self.format, &self.account_id);
            if let Some(s) = &mut self.sink {
                let _ = writeln!(s, "{line}");
            }
            push_bounded(&mut self.recent, line);
        }
        let mut drops: Vec<((String, String), DropLine)> = self.drops.drain().collect();
        drops.sort_by_key(|(_, d)| d.end);
        for ((eni, _), d) in drops {
            let line = format!("{} {} {} {} {}", d.end, eni, d.count, d.reason, d.sentence);
            if let Some(s) = &mut self.drop_sink {
                let _ = writeln!(s, "{line}");
            }
            push_bounded(&mut self.recent_drops, line);
        }
        if let Some(s) = &mut self.sink {
            let _ = s.flush();
        }
        if let Some(s) = &mut self.drop_sink {
            let _ = s.flush();
        }
    }

    /// Recently flushed flow records (rendered).
    pub fn recent_records(&self) -> impl Iterator<Item = &String> {
        self.recent.iter()
    }

    /// Recently flushed drop-log lines.
    pub fn recent_drops(&self) -> impl Iterator<Item = &String> {
        self.recent_drops.iter()
    }
}

fn push_bounded(q: &mut std::collections::VecDeque<String>, line: String) {
    if q.len() >= RECENT {
        q.pop_front();
    }
    q.push_back(line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{L4, TcpFlags};

    fn pkt() -> Packet4 {
        Packet4 {
            src: "10.0.2.5".parse().unwrap(),
            dst: "10.0.1.5".parse().unwrap(),
            protocol: 6,
            l4: L4::Tcp {
                src_port: 40312,
                dst_port: 22,
                flags: TcpFlags::default(),
            },
        }
    }

    #[test]
    fn default_format_has_the_14_fields() {
        let mut log = FlowLog::new("123456789012");
        log.record(
            "eni-1",
            &pkt(),
            1,
            60,
            Action::Reject,
            Some("sg-1: no inbound rule for tcp/22 from 10.0.2.5"),
        );
        log.record(
            "eni-1",
            &pkt(),
            2,
            120,
            Action::Reject,
            Some("sg-1: no inbound rule for tcp/22 from 10.0.2.5"),
        );
        log.flush();
        let line = log.recent_records().next().unwrap().clone();
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 14);
        assert_eq!(
            &f[..10],
            &[
                "2",
                "123456789012",
                "eni-1",
                "10.0.2.5",
                "10.0.1.5",
                "40312",
                "22",
                "6",
                "3",
                "180"
            ]
        );
        assert_eq!(&f[12..], &["REJECT", "OK"]);
    }

    #[test]
    fn custom_format_with_reason() {
        let mut log = FlowLog::new("1");
        assert!(log.set_format("${action} ${nonsense}").is_err());
        log.set_format("${interface-id} ${action} ${reject-reason}")
            .unwrap();
        log.record(
            "eni-1",
            &pkt(),
            1,
            60,
            Action::Reject,
            Some("acl-1: inbound rule 90 denies tcp/22 from 10.0.2.5"),
        );
        log.record("eni-2", &pkt(), 1, 60, Action::Accept, None);
        log.note_drop(
            "eni-1",
            DropReason::SpoofedIp,
            "source 10.9.9.9 is not eni-1's address 10.0.1.5",
        );
        log.flush();
        let lines: Vec<&String> = log.recent_records().collect();
        assert!(lines.contains(
            &&"eni-1 REJECT acl-1: inbound rule 90 denies tcp/22 from 10.0.2.5".to_string()
        ));
        assert!(lines.contains(&&"eni-2 ACCEPT -".to_string()));
        let d = log.recent_drops().next().unwrap();
        assert!(d.ends_with(
            "eni-1 1 spoofed-source-ip source 10.9.9.9 is not eni-1's address 10.0.1.5"
        ));
    }
}
