//! The `#cloud-config` subset kumo-agent understands, parsed from YAML with `yaml-rust2`.
//!
//! Keys: `bootcmd`, `runcmd` (strings run by `/bin/sh`, or argv lists, quoted for the shell as
//! cloud-init does), `write_files` (`path`, `content`, `encoding` b64/base64/gzip/gz/gz+b64/
//! gzip+base64/text/plain, `permissions` as an octal string or number, `owner` `user:group`,
//! `append`, `defer`), `ssh_authorized_keys`, `hostname`, `fqdn`, `preserve_hostname`,
//! `manage_etc_hosts`, `users` (`default`, a name, or a mapping with `name`,
//! `ssh_authorized_keys`/`ssh-authorized-keys`, `gecos`, `homedir`, `shell`, `primary_group`,
//! `groups`, `sudo`, `lock_passwd`), `groups`, and `final_message`. Other keys, and values of
//! the wrong shape, become warnings: parsing never fails because of one bad key, only when the
//! document is not YAML or not a mapping.
//!
//! Several cloud-config parts are merged in order: lists are appended, scalars are replaced by
//! the later part. (cloud-init's default merge replaces lists; appending is what a user who splits
//! a config into parts expects, and is the same for a single part.)
//!
//! Unquoted octal permissions (`permissions: 0644`) are read by YAML 1.2 as the decimal number
//! 644; like cloud-init under YAML 1.1, kumo-agent reads a number whose digits are all 0-7 as
//! octal.

use base64::Engine;
use yaml_rust2::{Yaml, YamlLoader};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CloudConfigError {
    #[error("cloud-config is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("cloud-config is not valid YAML: {0}")]
    Yaml(String),
    #[error("cloud-config must be a YAML mapping (key: value), found {0}")]
    NotAMapping(&'static str),
    #[error(
        "cloud-config is indented or nested more than {MAX_NESTING} levels deep; kumo-agent refuses it"
    )]
    TooDeep,
    #[error("cloud-config could not be parsed: {0}")]
    Internal(String),
}

/// Deepest indentation (columns plus block indicators on a line) accepted. yaml-rust2 parses
/// and drops documents recursively, so nesting must be bounded before it sees one: user-data
/// could otherwise overflow the stack and abort PID 1. Block nesting is at most about this
/// bound, flow nesting at most 255 (yaml-rust2's own limit); parsing runs on a thread with a
/// [`PARSER_STACK`] stack that holds that with a wide margin.
pub const MAX_NESTING: usize = 1000;
/// Stack of the parsing thread.
const PARSER_STACK: usize = 32 * 1024 * 1024;

/// An upper bound on how deep a line can nest block collections: its indentation plus two for
/// each block indicator (`- `, `? `, `: `) that opens it.
fn nesting_bound(text: &str) -> usize {
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start_matches([' ', '\t']);
            let mut depth = line.len() - trimmed.len();
            let mut rest = trimmed;
            while let Some(after) = rest
                .strip_prefix('-')
                .or_else(|| rest.strip_prefix('?'))
                .or_else(|| rest.strip_prefix(':'))
            {
                if !(after.is_empty() || after.starts_with([' ', '\t'])) {
                    break;
                }
                depth += 2;
                rest = after.trim_start_matches([' ', '\t']);
            }
            depth
        })
        .max()
        .unwrap_or(0)
}

/// A command of `bootcmd` or `runcmd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A line of shell.
    Shell(String),
    /// An argument vector, quoted for the shell.
    Argv(Vec<String>),
}

impl Command {
    /// The command as one line of a shell script.
    pub fn to_shell_line(&self) -> String {
        match self {
            Command::Shell(line) => line.clone(),
            Command::Argv(argv) => argv
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Quotes a word for POSIX sh.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Commands as a `/bin/sh` script, the way cloud-init writes `runcmd`.
pub fn shell_script(commands: &[Command]) -> String {
    let mut s = String::from("#!/bin/sh\n");
    for c in commands {
        s.push_str(&c.to_shell_line());
        s.push('\n');
    }
    s
}

/// One `write_files` entry, content already decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFile {
    pub path: String,
    pub content: Vec<u8>,
    /// Mode bits; 0644 when absent.
    pub permissions: Option<u32>,
    /// `user` or `user:group`.
    pub owner: Option<String>,
    pub append: bool,
    /// Written after users are created (cloud-init's `defer`).
    pub defer: bool,
}

/// One `users` entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// `None` for the literal entry `default` (the image's default user).
    pub name: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub gecos: Option<String>,
    pub homedir: Option<String>,
    pub shell: Option<String>,
    pub primary_group: Option<String>,
    /// Supplementary groups (created when missing).
    pub groups: Vec<String>,
    /// sudoers rules (`ALL=(ALL) NOPASSWD:ALL`).
    pub sudo: Vec<String>,
}

/// The parsed cloud-config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CloudConfig {
    pub bootcmd: Vec<Command>,
    pub runcmd: Vec<Command>,
    pub write_files: Vec<WriteFile>,
    pub ssh_authorized_keys: Vec<String>,
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    pub preserve_hostname: bool,
    pub manage_etc_hosts: bool,
    pub users: Vec<User>,
    /// Top-level `groups`: each group and the users to add to it.
    pub groups: Vec<(String, Vec<String>)>,
    pub final_message: Option<String>,
    /// What was ignored, and why.
    pub warnings: Vec<String>,
}

/// Keys that cloud-init knows but kumo-agent does not apply; they get a specific warning.
const KNOWN_UNSUPPORTED: &[&str] = &[
    "packages",
    "package_update",
    "package_upgrade",
    "package_reboot_if_required",
    "apt",
    "yum_repos",
    "snap",
    "mounts",
    "chpasswd",
    "password",
    "ssh_pwauth",
    "ntp",
    "timezone",
    "locale",
    "disk_setup",
    "fs_setup",
    "growpart",
    "resize_rootfs",
    "power_state",
    "phone_home",
    "ca_certs",
    "rsyslog",
    "swap",
    "keyboard",
];

impl CloudConfig {
    /// Parses one cloud-config document (the `#cloud-config` line is a YAML comment).
    pub fn parse(bytes: &[u8]) -> Result<Self, CloudConfigError> {
        let text =
            std::str::from_utf8(bytes).map_err(|e| CloudConfigError::NotUtf8(e.valid_up_to()))?;
        if nesting_bound(text) > MAX_NESTING {
            return Err(CloudConfigError::TooDeep);
        }
        let text = text.to_string();
        std::thread::Builder::new()
            .name("cloud-config".into())
            .stack_size(PARSER_STACK)
            .spawn(move || Self::parse_text(&text))
            .map_err(|e| CloudConfigError::Internal(format!("cannot start the parser: {e}")))?
            .join()
            .map_err(|_| CloudConfigError::Internal("the YAML parser panicked".into()))?
    }

    fn parse_text(text: &str) -> Result<Self, CloudConfigError> {
        let docs =
            YamlLoader::load_from_str(text).map_err(|e| CloudConfigError::Yaml(e.to_string()))?;
        let mut cfg = CloudConfig::default();
        let Some(doc) = docs.into_iter().next() else {
            return Ok(cfg);
        };
        let map = match doc {
            Yaml::Hash(h) => h,
            Yaml::Null => return Ok(cfg),
            other => return Err(CloudConfigError::NotAMapping(type_name(&other))),
        };
        for (key, value) in map {
            let Some(key) = key.as_str().map(str::to_owned) else {
                cfg.warnings
                    .push(format!("ignored a key that is not a string: {key:?}"));
                continue;
            };
            match key.as_str() {
                "bootcmd" => cfg.bootcmd = commands(&key, &value, &mut cfg.warnings),
                "runcmd" => cfg.runcmd = commands(&key, &value, &mut cfg.warnings),
                "write_files" => cfg.write_files = write_files(&value, &mut cfg.warnings),
                "ssh_authorized_keys" => {
                    cfg.ssh_authorized_keys = strings(&key, &value, &mut cfg.warnings)
                }
                "hostname" => cfg.hostname = scalar(&key, &value, &mut cfg.warnings),
                "fqdn" => cfg.fqdn = scalar(&key, &value, &mut cfg.warnings),
                "preserve_hostname" => {
                    cfg.preserve_hostname = boolean(&key, &value, &mut cfg.warnings)
                }
                "manage_etc_hosts" => {
                    // `localhost` is also accepted by cloud-init (127.0.1.1 entry).
                    cfg.manage_etc_hosts = value.as_str() == Some("localhost")
                        || boolean(&key, &value, &mut cfg.warnings)
                }
                "users" => cfg.users = users(&value, &mut cfg.warnings),
                "groups" => cfg.groups = groups(&value, &mut cfg.warnings),
                "final_message" => cfg.final_message = scalar(&key, &value, &mut cfg.warnings),
                k if KNOWN_UNSUPPORTED.contains(&k) => cfg.warnings.push(format!(
                    "cloud-config key '{k}' is not supported by kumo-agent (use the debian-12 image with cloud-init for it); ignored"
                )),
                k => cfg
                    .warnings
                    .push(format!("unknown cloud-config key '{k}'; ignored")),
            }
        }
        Ok(cfg)
    }

    /// Merges a later part into this one (lists appended, scalars replaced).
    pub fn merge(&mut self, later: CloudConfig) {
        self.bootcmd.extend(later.bootcmd);
        self.runcmd.extend(later.runcmd);
        self.write_files.extend(later.write_files);
        self.ssh_authorized_keys.extend(later.ssh_authorized_keys);
        self.users.extend(later.users);
        self.groups.extend(later.groups);
        self.warnings.extend(later.warnings);
        if later.hostname.is_some() {
            self.hostname = later.hostname;
        }
        if later.fqdn.is_some() {
            self.fqdn = later.fqdn;
        }
        if later.final_message.is_some() {
            self.final_message = later.final_message;
        }
        self.preserve_hostname |= later.preserve_hostname;
        self.manage_etc_hosts |= later.manage_etc_hosts;
    }
}

fn type_name(y: &Yaml) -> &'static str {
    match y {
        Yaml::Real(_) => "a number",
        Yaml::Integer(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Boolean(_) => "a boolean",
        Yaml::Array(_) => "a list",
        Yaml::Hash(_) => "a mapping",
        Yaml::Alias(_) => "an alias",
        Yaml::Null => "nothing",
        Yaml::BadValue => "an invalid value",
    }
}

/// A scalar as text (numbers and booleans too, as cloud-init's Python would str() them).
fn scalar_text(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn scalar(key: &str, y: &Yaml, warnings: &mut Vec<String>) -> Option<String> {
    match y {
        Yaml::Null => None,
        other => {
            let text = scalar_text(other);
            if text.is_none() {
                warnings.push(format!(
                    "'{key}' must be a string, found {}; ignored",
                    type_name(other)
                ));
            }
            text
        }
    }
}

fn boolean(key: &str, y: &Yaml, warnings: &mut Vec<String>) -> bool {
    match y {
        Yaml::Boolean(b) => *b,
        Yaml::Null => false,
        Yaml::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "y" => true,
            "false" | "no" | "off" | "n" => false,
            _ => {
                warnings.push(format!(
                    "'{key}' must be true or false, found {s:?}; ignored"
                ));
                false
            }
        },
        other => {
            warnings.push(format!(
                "'{key}' must be true or false, found {}; ignored",
                type_name(other)
            ));
            false
        }
    }
}

fn strings(key: &str, y: &Yaml, warnings: &mut Vec<String>) -> Vec<String> {
    match y {
        Yaml::Null => Vec::new(),
        Yaml::Array(items) => items
            .iter()
            .filter_map(|i| {
                let t = scalar_text(i);
                if t.is_none() {
                    warnings.push(format!(
                        "an item of '{key}' is {}, not a string; ignored",
                        type_name(i)
                    ));
                }
                t
            })
            .collect(),
        other => match scalar_text(other) {
            Some(s) => vec![s],
            None => {
                warnings.push(format!(
                    "'{key}' must be a list of strings, found {}; ignored",
                    type_name(other)
                ));
                Vec::new()
            }
        },
    }
}

fn commands(key: &str, y: &Yaml, warnings: &mut Vec<String>) -> Vec<Command> {
    let items = match y {
        Yaml::Null => return Vec::new(),
        Yaml::Array(items) => items.as_slice(),
        Yaml::String(s) => return vec![Command::Shell(s.clone())],
        other => {
            warnings.push(format!(
                "'{key}' must be a list of commands, found {}; ignored",
                type_name(other)
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Yaml::Array(argv) => {
                let words: Option<Vec<String>> = argv.iter().map(scalar_text).collect();
                match words {
                    Some(w) if !w.is_empty() => out.push(Command::Argv(w)),
                    _ => warnings.push(format!(
                        "{key}[{i}] must be a string or a list of strings; ignored"
                    )),
                }
            }
            Yaml::Null => {}
            other => match scalar_text(other) {
                Some(s) => out.push(Command::Shell(s)),
                None => warnings.push(format!(
                    "{key}[{i}] must be a string or a list of strings, found {}; ignored",
                    type_name(other)
                )),
            },
        }
    }
    out
}

/// Parses a mode: `'0644'`, `'644'`, `0o644`, or a number (digits all 0-7 read as octal).
pub fn parse_permissions(y: &Yaml) -> Option<u32> {
    match y {
        Yaml::String(s) => {
            let s = s.trim();
            let digits = s
                .strip_prefix("0o")
                .or_else(|| s.strip_prefix("0O"))
                .unwrap_or(s);
            u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
        }
        Yaml::Integer(n) => {
            let n = u32::try_from(*n).ok()?;
            let text = n.to_string();
            if text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                u32::from_str_radix(&text, 8).ok().filter(|m| *m <= 0o7777)
            } else {
                Some(n).filter(|m| *m <= 0o7777)
            }
        }
        _ => None,
    }
}

/// Decodes write_files content by its `encoding`.
pub fn decode_content(content: &str, encoding: &str) -> Result<Vec<u8>, String> {
    let b64 = |s: &str| {
        let cleaned: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(cleaned.as_bytes())
            .map_err(|e| format!("invalid base64: {e}"))
    };
    let gunzip = |data: &[u8]| crate::userdata::gunzip(data).map_err(|e| e.to_string());
    match encoding.trim().to_ascii_lowercase().as_str() {
        "" | "text/plain" => Ok(content.as_bytes().to_vec()),
        "b64" | "base64" => b64(content),
        "gz" | "gzip" => gunzip(content.as_bytes()),
        "gz+base64" | "gzip+base64" | "gz+b64" | "gzip+b64" => gunzip(&b64(content)?),
        other => Err(format!("unknown encoding '{other}'")),
    }
}

fn write_files(y: &Yaml, warnings: &mut Vec<String>) -> Vec<WriteFile> {
    let items = match y {
        Yaml::Null => return Vec::new(),
        Yaml::Array(items) => items,
        other => {
            warnings.push(format!(
                "'write_files' must be a list, found {}; ignored",
                type_name(other)
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Yaml::Hash(map) = item else {
            warnings.push(format!("write_files[{i}] must be a mapping; ignored"));
            continue;
        };
        let get = |k: &str| map.get(&Yaml::String(k.into()));
        let Some(path) = get("path").and_then(scalar_text).filter(|p| !p.is_empty()) else {
            warnings.push(format!("write_files[{i}] has no path; ignored"));
            continue;
        };
        if !path.starts_with('/') {
            warnings.push(format!(
                "write_files[{i}]: path {path:?} is not absolute; ignored"
            ));
            continue;
        }
        if get("source").is_some() {
            warnings.push(format!(
                "write_files[{i}] ({path}): 'source' (download) is not supported; using 'content'"
            ));
        }
        let content = get("content").and_then(scalar_text).unwrap_or_default();
        let encoding = get("encoding").and_then(scalar_text).unwrap_or_default();
        let content = match decode_content(&content, &encoding) {
            Ok(c) => c,
            Err(e) => {
                warnings.push(format!("write_files[{i}] ({path}): {e}; not written"));
                continue;
            }
        };
        let permissions = match get("permissions") {
            None | Some(Yaml::Null) => None,
            Some(p) => match parse_permissions(p) {
                Some(m) => Some(m),
                None => {
                    warnings.push(format!(
                        "write_files[{i}] ({path}): permissions {p:?} are not an octal mode; using 0644"
                    ));
                    None
                }
            },
        };
        let flag = |k: &str, warnings: &mut Vec<String>| match get(k) {
            None => false,
            Some(v) => boolean(&format!("write_files[{i}].{k}"), v, warnings),
        };
        let append = flag("append", warnings);
        let defer = flag("defer", warnings);
        out.push(WriteFile {
            path,
            content,
            permissions,
            owner: get("owner").and_then(scalar_text),
            append,
            defer,
        });
    }
    out
}

fn users(y: &Yaml, warnings: &mut Vec<String>) -> Vec<User> {
    let items: Vec<Yaml> = match y {
        Yaml::Null => return Vec::new(),
        Yaml::Array(items) => items.clone(),
        // cloud-init also accepts a comma-separated string of names.
        Yaml::String(s) => s
            .split(',')
            .map(|n| Yaml::String(n.trim().to_string()))
            .collect(),
        other => {
            warnings.push(format!(
                "'users' must be a list, found {}; ignored",
                type_name(other)
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Yaml::String(name) if name == "default" => out.push(User::default()),
            Yaml::String(name) if valid_user_name(name) => out.push(User {
                name: Some(name.clone()),
                ..User::default()
            }),
            Yaml::Hash(map) => {
                let get = |k: &str| map.get(&Yaml::String(k.into()));
                let Some(name) = get("name").and_then(scalar_text) else {
                    warnings.push(format!("users[{i}] has no name; ignored"));
                    continue;
                };
                if !valid_user_name(&name) {
                    warnings.push(format!(
                        "users[{i}]: {name:?} is not a valid user name; ignored"
                    ));
                    continue;
                }
                let mut keys = Vec::new();
                for k in ["ssh_authorized_keys", "ssh-authorized-keys"] {
                    if let Some(v) = get(k) {
                        keys.extend(strings(&format!("users[{i}].{k}"), v, warnings));
                    }
                }
                let sudo = match get("sudo") {
                    None | Some(Yaml::Null) | Some(Yaml::Boolean(false)) => Vec::new(),
                    Some(v) => strings(&format!("users[{i}].sudo"), v, warnings),
                };
                let groups = match get("groups") {
                    None | Some(Yaml::Null) => Vec::new(),
                    Some(Yaml::String(s)) => s
                        .split(',')
                        .map(|g| g.trim().to_string())
                        .filter(|g| !g.is_empty())
                        .collect(),
                    Some(v) => strings(&format!("users[{i}].groups"), v, warnings),
                };
                let groups = groups
                    .into_iter()
                    .filter(|g| {
                        let ok = valid_user_name(g);
                        if !ok {
                            warnings.push(format!(
                                "users[{i}]: group {g:?} is not a valid name; ignored"
                            ));
                        }
                        ok
                    })
                    .collect();
                if let Some(v) = get("lock_passwd")
                    && !boolean(&format!("users[{i}].lock_passwd"), v, warnings)
                {
                    warnings.push(format!(
                        "users[{i}] ({name}): passwords are not supported by kumo-agent; the account stays locked (SSH keys only)"
                    ));
                }
                for k in map.keys().filter_map(Yaml::as_str) {
                    if !matches!(
                        k,
                        "name"
                            | "ssh_authorized_keys"
                            | "ssh-authorized-keys"
                            | "gecos"
                            | "homedir"
                            | "shell"
                            | "primary_group"
                            | "groups"
                            | "sudo"
                            | "lock_passwd"
                    ) {
                        warnings.push(format!(
                            "users[{i}] ({name}): key '{k}' is not supported by kumo-agent; ignored"
                        ));
                    }
                }
                out.push(User {
                    name: Some(name),
                    ssh_authorized_keys: keys,
                    gecos: get("gecos").and_then(scalar_text),
                    homedir: get("homedir").and_then(scalar_text),
                    shell: get("shell").and_then(scalar_text),
                    primary_group: get("primary_group").and_then(scalar_text),
                    groups,
                    sudo,
                });
            }
            other => warnings.push(format!(
                "users[{i}] must be a name or a mapping, found {}; ignored",
                type_name(other)
            )),
        }
    }
    out
}

fn groups(y: &Yaml, warnings: &mut Vec<String>) -> Vec<(String, Vec<String>)> {
    let items: Vec<Yaml> = match y {
        Yaml::Null => return Vec::new(),
        Yaml::Array(items) => items.clone(),
        Yaml::String(s) => s
            .split(',')
            .map(|n| Yaml::String(n.trim().to_string()))
            .collect(),
        // cloud-init also accepts a mapping of group -> members.
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| {
                let mut m = yaml_rust2::yaml::Hash::new();
                m.insert(k.clone(), v.clone());
                Yaml::Hash(m)
            })
            .collect(),
        other => {
            warnings.push(format!(
                "'groups' must be a list, found {}; ignored",
                type_name(other)
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let (name, members) = match item {
            Yaml::String(n) => (n.clone(), Vec::new()),
            Yaml::Hash(h) if h.len() == 1 => {
                let (k, v) = h.iter().next().expect("one entry");
                let Some(name) = scalar_text(k) else {
                    warnings.push(format!("groups[{i}] has no name; ignored"));
                    continue;
                };
                (name, strings(&format!("groups[{i}]"), v, warnings))
            }
            other => {
                warnings.push(format!(
                    "groups[{i}] must be a name or a mapping, found {}; ignored",
                    type_name(other)
                ));
                continue;
            }
        };
        if valid_user_name(&name) {
            out.push((name, members));
        } else if !name.is_empty() {
            warnings.push(format!(
                "groups[{i}]: {name:?} is not a valid group name; ignored"
            ));
        }
    }
    out
}

/// A POSIX-portable user name (as useradd accepts by default).
pub fn valid_user_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn full_example() {
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(b"zipped\n").unwrap();
            base64::engine::general_purpose::STANDARD.encode(e.finish().unwrap())
        };
        let text = format!(
            r#"#cloud-config
hostname: web-1
bootcmd:
  - echo boot > /tmp/boot
  - [ sh, -c, "echo 'hi there'" ]
runcmd:
  - echo run
  - [ touch, "/tmp/a b" ]
write_files:
  - path: /etc/motd
    content: |
      hello
    permissions: '0600'
    owner: root:root
  - path: /etc/b64
    encoding: b64
    content: aGk=
    permissions: 0755
  - path: /etc/gz
    encoding: gz+b64
    content: {gz}
    append: true
  - path: relative
  - content: no path
ssh_authorized_keys:
  - ssh-ed25519 AAAA one
users:
  - default
  - name: alice
    ssh-authorized-keys: [ "ssh-ed25519 AAAA alice" ]
    sudo: ALL=(ALL) NOPASSWD:ALL
    groups: [wheel, docker]
    passwd: x
groups:
  - admins
  - ops: [alice, bob]
packages: [nginx]
frobnicate: 1
"#
        );
        let cfg = CloudConfig::parse(text.as_bytes()).unwrap();
        assert_eq!(cfg.hostname.as_deref(), Some("web-1"));
        assert_eq!(
            cfg.bootcmd,
            vec![
                Command::Shell("echo boot > /tmp/boot".into()),
                Command::Argv(vec!["sh".into(), "-c".into(), "echo 'hi there'".into()])
            ]
        );
        assert_eq!(
            shell_script(&cfg.runcmd),
            "#!/bin/sh\necho run\ntouch '/tmp/a b'\n"
        );
        assert_eq!(
            cfg.bootcmd[1].to_shell_line(),
            r#"sh -c 'echo '\''hi there'\'''"#
        );
        assert_eq!(cfg.write_files.len(), 3);
        assert_eq!(cfg.write_files[0].content, b"hello\n");
        assert_eq!(cfg.write_files[0].permissions, Some(0o600));
        assert_eq!(cfg.write_files[0].owner.as_deref(), Some("root:root"));
        assert_eq!(cfg.write_files[1].content, b"hi");
        assert_eq!(cfg.write_files[1].permissions, Some(0o755));
        assert_eq!(cfg.write_files[2].content, b"zipped\n");
        assert!(cfg.write_files[2].append);
        assert_eq!(cfg.ssh_authorized_keys, vec!["ssh-ed25519 AAAA one"]);
        assert_eq!(cfg.users.len(), 2);
        assert_eq!(cfg.users[0].name, None);
        assert_eq!(cfg.users[1].name.as_deref(), Some("alice"));
        assert_eq!(
            cfg.users[1].ssh_authorized_keys,
            vec!["ssh-ed25519 AAAA alice"]
        );
        let w = cfg.warnings.join("\n");
        assert!(w.contains("'packages' is not supported"), "{w}");
        assert!(w.contains("unknown cloud-config key 'frobnicate'"), "{w}");
        assert!(w.contains("not absolute"), "{w}");
        assert!(w.contains("has no path"), "{w}");
        assert!(w.contains("'passwd' is not supported"), "{w}");
        assert_eq!(cfg.users[1].sudo, vec!["ALL=(ALL) NOPASSWD:ALL"]);
        assert_eq!(cfg.users[1].groups, vec!["wheel", "docker"]);
        assert_eq!(
            cfg.groups,
            vec![
                ("admins".to_string(), vec![]),
                (
                    "ops".to_string(),
                    vec!["alice".to_string(), "bob".to_string()]
                )
            ]
        );
    }

    #[test]
    fn bad_documents() {
        assert!(matches!(
            CloudConfig::parse(b"#cloud-config\n- a list\n"),
            Err(CloudConfigError::NotAMapping("a list"))
        ));
        assert!(matches!(
            CloudConfig::parse(b"#cloud-config\nruncmd: [unclosed\n"),
            Err(CloudConfigError::Yaml(_))
        ));
        assert_eq!(
            CloudConfig::parse(b"#cloud-config\nhostname: \xff\n"),
            Err(CloudConfigError::NotUtf8(24))
        );
        assert_eq!(
            CloudConfig::parse(b"#cloud-config\n").unwrap(),
            CloudConfig::default()
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        // 100k nested sequences overflow yaml-rust2's recursion on any normal stack.
        let mut text = String::from("#cloud-config\nx:\n");
        text.push_str(&"- ".repeat(100_000));
        text.push_str("a\n");
        assert_eq!(
            CloudConfig::parse(text.as_bytes()),
            Err(CloudConfigError::TooDeep)
        );
        let mut text = String::from("#cloud-config\nx:\n");
        text.push_str(&" ".repeat(5000));
        text.push_str("- a\n");
        assert_eq!(
            CloudConfig::parse(text.as_bytes()),
            Err(CloudConfigError::TooDeep)
        );
        // Flow nesting is bounded by yaml-rust2 itself (255 levels).
        let text = format!("x: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert!(CloudConfig::parse(text.as_bytes()).is_err());
        // The deepest accepted block nesting parses on the parser thread's stack.
        let mut text = String::from("x:\n");
        text.push_str(&"- ".repeat(MAX_NESTING / 2));
        text.push_str("a\n");
        assert!(CloudConfig::parse(text.as_bytes()).is_ok());
        // Long lines that are not indentation are fine (base64 content on one line).
        let text = format!(
            "write_files:\n  - path: /x\n    content: {}\n",
            "QUFB".repeat(5000)
        );
        assert_eq!(
            CloudConfig::parse(text.as_bytes())
                .unwrap()
                .write_files
                .len(),
            1
        );
    }

    #[test]
    fn wrong_shapes_are_warnings() {
        let cfg = CloudConfig::parse(b"runcmd: {a: b}\nwrite_files: 3\nhostname: [x]\nusers: 5\n")
            .unwrap();
        assert!(cfg.runcmd.is_empty());
        assert!(cfg.write_files.is_empty());
        assert_eq!(cfg.hostname, None);
        assert_eq!(cfg.warnings.len(), 4, "{:?}", cfg.warnings);
    }

    #[test]
    fn permissions() {
        assert_eq!(parse_permissions(&Yaml::String("0644".into())), Some(0o644));
        assert_eq!(
            parse_permissions(&Yaml::String("0o755".into())),
            Some(0o755)
        );
        assert_eq!(parse_permissions(&Yaml::Integer(644)), Some(0o644));
        assert_eq!(parse_permissions(&Yaml::Integer(493)), Some(493));
        assert_eq!(parse_permissions(&Yaml::String("rw".into())), None);
        assert_eq!(parse_permissions(&Yaml::String("99999".into())), None);
    }

    #[test]
    fn merge_appends_lists() {
        let mut a = CloudConfig::parse(b"runcmd: [a]\nhostname: one\n").unwrap();
        a.merge(CloudConfig::parse(b"runcmd: [b]\nhostname: two\n").unwrap());
        assert_eq!(
            a.runcmd,
            vec![Command::Shell("a".into()), Command::Shell("b".into())]
        );
        assert_eq!(a.hostname.as_deref(), Some("two"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("plain"), "plain");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r#"'it'\''s'"#);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "(#cloud-config\n)?[a-z_:\\-\\[\\]{}'\" \n0-9|>&*!%@]{0,300}") {
            let _ = CloudConfig::parse(s.as_bytes());
        }

        #[test]
        fn parse_arbitrary_bytes(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = CloudConfig::parse(&data);
        }

        #[test]
        fn quoted_words_survive_sh(word in "[ -~]{0,40}") {
            // The quoting is the inverse of sh's: check the shape that sh reads back verbatim.
            let q = shell_quote(&word);
            if q.starts_with('\'') {
                let inner = &q[1..q.len() - 1];
                proptest::prop_assert_eq!(inner.replace("'\\''", "'"), word);
            } else {
                proptest::prop_assert_eq!(q, word);
            }
        }
    }
}
