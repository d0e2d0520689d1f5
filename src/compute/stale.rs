//! Cleaning up after a `kumo run` that was killed (SIGKILL, a crash, a power cut) before it could
//! remove what it made.
//!
//! Its instance record is still there, not `terminated`, with its lock free. The record lists
//! every host resource the run made or was about to make, so this kills the instance's processes
//! (checked by pid *and* start time, never a stranger that reused a pid; plus anything still in
//! its network namespace or cgroups), removes its cgroups, netdevs and network namespace,
//! detaches loop devices still backed by its disk and deletes the disk, then records it as
//! terminated. Every `kumo run` does this before it launches.

use std::path::Path;

use super::cgroup;
use super::disk;
use super::instance::{self, State};
use super::netdev;

/// Cleans every leftover instance under `home`; returns what was done, one line each.
pub fn clean_stale(home: &Path) -> Vec<String> {
    let mut done = Vec::new();
    let Ok(entries) = std::fs::read_dir(instance::instances_dir(home)) else {
        return done;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !super::ids::is_valid(&entry.file_name().to_string_lossy(), "i") {
            continue;
        }
        let Ok(mut record) = instance::load_record(&dir) else {
            continue;
        };
        if record.state == State::Terminated || instance::is_owned(&dir) {
            continue;
        }
        let mut problems = Vec::new();
        let r = &record.resources;
        for p in &r.processes {
            if p.is_alive() {
                // SAFETY: plain kill(2) of a process this record started (same pid and start time).
                unsafe { libc::kill(p.pid, libc::SIGKILL) };
            }
        }
        if let Some(ns) = &r.netns {
            for pid in netdev::netns_pids(ns) {
                // SAFETY: plain kill(2) of a process inside the instance's own network namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Err(e) = cgroup::destroy(&r.cgroups) {
            problems.push(format!("cgroups: {e}"));
        }
        for name in &r.netdevs {
            let removed = if name.starts_with("kumot") {
                netdev::delete_tap(name)
            } else {
                netdev::delete_link(name)
            };
            if let Err(e) = removed {
                problems.push(e.to_string());
            }
        }
        if let Some(ns) = &r.netns
            && let Err(e) = netdev::delete_netns(ns)
        {
            problems.push(e.to_string());
        }
        if let Some(d) = &r.disk {
            let stuck = disk::release_loops(d, std::time::Duration::from_secs(3));
            if !stuck.is_empty() {
                problems.push(format!(
                    "loop devices {stuck:?} still backed by {}",
                    d.display()
                ));
            }
            let _ = std::fs::remove_file(d);
        }
        if let Some(s) = &r.api_socket {
            let _ = std::fs::remove_file(s);
        }
        let _ = std::fs::remove_dir(dir.join("rootfs"));
        record.state = State::Terminated;
        record.state_reason = Some(
            "Server.InternalError: the kumo run that owned it ended without cleaning up; \
             cleaned up by a later kumo run"
                .into(),
        );
        let _ = instance::save_record(&dir, &record);
        let mut line = format!(
            "cleaned up instance {} left by a kumo run that was killed (pid {})",
            record.instance_id, record.owner_pid
        );
        if !problems.is_empty() {
            line.push_str(&format!("; could not remove: {}", problems.join("; ")));
        }
        done.push(line);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::instance::{HostProcess, InstanceDir, sample_record};

    #[test]
    fn a_killed_runs_leftovers_are_cleaned_and_owned_instances_are_not() {
        let home = tempfile::tempdir().unwrap();
        // A leftover: a record whose owner is gone, with a live process and a disk.
        let mut left = sample_record();
        left.instance_id = "i-00000000000000001".into();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let dir = InstanceDir::create(home.path(), &left.instance_id).unwrap();
        let disk = dir.file("root.ext4");
        std::fs::write(&disk, b"disk").unwrap();
        left.resources.disk = Some(disk.clone());
        left.resources.processes = vec![HostProcess::of(child.id() as i32, "init").unwrap()];
        left.state = State::Running;
        dir.save(&left).unwrap();
        let left_dir = dir.path.clone();
        drop(dir); // the owner "dies": its lock is released

        // An instance a live kumo run still owns.
        let mut owned = sample_record();
        owned.instance_id = "i-00000000000000002".into();
        owned.state = State::Running;
        let owned_dir = InstanceDir::create(home.path(), &owned.instance_id).unwrap();
        owned_dir.save(&owned).unwrap();

        // Another test's child may hold a copy of the lock's fd between its fork and exec.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut done = clean_stale(home.path());
        while done.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            done = clean_stale(home.path());
        }
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(done[0].contains("i-00000000000000001"), "{done:?}");
        assert!(child.wait().unwrap().code().is_none(), "killed by a signal");
        assert!(!disk.exists());
        let rec = instance::load_record(&left_dir).unwrap();
        assert_eq!(rec.state, State::Terminated);
        assert!(rec.state_reason.unwrap().contains("cleaned up"));
        assert_eq!(
            instance::load_record(&owned_dir.path).unwrap().state,
            State::Running
        );
        // Nothing more to do the second time.
        assert!(clean_stale(home.path()).is_empty());
    }
}
