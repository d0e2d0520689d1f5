//! Applying what the metadata service says: hostname, SSH keys, and the user-data (cloud-config
//! steps and scripts), with every outcome reported on the console.
//!
//! Order, as cloud-init's stages: boothooks and `bootcmd` (every boot), `write_files`, hostname,
//! `users` and `ssh_authorized_keys`, deferred `write_files`, then the scripts directory in name
//! order (the `#!` parts and `runcmd`, which cloud-init also runs from that directory), then
//! `final_message`. Everything but boothooks and `bootcmd` runs once per instance: a marker in
//! `/var/lib/kumo-agent/instances/<id>/` keeps a reboot from running it again.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::accounts::{self, under_root};
use crate::cloudconfig::{self, CloudConfig, WriteFile};
use crate::exec::{self, Children, Outcome, OutputSink};
use crate::report::{Event, Reporter};
use crate::userdata::{self, PartKind};

/// Where cloud-init (and so users) expect script output.
pub const OUTPUT_LOG: &str = "/var/log/cloud-init-output.log";
/// The agent's state directory.
pub const STATE_DIR: &str = "/var/lib/kumo-agent";

/// Applies metadata and user-data to the image under `root`.
#[derive(Debug, Clone)]
pub struct Provisioner {
    /// `/` in a guest.
    pub root: PathBuf,
    /// May change the running system (the kernel hostname); false when `root` is not `/`.
    pub system: bool,
    pub reporter: Reporter,
    pub children: Children,
    pub script_timeout: Duration,
}

/// The result of the user-data run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// 0 when everything succeeded, else the first failure's status.
    pub exit: i32,
    pub failed: Vec<String>,
}

struct Run<'a> {
    p: &'a Provisioner,
    failed: Vec<String>,
    exit: i32,
}

impl Run<'_> {
    fn fail(&mut self, what: &str, code: i32, reason: String) {
        tracing::warn!("{what}: {reason}");
        self.p.reporter.send(Event::UserdataPartFailed {
            part: what.to_string(),
            reason,
        });
        self.record(what, code);
    }

    fn record(&mut self, what: &str, code: i32) {
        self.failed.push(what.to_string());
        if self.exit == 0 {
            self.exit = code;
        }
    }
}

impl Provisioner {
    fn path(&self, abs: &str) -> PathBuf {
        under_root(&self.root, abs).unwrap_or_else(|| self.root.join(abs.trim_start_matches('/')))
    }

    fn sink(&self) -> OutputSink {
        let log = self.path(OUTPUT_LOG);
        if let Some(dir) = log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        OutputSink {
            reporter: self.reporter.clone(),
            log_path: Some(log),
        }
    }

    /// Appends an agent line to the output log (the console gets it through tracing).
    fn log_line(&self, line: &str) {
        let log = self.path(OUTPUT_LOG);
        if let Some(dir) = log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            use std::io::Write;
            let _ = writeln!(f, "kumo-agent[INFO]: {line}");
        }
    }

    /// Sets the hostname: /etc/hostname, and the kernel's when `system`.
    pub fn set_hostname(&self, name: &str) -> Result<(), String> {
        if !crate::imds::is_valid_hostname(name) {
            return Err(format!("{name:?} is not a valid hostname"));
        }
        let etc = self.path("/etc");
        std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
        let file = etc.join("hostname");
        std::fs::write(&file, format!("{name}\n"))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        if self.system {
            crate::sys::set_hostname(name).map_err(|e| format!("sethostname: {e}"))?;
        }
        self.reporter.send(Event::Hostname {
            hostname: name.to_string(),
        });
        Ok(())
    }

    /// Adds `127.0.1.1 fqdn short` to /etc/hosts (cloud-init's manage_etc_hosts).
    fn manage_etc_hosts(&self, short: &str, fqdn: Option<&str>) {
        let path = self.path("/etc/hosts");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.contains("127.0.0.1") {
            text.push_str("127.0.0.1 localhost\n");
        }
        let names = match fqdn {
            Some(f) if f != short => format!("{f} {short}"),
            _ => short.to_string(),
        };
        text = text
            .lines()
            .filter(|l| !l.starts_with("127.0.1.1"))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!("127.0.1.1 {names}\n"));
        let _ = std::fs::write(&path, text);
    }

    /// Installs the instance's public keys (from metadata) for the default user, when the image
    /// has an SSH server. Returns how many were installed.
    pub fn install_metadata_keys(&self, keys: &[String]) -> usize {
        if keys.is_empty() {
            return 0;
        }
        if !accounts::has_ssh_server(&self.root) {
            tracing::info!(
                "the image has no SSH server: {} public key(s) from metadata not installed",
                keys.len()
            );
            return 0;
        }
        let user = accounts::default_user(&self.root);
        self.install_keys(&user, keys)
    }

    fn install_keys(&self, user: &accounts::Account, keys: &[String]) -> usize {
        match accounts::install_authorized_keys(&self.root, user, keys) {
            Ok((path, count)) => {
                let shown = path
                    .strip_prefix(&self.root)
                    .map(|p| format!("/{}", p.display()))
                    .unwrap_or_else(|_| path.display().to_string());
                self.reporter.send(Event::SshKeysInstalled {
                    user: user.name.clone(),
                    path: shown,
                    count,
                });
                count
            }
            Err(e) => {
                self.reporter.send(Event::Warning {
                    message: format!("SSH keys for {} not installed: {e}", user.name),
                });
                0
            }
        }
    }

    fn write_file(&self, wf: &WriteFile) -> Result<(), String> {
        let path = under_root(&self.root, &wf.path)
            .ok_or_else(|| format!("path {:?} must be absolute without '..'", wf.path))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let result = if wf.append {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(&wf.content))
        } else {
            std::fs::write(&path, &wf.content)
        };
        result.map_err(|e| format!("{}: {e}", wf.path))?;
        let mode = wf.permissions.unwrap_or(0o644);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {:o} {}: {e}", mode, wf.path))?;
        if let Some(owner) = &wf.owner {
            let (user, group) = owner.split_once(':').unwrap_or((owner.as_str(), ""));
            let account = accounts::lookup_user(&self.root, user)
                .ok_or_else(|| format!("owner {user:?} of {} does not exist", wf.path))?;
            let gid = if group.is_empty() {
                account.gid
            } else {
                accounts::lookup_group(&self.root, group)
                    .ok_or_else(|| format!("group {group:?} of {} does not exist", wf.path))?
            };
            accounts::chown(&path, account.uid, gid)
                .map_err(|e| format!("chown {owner} {}: {e}", wf.path))?;
        }
        Ok(())
    }

    fn run_script(&self, run: &mut Run<'_>, name: &str, path: &Path) -> Outcome {
        tracing::info!("running {name}");
        self.log_line(&format!("running {name}"));
        let home = accounts::default_user(&self.root).home;
        let outcome = exec::run_logged(
            &self.children,
            path,
            &self.root,
            &self.sink(),
            self.script_timeout,
            &[("HOME", home.as_str())],
        );
        self.reporter.send(Event::ScriptFinished {
            script: name.to_string(),
            exit: outcome.exit(),
            signal: outcome.signal(),
            reason: outcome.reason(),
        });
        match outcome.reason() {
            Some(reason) => {
                tracing::warn!("{name} failed: {reason}");
                self.log_line(&format!("{name} failed: {reason}"));
                run.record(name, outcome.code());
            }
            None => self.log_line(&format!("{name} finished: exit 0")),
        }
        outcome
    }

    fn write_script(&self, dir: &Path, name: &str, content: &[u8]) -> Result<PathBuf, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// Runs the user-data of `instance_id`; `raw` is `None` when the instance has none.
    pub fn run_user_data(&self, instance_id: &str, raw: Option<&[u8]>) -> Summary {
        let start = Instant::now();
        let Some(raw) = raw else {
            self.reporter.send(Event::UserdataSkipped {
                reason: "the instance has no user-data".into(),
            });
            return Summary {
                exit: 0,
                failed: Vec::new(),
            };
        };
        let parts = match userdata::decode(raw) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("user-data not run: {e}");
                self.log_line(&format!("user-data not run: {e}"));
                self.reporter.send(Event::UserdataRejected {
                    reason: e.to_string(),
                });
                return Summary {
                    exit: 1,
                    failed: vec!["user-data".into()],
                };
            }
        };
        if parts.is_empty() {
            self.reporter.send(Event::UserdataSkipped {
                reason: "the user-data is empty".into(),
            });
            return Summary {
                exit: 0,
                failed: Vec::new(),
            };
        }
        let safe_id: String = instance_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let instance_dir = self
            .path(STATE_DIR)
            .join("instances")
            .join(if safe_id.is_empty() {
                "unknown".to_string()
            } else {
                safe_id
            });
        let marker = instance_dir.join("userdata-done");
        let first_boot = !marker.exists();
        let mut run = Run {
            p: self,
            failed: Vec::new(),
            exit: 0,
        };
        if first_boot {
            self.reporter.send(Event::UserdataStarted {
                bytes: raw.len(),
                parts: parts.iter().map(|p| p.kind.label().to_string()).collect(),
            });
        }

        // Cloud-config parts, merged in order.
        let mut cfg = CloudConfig::default();
        for part in parts.iter().filter(|p| p.kind == PartKind::CloudConfig) {
            match CloudConfig::parse(&part.content) {
                Ok(c) => cfg.merge(c),
                Err(e) => {
                    if first_boot {
                        run.fail(&part.name, 1, e.to_string());
                    }
                }
            }
        }
        if first_boot {
            for w in &cfg.warnings {
                self.reporter.send(Event::Warning { message: w.clone() });
            }
        }

        // Every boot: boothooks and bootcmd.
        let boot_dir = instance_dir.join("boot");
        for part in parts.iter().filter(|p| p.kind == PartKind::Boothook) {
            // A boothook's first line is `#cloud-boothook`; the rest is a shell script (with its
            // own #! line, or run by /bin/sh).
            let body = part
                .content
                .splitn(2, |&b| b == b'\n')
                .nth(1)
                .unwrap_or_default();
            let script = if body.starts_with(b"#!") {
                body.to_vec()
            } else {
                [b"#!/bin/sh\n".as_slice(), body].concat()
            };
            match self.write_script(&boot_dir, &part.name, &script) {
                Ok(path) => {
                    self.run_script(&mut run, &part.name, &path);
                }
                Err(e) => run.fail(&part.name, 1, e),
            }
        }
        if !cfg.bootcmd.is_empty() {
            let script = cloudconfig::shell_script(&cfg.bootcmd);
            match self.write_script(&boot_dir, "bootcmd", script.as_bytes()) {
                Ok(path) => {
                    self.run_script(&mut run, "bootcmd", &path);
                }
                Err(e) => run.fail("bootcmd", 1, e),
            }
        }

        if !first_boot {
            self.reporter.send(Event::UserdataSkipped {
                reason: format!(
                    "user-data already ran for {instance_id} (boothooks and bootcmd run every boot)"
                ),
            });
            return Summary {
                exit: run.exit,
                failed: run.failed,
            };
        }

        // Parts that are not run, and scripts that are not text.
        for part in &parts {
            match &part.kind {
                PartKind::Unsupported(reason) => run.fail(&part.name, 1, reason.clone()),
                PartKind::Script => {
                    if let Some(at) = part.utf8_error() {
                        self.reporter.send(Event::Warning {
                            message: format!(
                                "{} is not valid UTF-8 (invalid byte at offset {at}); running it as it is",
                                part.name
                            ),
                        });
                    }
                }
                _ => {}
            }
        }

        for wf in cfg.write_files.iter().filter(|w| !w.defer) {
            if let Err(e) = self.write_file(wf) {
                run.fail(&format!("write_files {}", wf.path), 1, e);
            }
        }

        if !cfg.preserve_hostname {
            let short = cfg.hostname.clone().or_else(|| {
                cfg.fqdn
                    .as_ref()
                    .map(|f| f.split('.').next().unwrap_or("").to_string())
            });
            if let Some(short) = short {
                let short = short.split('.').next().unwrap_or("").to_string();
                match self.set_hostname(&short) {
                    Ok(()) => {
                        if cfg.manage_etc_hosts {
                            self.manage_etc_hosts(&short, cfg.fqdn.as_deref());
                        }
                    }
                    Err(e) => run.fail("hostname", 1, e),
                }
            }
        }

        for (group, members) in &cfg.groups {
            let result = accounts::ensure_group(&self.root, group).and_then(|_| {
                members
                    .iter()
                    .try_for_each(|m| accounts::add_to_group(&self.root, m, group))
            });
            if let Err(e) = result {
                run.fail(&format!("groups {group}"), 1, e.to_string());
            }
        }
        for user in &cfg.users {
            match accounts::ensure_user(&self.root, user) {
                Ok((account, created)) => {
                    if created {
                        tracing::info!("created user {}", account.name);
                    }
                    for group in &user.groups {
                        if let Err(e) = accounts::add_to_group(&self.root, &account.name, group) {
                            run.fail(&format!("users {} groups", account.name), 1, e.to_string());
                        }
                    }
                    if !user.sudo.is_empty()
                        && let Err(e) =
                            accounts::install_sudo_rules(&self.root, &account.name, &user.sudo)
                    {
                        run.fail(&format!("users {} sudo", account.name), 1, e);
                    }
                    if !user.ssh_authorized_keys.is_empty() {
                        self.install_keys(&account, &user.ssh_authorized_keys);
                    }
                }
                Err(e) => run.fail(
                    &format!("users {}", user.name.as_deref().unwrap_or("default")),
                    1,
                    e.to_string(),
                ),
            }
        }
        if !cfg.ssh_authorized_keys.is_empty() {
            let user = accounts::default_user(&self.root);
            self.install_keys(&user, &cfg.ssh_authorized_keys);
        }

        for wf in cfg.write_files.iter().filter(|w| w.defer) {
            if let Err(e) = self.write_file(wf) {
                run.fail(&format!("write_files {}", wf.path), 1, e);
            }
        }

        // The scripts directory: #! parts and runcmd, in name order.
        let scripts_dir = instance_dir.join("scripts");
        let mut scripts: Vec<(String, Vec<u8>)> = parts
            .iter()
            .filter(|p| p.kind == PartKind::Script)
            .map(|p| (p.name.clone(), p.content.clone()))
            .collect();
        if !cfg.runcmd.is_empty() {
            scripts.push((
                "runcmd".into(),
                cloudconfig::shell_script(&cfg.runcmd).into_bytes(),
            ));
        }
        scripts.sort_by(|a, b| a.0.cmp(&b.0));
        scripts.dedup_by(|a, b| {
            if a.0 == b.0 {
                tracing::warn!("two parts are named {}; only the first runs", a.0);
                true
            } else {
                false
            }
        });
        for (name, content) in &scripts {
            match self.write_script(&scripts_dir, name, content) {
                Ok(path) => {
                    self.run_script(&mut run, name, &path);
                }
                Err(e) => run.fail(name, 1, e),
            }
        }

        if let Some(msg) = &cfg.final_message {
            let msg = msg
                .replace("$INSTANCE_ID", instance_id)
                .replace("$UPTIME", &format!("{:.2}", start.elapsed().as_secs_f64()));
            let sink = self.sink();
            sink.write(format!("{msg}\n").as_bytes());
        }

        if let Err(e) = std::fs::create_dir_all(&instance_dir)
            .and_then(|()| std::fs::write(&marker, format!("{}\n", run.exit)))
        {
            tracing::warn!(
                "cannot record that user-data ran ({}): {e}",
                marker.display()
            );
        }
        let summary = Summary {
            exit: run.exit,
            failed: run.failed.clone(),
        };
        let duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.log_line(&format!(
            "user-data finished: exit {} after {duration_ms} ms",
            summary.exit
        ));
        self.reporter.send(Event::UserdataFinished {
            exit: summary.exit,
            failed: summary.failed.clone(),
            duration_ms,
        });
        summary
    }
}
