//! The instance record: `$KUMO_HOME/instances/i-<17 hex>/`.
//!
//! ```text
//! instances/i-0123456789abcdef0/
//!   instance.json   this record (state, type, image, network, and every host resource it holds)
//!   lock            flock(2)ed by the `kumo run` that owns the instance while it lives
//!   user-data       the user-data as given (bytes)
//!   metadata.json   the InstanceMetadata the metadata service serves
//!   switch.json     the VPC switch's description (kumo-net's format)
//!   console.log     everything the instance wrote to its console
//!   events.jsonl    kumo-agent's report events, one JSON object a line, with host timestamps
//!   flow.log, drops.log   the VPC's flow log and dropped packets' reasons
//!   root.ext4       the instance's root disk (a copy of the AMI's; deleted on termination)
//! ```
//!
//! The record lists every host resource (netdevs, network namespace, cgroups, processes, disk)
//! *before* it is created, so that a `kumo run` killed at any point leaves a record from which
//! the next run removes everything (`stale.rs`). An instance is owned while its `lock` is held;
//! a record that is not `terminated` and whose lock is free is a leftover.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::backend::BackendKind;
use super::network::{Eni, VpcIds};

/// EC2's instance states that `kumo run` goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
}

/// A process the instance runs on the host, identified beyond its pid (pids are reused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostProcess {
    pub pid: i32,
    /// Its start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start_ticks: u64,
    /// "kumo-vmm", "namespace launcher", "init".
    pub what: String,
}

impl HostProcess {
    /// Describes a live process (None if it is already gone).
    pub fn of(pid: i32, what: &str) -> Option<HostProcess> {
        Some(HostProcess {
            pid,
            start_ticks: start_ticks(pid)?,
            what: what.to_string(),
        })
    }

    /// Whether this very process (not a later one with the same pid) is still there.
    pub fn is_alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }
}

/// Field 22 (starttime) of /proc/PID/stat.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Host resources the instance holds (or is about to create).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostResources {
    /// TAP devices and veth switch ends.
    pub netdevs: Vec<String>,
    /// The network namespace (`/run/netns/<name>`).
    pub netns: Option<String>,
    pub cgroups: Vec<PathBuf>,
    pub processes: Vec<HostProcess>,
    /// The per-instance root disk.
    pub disk: Option<PathBuf>,
    /// The VMM's API socket.
    pub api_socket: Option<PathBuf>,
}

/// `instance.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub reservation_id: String,
    pub image_id: String,
    pub image_name: String,
    pub kernel_id: Option<String>,
    pub instance_type: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub backend: BackendKind,
    pub state: State,
    /// Why it is in its state (EC2's StateReason message).
    pub state_reason: Option<String>,
    /// RFC 3339, UTC.
    pub launch_time: String,
    pub key_name: Option<String>,
    pub vpc: VpcIds,
    pub eni: Option<Eni>,
    /// The `kumo run` process that owns it.
    pub owner_pid: u32,
    pub resources: HostResources,
    /// Exit status of the user-data, once it finished.
    pub user_data_exit: Option<i32>,
}

/// Errors with instance records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid instance record: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RecordError + 'a {
    move |source| RecordError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// `$KUMO_HOME/instances`.
pub fn instances_dir(home: &Path) -> PathBuf {
    home.join("instances")
}

/// An instance's directory, with its lock held for as long as this value lives.
#[derive(Debug)]
pub struct InstanceDir {
    pub path: PathBuf,
    _lock: File,
}

impl InstanceDir {
    /// Makes `instances/<id>/` and takes its lock.
    pub fn create(home: &Path, instance_id: &str) -> Result<InstanceDir, RecordError> {
        let path = instances_dir(home).join(instance_id);
        std::fs::create_dir_all(&path).map_err(io_err("create", &path))?;
        let lock_path = path.join("lock");
        let lock = File::create(&lock_path).map_err(io_err("create", &lock_path))?;
        lock.try_lock().map_err(|e| RecordError::Io {
            action: "lock",
            path: lock_path.clone(),
            source: match e {
                std::fs::TryLockError::Error(e) => e,
                std::fs::TryLockError::WouldBlock => {
                    std::io::Error::other("another kumo run owns this instance")
                }
            },
        })?;
        Ok(InstanceDir { path, _lock: lock })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes the record atomically (temporary file, fsync, rename).
    pub fn save(&self, record: &InstanceRecord) -> Result<(), RecordError> {
        save_record(&self.path, record)
    }
}

/// Writes `instance.json` in `dir` atomically.
pub fn save_record(dir: &Path, record: &InstanceRecord) -> Result<(), RecordError> {
    let path = dir.join("instance.json");
    let tmp = dir.join(".instance.json.tmp");
    let json = serde_json::to_vec_pretty(record).expect("the record serializes");
    let mut f = File::create(&tmp).map_err(io_err("write", &tmp))?;
    f.write_all(&json)
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("rename", &path))
}

/// Reads `instance.json` in `dir`.
pub fn load_record(dir: &Path) -> Result<InstanceRecord, RecordError> {
    let path = dir.join("instance.json");
    let text = std::fs::read(&path).map_err(io_err("read", &path))?;
    serde_json::from_slice(&text).map_err(|source| RecordError::Corrupt { path, source })
}

/// Whether some live process holds the lock of the instance in `dir`.
pub fn is_owned(dir: &Path) -> bool {
    let Ok(f) = File::open(dir.join("lock")) else {
        return false;
    };
    match f.try_lock_shared() {
        Ok(()) => {
            let _ = f.unlock();
            false
        }
        Err(_) => true,
    }
}

#[cfg(test)]
pub(crate) fn sample_record() -> InstanceRecord {
    InstanceRecord {
        instance_id: "i-0123456789abcdef0".into(),
        reservation_id: "r-0123456789abcdef0".into(),
        image_id: "ami-0123456789abcdef0".into(),
        image_name: "kumo-minimal".into(),
        kernel_id: Some("aki-0123456789abcdef0".into()),
        instance_type: "t3.micro".into(),
        vcpus: 2,
        memory_mib: 1024,
        backend: BackendKind::Namespace,
        state: State::Pending,
        state_reason: None,
        launch_time: "2025-01-01T00:00:00Z".into(),
        key_name: None,
        vpc: VpcIds::new(),
        eni: None,
        owner_pid: std::process::id(),
        resources: HostResources::default(),
        user_data_exit: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_the_lock_marks_ownership() {
        let home = tempfile::tempdir().unwrap();
        let rec = sample_record();
        let dir = InstanceDir::create(home.path(), &rec.instance_id).unwrap();
        dir.save(&rec).unwrap();
        assert_eq!(load_record(&dir.path).unwrap(), rec);
        assert!(is_owned(&dir.path));
        // A second owner is refused while the first lives.
        assert!(InstanceDir::create(home.path(), &rec.instance_id).is_err());
        let path = dir.path.clone();
        drop(dir);
        // Another test's child may hold a copy of the lock's fd between its fork and exec (the
        // fd is close-on-exec): give it a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while is_owned(&path) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!is_owned(&path));
        let json = std::fs::read_to_string(path.join("instance.json")).unwrap();
        assert!(json.contains("\"state\": \"pending\""), "{json}");
        assert!(json.contains("\"backend\": \"namespace\""), "{json}");
    }

    #[test]
    fn corrupt_records_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("instance.json"), "{nope").unwrap();
        assert!(matches!(
            load_record(dir.path()),
            Err(RecordError::Corrupt { .. })
        ));
        assert!(matches!(
            load_record(&dir.path().join("missing")),
            Err(RecordError::Io { .. })
        ));
    }

    #[test]
    fn process_identity_includes_start_time() {
        let me = HostProcess::of(std::process::id() as i32, "test").unwrap();
        assert!(me.is_alive());
        let other = HostProcess {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert!(!other.is_alive(), "same pid, different process");
        assert!(HostProcess::of(i32::MAX, "none").is_none());
    }
}
