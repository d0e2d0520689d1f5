//! Users, groups and SSH keys in the image, read and written through the image's own
//! /etc/passwd, /etc/group and /etc/shadow (no NSS: the agent is statically linked), under a root
//! directory (`/` in a guest; a temporary directory in tests).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::cloudconfig::User;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("user {0} has no usable home directory")]
    NoHome(String),
    #[error("path {0:?} must be absolute and must not contain '..'")]
    BadPath(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AccountError + '_ {
    move |source| AccountError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `abs` (an absolute path in the image) under `root`; `None` if it is relative or has `..`.
pub fn under_root(root: &Path, abs: &str) -> Option<PathBuf> {
    let p = Path::new(abs);
    if !p.is_absolute() {
        return None;
    }
    let mut out = root.to_path_buf();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// One /etc/passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// All accounts in `root`/etc/passwd.
pub fn accounts(root: &Path) -> Vec<Account> {
    read_lines(&root.join("etc/passwd"))
        .iter()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(Account {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
        .collect()
}

pub fn lookup_user(root: &Path, name: &str) -> Option<Account> {
    accounts(root).into_iter().find(|a| a.name == name)
}

/// The gid of a group in `root`/etc/group.
pub fn lookup_group(root: &Path, name: &str) -> Option<u32> {
    read_lines(&root.join("etc/group")).iter().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// Names the images use for their default login user, in order of preference.
pub const DEFAULT_USER_NAMES: &[&str] = &["ec2-user", "admin", "ubuntu", "debian"];

/// The image's default user (`ec2-user`, `admin`, `ubuntu` or `debian` if present), else root.
pub fn default_user(root: &Path) -> Account {
    let all = accounts(root);
    for name in DEFAULT_USER_NAMES {
        if let Some(a) = all.iter().find(|a| a.name == *name) {
            return a.clone();
        }
    }
    all.into_iter()
        .find(|a| a.uid == 0)
        .unwrap_or_else(|| Account {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
            shell: "/bin/sh".into(),
        })
}

/// Whether the image has an SSH server.
pub fn has_ssh_server(root: &Path) -> bool {
    [
        "usr/sbin/sshd",
        "usr/bin/sshd",
        "usr/sbin/dropbear",
        "usr/bin/dropbear",
    ]
    .iter()
    .any(|p| crate::sys::is_executable(&root.join(p)))
}

/// chown, only when the agent runs as root (otherwise files stay the agent's own).
pub fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

fn append_line(path: &Path, line: &str) -> Result<(), AccountError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    let needs_newline = std::fs::read(path)
        .map(|c| !c.is_empty() && !c.ends_with(b"\n"))
        .unwrap_or(false);
    let text = if needs_newline {
        format!("\n{line}\n")
    } else {
        format!("{line}\n")
    };
    f.write_all(text.as_bytes()).map_err(io_err(path))
}

/// Returns the account for `user`, creating it (passwd, group, shadow, home) when missing.
/// The `default` entry maps to [`default_user`]. The bool is true when it was created.
pub fn ensure_user(root: &Path, user: &User) -> Result<(Account, bool), AccountError> {
    let Some(name) = &user.name else {
        return Ok((default_user(root), false));
    };
    if let Some(a) = lookup_user(root, name) {
        return Ok((a, false));
    }
    let all = accounts(root);
    let uid = all
        .iter()
        .map(|a| a.uid)
        .filter(|u| (1000..60000).contains(u))
        .max()
        .map_or(1000, |m| m + 1);
    // The primary group: the one named, or a private group (both created when missing).
    let gid = ensure_group(root, user.primary_group.as_deref().unwrap_or(name))?;
    let home = user
        .homedir
        .clone()
        .unwrap_or_else(|| format!("/home/{name}"));
    let shell = user.shell.clone().unwrap_or_else(|| "/bin/sh".into());
    let gecos = user
        .gecos
        .as_deref()
        .unwrap_or("")
        .replace([':', '\n'], " ");
    std::fs::create_dir_all(root.join("etc")).map_err(io_err(&root.join("etc")))?;
    append_line(
        &root.join("etc/passwd"),
        &format!("{name}:x:{uid}:{gid}:{gecos}:{home}:{shell}"),
    )?;
    let shadow = root.join("etc/shadow");
    if shadow.exists() {
        // Locked password, as cloud-init's lock_passwd default: SSH keys only.
        append_line(&shadow, &format!("{name}:!:20000:0:99999:7:::"))?;
    }
    let home_path = under_root(root, &home).ok_or_else(|| AccountError::BadPath(home.clone()))?;
    std::fs::create_dir_all(&home_path).map_err(io_err(&home_path))?;
    std::fs::set_permissions(&home_path, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err(&home_path))?;
    chown(&home_path, uid, gid).map_err(io_err(&home_path))?;
    Ok((
        Account {
            name: name.clone(),
            uid,
            gid,
            home,
            shell,
        },
        true,
    ))
}

fn groups_file(root: &Path) -> PathBuf {
    root.join("etc/group")
}

/// The gid of `name`, creating the group (next free gid from 1000) when missing.
pub fn ensure_group(root: &Path, name: &str) -> Result<u32, AccountError> {
    if let Some(gid) = lookup_group(root, name) {
        return Ok(gid);
    }
    let lines = read_lines(&groups_file(root));
    let used: Vec<u32> = lines
        .iter()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .chain(accounts(root).iter().map(|a| a.gid))
        .collect();
    let gid = (1000..60000).find(|g| !used.contains(g)).unwrap_or(60000);
    append_line(&groups_file(root), &format!("{name}:x:{gid}:"))?;
    Ok(gid)
}

/// Adds `user` to the member list of `group` (creating the group when missing).
pub fn add_to_group(root: &Path, user: &str, group: &str) -> Result<(), AccountError> {
    ensure_group(root, group)?;
    let path = groups_file(root);
    let mut changed = false;
    let lines: Vec<String> = read_lines(&path)
        .into_iter()
        .map(|line| {
            let mut f: Vec<String> = line.split(':').map(str::to_owned).collect();
            if f.len() >= 3 && f[0] == group {
                f.resize(4, String::new());
                let mut members: Vec<&str> = f[3].split(',').filter(|m| !m.is_empty()).collect();
                if !members.contains(&user) {
                    members.push(user);
                    changed = true;
                }
                f[3] = members.join(",");
                f.join(":")
            } else {
                line
            }
        })
        .collect();
    if changed {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&path, text).map_err(io_err(&path))?;
    }
    Ok(())
}

/// Writes sudoers rules for `user` to /etc/sudoers.d/90-cloud-init-users (as cloud-init does).
/// Fails when the image has no sudo (no /etc/sudoers.d).
pub fn install_sudo_rules(root: &Path, user: &str, rules: &[String]) -> Result<(), String> {
    let dir = root.join("etc/sudoers.d");
    if !dir.is_dir() {
        return Err(format!(
            "sudo rules for {user} not installed: the image has no sudo (/etc/sudoers.d)"
        ));
    }
    let path = dir.join("90-cloud-init-users");
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| "# Created by kumo-agent from the user-data\n".into());
    for rule in rules {
        if rule.contains('\n') {
            return Err(format!("sudo rule for {user} spans lines; not installed"));
        }
        let line = format!("{user} {rule}");
        if !text.lines().any(|l| l == line) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Appends keys that are not already there to the account's `~/.ssh/authorized_keys`
/// (0700 directory, 0600 file, owned by the account). Returns the path and how many keys the
/// file now holds from `keys`.
pub fn install_authorized_keys(
    root: &Path,
    account: &Account,
    keys: &[String],
) -> Result<(PathBuf, usize), AccountError> {
    if account.home.is_empty() || account.home == "/" || account.home == "/nonexistent" {
        return Err(AccountError::NoHome(account.name.clone()));
    }
    let home = under_root(root, &account.home)
        .ok_or_else(|| AccountError::BadPath(account.home.clone()))?;
    let ssh = home.join(".ssh");
    std::fs::create_dir_all(&ssh).map_err(io_err(&ssh))?;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).map_err(io_err(&ssh))?;
    chown(&ssh, account.uid, account.gid).map_err(io_err(&ssh))?;
    let path = ssh.join("authorized_keys");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let mut text = existing.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let mut count = 0;
    for key in keys {
        let key = key.trim();
        if key.is_empty() || key.contains('\n') {
            continue;
        }
        count += 1;
        if !existing.lines().any(|l| l.trim() == key) && !text.lines().any(|l| l.trim() == key) {
            text.push_str(key);
            text.push('\n');
        }
    }
    std::fs::write(&path, text).map_err(io_err(&path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(&path))?;
    chown(&path, account.uid, account.gid).map_err(io_err(&path))?;
    Ok((path, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nwheel:x:10:\n").unwrap();
        std::fs::write(d.path().join("etc/shadow"), "root:*:1:0:99999:7:::\n").unwrap();
        d
    }

    #[test]
    fn paths_stay_under_root() {
        let r = Path::new("/r");
        assert_eq!(under_root(r, "/etc/x"), Some(PathBuf::from("/r/etc/x")));
        assert_eq!(under_root(r, "/a/./b"), Some(PathBuf::from("/r/a/b")));
        assert_eq!(under_root(r, "/a/../../etc"), None);
        assert_eq!(under_root(r, "rel"), None);
    }

    #[test]
    fn default_user_is_root_without_ec2_user() {
        let d = image();
        assert_eq!(default_user(d.path()).name, "root");
        assert_eq!(default_user(d.path()).home, "/root");
    }

    #[test]
    fn create_user_and_keys() {
        let d = image();
        let user = User {
            name: Some("alice".into()),
            primary_group: Some("wheel".into()),
            ..User::default()
        };
        let (a, created) = ensure_user(d.path(), &user).unwrap();
        assert!(created);
        assert_eq!((a.uid, a.gid, a.home.as_str()), (1000, 10, "/home/alice"));
        let (again, created) = ensure_user(d.path(), &user).unwrap();
        assert!(!created);
        assert_eq!(again, a);
        let passwd = std::fs::read_to_string(d.path().join("etc/passwd")).unwrap();
        assert!(
            passwd.ends_with("alice:x:1000:10::/home/alice:/bin/sh\n"),
            "{passwd}"
        );
        let shadow = std::fs::read_to_string(d.path().join("etc/shadow")).unwrap();
        assert!(shadow.contains("alice:!:"));
        let bob = User {
            name: Some("bob".into()),
            ..User::default()
        };
        let (b, _) = ensure_user(d.path(), &bob).unwrap();
        // The lowest free gid: alice's primary group is wheel, so 1000 is still free.
        assert_eq!((b.uid, b.gid), (1001, 1000));
        assert_eq!(lookup_group(d.path(), "bob"), Some(1000));

        let keys = vec![
            "ssh-ed25519 AAAA a".to_string(),
            "ssh-ed25519 AAAA b".into(),
        ];
        let (path, n) = install_authorized_keys(d.path(), &a, &keys).unwrap();
        assert_eq!(n, 2);
        assert_eq!(path, d.path().join("home/alice/.ssh/authorized_keys"));
        // Installing again adds nothing twice.
        install_authorized_keys(d.path(), &a, &keys[..1]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "ssh-ed25519 AAAA a\nssh-ed25519 AAAA b\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn groups_and_sudo() {
        let d = image();
        assert_eq!(ensure_group(d.path(), "wheel").unwrap(), 10);
        let gid = ensure_group(d.path(), "docker").unwrap();
        assert_eq!(gid, 1000);
        add_to_group(d.path(), "alice", "wheel").unwrap();
        add_to_group(d.path(), "bob", "wheel").unwrap();
        add_to_group(d.path(), "alice", "wheel").unwrap();
        let group = std::fs::read_to_string(d.path().join("etc/group")).unwrap();
        assert_eq!(group, "root:x:0:\nwheel:x:10:alice,bob\ndocker:x:1000:\n");
        let rules = vec!["ALL=(ALL) NOPASSWD:ALL".to_string()];
        assert!(install_sudo_rules(d.path(), "alice", &rules).is_err());
        std::fs::create_dir_all(d.path().join("etc/sudoers.d")).unwrap();
        install_sudo_rules(d.path(), "alice", &rules).unwrap();
        install_sudo_rules(d.path(), "alice", &rules).unwrap();
        let text =
            std::fs::read_to_string(d.path().join("etc/sudoers.d/90-cloud-init-users")).unwrap();
        assert_eq!(text.matches("alice ALL=(ALL) NOPASSWD:ALL").count(), 1);
    }

    #[test]
    fn no_home_no_keys() {
        let d = image();
        let nobody = lookup_user(d.path(), "nobody").unwrap();
        assert!(install_authorized_keys(d.path(), &nobody, &["k".into()]).is_err());
    }
}
