//! Memory and CPU limits for a namespace instance, with cgroups v1 or v2.
//!
//! The namespace backend has no VM to size, so the instance type's memory and vCPUs become
//! cgroup limits on every process of the instance: memory (`memory.limit_in_bytes` in v1,
//! `memory.max` in v2) and CPU time (CFS quota of `vcpus` x period: `cpu.cfs_quota_us` in v1,
//! `cpu.max` in v2). The groups are `kumo/<instance id>` under each controller's hierarchy (v1:
//! `/sys/fs/cgroup/memory/kumo/i-...`, `/sys/fs/cgroup/cpu/kumo/i-...`; v2:
//! `/sys/fs/cgroup/kumo/i-...`). The instance's launcher joins them before it starts the
//! instance's init, so every process of the instance is in them, which also lets a cleanup find
//! and kill any that are left (`cgroup.procs`).
//!
//! Where a controller is missing or a limit cannot be written, the instance runs unlimited in
//! that respect and [`Limits::notes`] says so; a launch never fails for want of a cgroup.

use std::path::{Path, PathBuf};

const CG_ROOT: &str = "/sys/fs/cgroup";
const CFS_PERIOD_US: u64 = 100_000;

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

/// The cgroups made for one instance and what they limit.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Limits {
    /// The directories made (each has a `cgroup.procs`).
    pub dirs: Vec<PathBuf>,
    /// Limits in force, in words ("memory 1024 MiB (cgroup v1)").
    pub applied: Vec<String>,
    /// Limits that could not be applied, and why.
    pub notes: Vec<String>,
}

/// The host's cgroup layout: v2 when `/sys/fs/cgroup` is the unified hierarchy, else v1 when a
/// v1 controller is mounted under it, else none.
pub fn detect() -> Option<Version> {
    detect_at(Path::new(CG_ROOT))
}

fn detect_at(root: &Path) -> Option<Version> {
    if root.join("cgroup.controllers").exists() {
        Some(Version::V2)
    } else if root.join("memory/memory.limit_in_bytes").exists()
        || root.join("cpu/cpu.cfs_quota_us").exists()
        || root.join("cpu,cpuacct/cpu.cfs_quota_us").exists()
    {
        Some(Version::V1)
    } else {
        None
    }
}

/// What to write for a limit: (file, value).
pub fn memory_setting(version: Version, memory_mib: u64) -> (&'static str, String) {
    let bytes = memory_mib * 1024 * 1024;
    match version {
        Version::V1 => ("memory.limit_in_bytes", bytes.to_string()),
        Version::V2 => ("memory.max", bytes.to_string()),
    }
}

/// CPU quota settings for `vcpus` CPUs' worth of time: [(file, value)], in the order to write.
pub fn cpu_settings(version: Version, vcpus: u32) -> Vec<(&'static str, String)> {
    let quota = CFS_PERIOD_US * u64::from(vcpus);
    match version {
        Version::V1 => vec![
            ("cpu.cfs_period_us", CFS_PERIOD_US.to_string()),
            ("cpu.cfs_quota_us", quota.to_string()),
        ],
        Version::V2 => vec![("cpu.max", format!("{quota} {CFS_PERIOD_US}"))],
    }
}

fn v1_controller_dir(controller: &str) -> Option<PathBuf> {
    let candidates: &[&str] = if controller == "cpu" {
        &["cpu", "cpu,cpuacct", "cpuacct,cpu"]
    } else {
        &["memory"]
    };
    candidates
        .iter()
        .map(|c| Path::new(CG_ROOT).join(c))
        .find(|p| p.join("cgroup.procs").exists())
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), value).map_err(|e| format!("{}: {e}", dir.join(file).display()))
}

/// Makes the instance's cgroups and sets its limits. Never fails: what cannot be limited is
/// said in the notes.
pub fn create(instance_id: &str, memory_mib: u64, vcpus: u32) -> Limits {
    let mut limits = Limits::default();
    match detect() {
        None => limits.notes.push(
            "no cgroup hierarchy under /sys/fs/cgroup: memory and CPU are not limited".into(),
        ),
        Some(Version::V1) => {
            for (controller, what) in [("memory", "memory"), ("cpu", "CPU")] {
                let Some(base) = v1_controller_dir(controller) else {
                    limits.notes.push(format!(
                        "the cgroup v1 {controller} controller is not mounted: {what} is not limited"
                    ));
                    continue;
                };
                let dir = base.join("kumo").join(instance_id);
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    limits.notes.push(format!(
                        "cannot make {}: {e}: {what} is not limited",
                        dir.display()
                    ));
                    continue;
                }
                limits.dirs.push(dir.clone());
                apply(
                    &mut limits,
                    &dir,
                    Version::V1,
                    controller,
                    memory_mib,
                    vcpus,
                );
            }
        }
        Some(Version::V2) => {
            let root = Path::new(CG_ROOT);
            let parent = root.join("kumo");
            let _ = std::fs::create_dir_all(&parent);
            // Delegate the controllers down to kumo/<instance>.
            for dir in [root, parent.as_path()] {
                for c in ["+memory", "+cpu"] {
                    let _ = write(dir, "cgroup.subtree_control", c);
                }
            }
            let dir = parent.join(instance_id);
            match std::fs::create_dir_all(&dir) {
                Err(e) => limits.notes.push(format!(
                    "cannot make {}: {e}: memory and CPU are not limited",
                    dir.display()
                )),
                Ok(()) => {
                    limits.dirs.push(dir.clone());
                    for controller in ["memory", "cpu"] {
                        apply(
                            &mut limits,
                            &dir,
                            Version::V2,
                            controller,
                            memory_mib,
                            vcpus,
                        );
                    }
                }
            }
        }
    }
    limits
}

fn apply(
    limits: &mut Limits,
    dir: &Path,
    version: Version,
    controller: &str,
    memory_mib: u64,
    vcpus: u32,
) {
    let v = match version {
        Version::V1 => "cgroup v1",
        Version::V2 => "cgroup v2",
    };
    let result = if controller == "memory" {
        let (file, value) = memory_setting(version, memory_mib);
        write(dir, file, &value).map(|()| format!("memory {memory_mib} MiB ({v})"))
    } else {
        cpu_settings(version, vcpus)
            .iter()
            .try_for_each(|(file, value)| write(dir, file, value))
            .map(|()| format!("CPU {vcpus} vCPU(s) of time ({v})"))
    };
    match result {
        Ok(applied) => limits.applied.push(applied),
        Err(e) => limits
            .notes
            .push(format!("cannot limit {controller}: {e}: it is not limited")),
    }
}

/// The processes in a cgroup directory.
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills every process left in the groups, then removes them (waiting briefly for the kernel to
/// let go of exiting processes). No-op for groups already gone.
pub fn destroy(dirs: &[PathBuf]) -> Result<(), String> {
    let mut failures = Vec::new();
    for dir in dirs {
        if !dir.exists() {
            continue;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let pids = procs(dir);
            for pid in &pids {
                // SAFETY: plain kill(2); the pid is a member of this instance's own cgroup.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if std::time::Instant::now() > deadline => {
                    failures.push(format!("{}: {e}", dir.display()));
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
    // The shared `kumo` parent goes too once no instance uses it (rmdir fails while one does).
    for dir in dirs {
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_per_version() {
        assert_eq!(
            memory_setting(Version::V1, 1024),
            ("memory.limit_in_bytes", "1073741824".to_string())
        );
        assert_eq!(
            memory_setting(Version::V2, 512),
            ("memory.max", "536870912".to_string())
        );
        assert_eq!(
            cpu_settings(Version::V1, 2),
            vec![
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "200000".to_string())
            ]
        );
        assert_eq!(
            cpu_settings(Version::V2, 4),
            vec![("cpu.max", "400000 100000".to_string())]
        );
    }

    #[test]
    fn detection_from_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect_at(dir.path()), None);
        std::fs::create_dir(dir.path().join("memory")).unwrap();
        std::fs::write(dir.path().join("memory/memory.limit_in_bytes"), "").unwrap();
        assert_eq!(detect_at(dir.path()), Some(Version::V1));
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory").unwrap();
        assert_eq!(detect_at(dir.path()), Some(Version::V2));
    }

    /// Real limits on this host (root only): the group exists with the limits, then is gone.
    #[test]
    fn create_and_destroy_on_this_host() {
        if !kumo_testkit::is_root() || detect().is_none() {
            kumo_testkit::skip(
                "compute cgroup::create_and_destroy_on_this_host",
                "needs root and a cgroup hierarchy",
            );
            return;
        }
        let id = format!("i-test{:013x}", std::process::id());
        let limits = create(&id, 256, 1);
        assert!(!limits.dirs.is_empty(), "{limits:?}");
        assert!(
            limits.applied.iter().any(|a| a.contains("memory 256 MiB")),
            "{limits:?}"
        );
        for dir in &limits.dirs {
            assert!(dir.exists());
        }
        destroy(&limits.dirs).unwrap();
        for dir in &limits.dirs {
            assert!(!dir.exists());
        }
    }
}
