//! kumo-vmm's configuration: command-line flags, optionally a JSON file with the same fields
//! (flag names as keys, kebab-case), flags overriding the file and adding to its lists.
//!
//! ```json
//! {
//!   "kernel": "/path/vmlinux",
//!   "initrd": "/path/initrd.img",
//!   "cmdline": "console=ttyS0 reboot=k panic=1",
//!   "vcpus": 2,
//!   "memory-mib": 256,
//!   "disk": ["/path/root.ext4", "/path/data.img,ro"],
//!   "net": ["tap=kumo-tap0,mac=02:00:00:00:00:01"],
//!   "console": "stdio",
//!   "api-socket": "/run/kumo/i-0123.sock"
//! }
//! ```

use clap::Parser;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Most vCPUs.
pub const MAX_VCPUS: u8 = 32;
/// Least guest memory in MiB (the boot structures and the legacy hole take the first MiB).
pub const MIN_MEMORY_MIB: u64 = 2;
/// Most guest memory in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Default vCPU count.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default memory size in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// The command line used when none is given: serial console, reset on reboot and on panic
/// through the i8042, no PCI probing, i8042 probing kept to what kumo-vmm emulates.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
/// Longest TAP interface name (IFNAMSIZ - 1).
pub const MAX_TAP_NAME: usize = 15;

/// Errors in the configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("config file {path} is not valid: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("no kernel given: pass --kernel PATH (a vmlinux ELF or a bzImage)")]
    MissingKernel,
    #[error("--vcpus {0} is out of range: 1-{MAX_VCPUS}")]
    Vcpus(u64),
    #[error("--memory-mib {0} is out of range: {MIN_MEMORY_MIB}-{MAX_MEMORY_MIB}")]
    Memory(u64),
    #[error("--disk {0:?}: expected PATH or PATH,ro")]
    Disk(String),
    #[error("--net {0:?}: expected tap=NAME,mac=XX:XX:XX:XX:XX:XX ({1})")]
    Net(String, String),
    #[error("--console {0:?}: expected stdio, none or a file path")]
    Console(String),
}

/// The flags (and the JSON file's fields).
#[derive(Parser, Deserialize, Debug, Default, Clone)]
#[command(
    name = "kumo-vmm",
    version,
    about = "Runs one KVM micro-VM (one kumo instance)."
)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Args {
    /// JSON file with the same fields as the flags; flags given too override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Kernel: an ELF vmlinux (PVH note or 64-bit entry) or a bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (default: a serial console and reset-on-reboot set).
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// vCPUs, 1-32 (default 1).
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u64>,
    /// Guest memory in MiB (default 128).
    #[arg(long, value_name = "M")]
    pub memory_mib: Option<u64>,
    /// A virtio-blk disk: a raw image file, `,ro` for read-only. Repeatable.
    #[arg(long, value_name = "PATH[,ro]")]
    #[serde(default)]
    pub disk: Vec<String>,
    /// A virtio-net NIC on an existing TAP device. Repeatable.
    #[arg(long, value_name = "tap=NAME,mac=MAC")]
    #[serde(default)]
    pub net: Vec<String>,
    /// Where the serial console goes: `stdio` (default; stdin is its input), `none`, or a file.
    #[arg(long, value_name = "PATH|stdio")]
    pub console: Option<String>,
    /// Unix socket for the control API (status, shutdown, stop).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
}

/// A disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image.
    pub path: PathBuf,
    /// Writes fail with VIRTIO_BLK_S_IOERR.
    pub read_only: bool,
}

/// A NIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// TAP interface name (it must exist).
    pub tap: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

/// The console's destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleConfig {
    /// stdout, with stdin as input.
    Stdio,
    /// Discarded.
    None,
    /// Appended to a file (created if missing).
    File(PathBuf),
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    pub console: ConsoleConfig,
    pub api_socket: Option<PathBuf>,
}

impl Args {
    /// Reads `--config` (if given) and lays the flags over it.
    pub fn merged(self) -> Result<Args, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut file: Args = serde_json::from_str(&text).map_err(|e| ConfigError::Json {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        file.config = Some(path);
        file.kernel = self.kernel.or(file.kernel);
        file.initrd = self.initrd.or(file.initrd);
        file.cmdline = self.cmdline.or(file.cmdline);
        file.vcpus = self.vcpus.or(file.vcpus);
        file.memory_mib = self.memory_mib.or(file.memory_mib);
        file.disk.extend(self.disk);
        file.net.extend(self.net);
        file.console = self.console.or(file.console);
        file.api_socket = self.api_socket.or(file.api_socket);
        Ok(file)
    }

    /// Validates into a [`VmConfig`].
    pub fn into_config(self) -> Result<VmConfig, ConfigError> {
        let a = self.merged()?;
        let kernel = a.kernel.ok_or(ConfigError::MissingKernel)?;
        let vcpus = a.vcpus.unwrap_or(DEFAULT_VCPUS as u64);
        if !(1..=MAX_VCPUS as u64).contains(&vcpus) {
            return Err(ConfigError::Vcpus(vcpus));
        }
        let memory_mib = a.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(ConfigError::Memory(memory_mib));
        }
        Ok(VmConfig {
            kernel,
            initrd: a.initrd,
            cmdline: a.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            vcpus: vcpus as u8,
            memory_mib,
            disks: a
                .disk
                .iter()
                .map(|d| parse_disk(d))
                .collect::<Result<_, _>>()?,
            nets: a
                .net
                .iter()
                .map(|n| parse_net(n))
                .collect::<Result<_, _>>()?,
            console: parse_console(a.console.as_deref().unwrap_or("stdio"))?,
            api_socket: a.api_socket,
        })
    }
}

/// `PATH` or `PATH,ro` (also `PATH,rw`).
pub fn parse_disk(s: &str) -> Result<DiskConfig, ConfigError> {
    let err = || ConfigError::Disk(s.to_string());
    let (path, read_only) = match s.rsplit_once(',') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        Some(_) => return Err(err()),
        None => (s, false),
    };
    if path.is_empty() {
        return Err(err());
    }
    Ok(DiskConfig {
        path: PathBuf::from(path),
        read_only,
    })
}

/// `XX:XX:XX:XX:XX:XX`, a unicast address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("MAC {s:?} needs six hex bytes separated by ':'"));
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(format!("MAC {s:?}: {p:?} is not two hex digits"));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| format!("MAC {s:?}: {p:?} is not hex"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("MAC {s:?} is a multicast address"));
    }
    Ok(mac)
}

/// `tap=NAME,mac=MAC` (keys in any order).
pub fn parse_net(s: &str) -> Result<NetConfig, ConfigError> {
    let err = |why: &str| ConfigError::Net(s.to_string(), why.to_string());
    let (mut tap, mut mac) = (None, None);
    for kv in s.split(',') {
        match kv.split_once('=') {
            Some(("tap", v)) => tap = Some(v.to_string()),
            Some(("mac", v)) => mac = Some(parse_mac(v).map_err(|e| err(&e))?),
            _ => return Err(err(&format!("unknown item {kv:?}"))),
        }
    }
    let tap = tap.ok_or_else(|| err("tap= is missing"))?;
    if tap.is_empty() || tap.len() > MAX_TAP_NAME || tap.contains(['/', ' ', '\0']) {
        return Err(err(
            "the TAP name must be 1-15 characters without '/' or spaces",
        ));
    }
    let mac = mac.ok_or_else(|| err("mac= is missing"))?;
    Ok(NetConfig { tap, mac })
}

/// `stdio`, `none`, or a path.
pub fn parse_console(s: &str) -> Result<ConsoleConfig, ConfigError> {
    Ok(match s {
        "stdio" => ConsoleConfig::Stdio,
        "none" => ConsoleConfig::None,
        "" => return Err(ConfigError::Console(s.to_string())),
        p => ConsoleConfig::File(Path::new(p).to_path_buf()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("kumo-vmm").chain(v.iter().copied())).unwrap()
    }

    #[test]
    fn flags_with_defaults() {
        let c = args(&["--kernel", "/k"]).into_config().unwrap();
        assert_eq!(
            (c.vcpus, c.memory_mib, c.console.clone()),
            (1, 128, ConsoleConfig::Stdio)
        );
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        let c = args(&[
            "--kernel",
            "/k",
            "--vcpus",
            "4",
            "--memory-mib",
            "512",
            "--disk",
            "/a.img",
            "--disk",
            "/b.img,ro",
            "--net",
            "tap=tap0,mac=02:00:00:00:00:01",
            "--console",
            "/tmp/c.log",
            "--api-socket",
            "/tmp/s",
            "--cmdline",
            "console=ttyS0 -- init-arg",
        ])
        .into_config()
        .unwrap();
        assert_eq!(c.vcpus, 4);
        assert_eq!(
            c.disks[1],
            DiskConfig {
                path: "/b.img".into(),
                read_only: true
            }
        );
        assert!(!c.disks[0].read_only);
        assert_eq!(
            c.nets[0],
            NetConfig {
                tap: "tap0".into(),
                mac: [2, 0, 0, 0, 0, 1]
            }
        );
        assert_eq!(c.console, ConsoleConfig::File("/tmp/c.log".into()));
        assert_eq!(c.cmdline, "console=ttyS0 -- init-arg");
    }

    #[test]
    fn ranges() {
        assert_eq!(
            args(&["--kernel", "k", "--vcpus", "0"]).into_config(),
            Err(ConfigError::Vcpus(0))
        );
        assert_eq!(
            args(&["--kernel", "k", "--vcpus", "33"]).into_config(),
            Err(ConfigError::Vcpus(33))
        );
        assert!(
            args(&["--kernel", "k", "--vcpus", "32"])
                .into_config()
                .is_ok()
        );
        assert_eq!(
            args(&["--kernel", "k", "--memory-mib", "1"]).into_config(),
            Err(ConfigError::Memory(1))
        );
        assert_eq!(args(&[]).into_config(), Err(ConfigError::MissingKernel));
    }

    #[test]
    fn bad_devices() {
        assert!(parse_disk("").is_err());
        assert!(parse_disk("/a,rx").is_err());
        assert!(parse_disk(",ro").is_err());
        for bad in [
            "tap=t0",
            "mac=02:00:00:00:00:01",
            "tap=,mac=02:00:00:00:00:01",
            "tap=t0,mac=01:00:00:00:00:01",
            "tap=t0,mac=02:00:00:00:00",
            "tap=t0,mac=zz:00:00:00:00:01",
            "tap=aaaaaaaaaaaaaaaa,mac=02:00:00:00:00:01",
            "tap=t0,mac=02:00:00:00:00:01,x=1",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_net("mac=0a:0B:00:00:00:ff,tap=x").unwrap().mac,
            [0x0a, 0x0b, 0, 0, 0, 0xff]
        );
        assert!(parse_console("").is_err());
        assert_eq!(parse_console("none").unwrap(), ConsoleConfig::None);
    }

    #[test]
    fn json_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vm.json");
        std::fs::write(
            &f,
            r#"{"kernel":"/k","vcpus":2,"memory-mib":64,"disk":["/a.img"],"net":["tap=t0,mac=02:00:00:00:00:02"],"console":"none","api-socket":"/s"}"#,
        )
        .unwrap();
        let c = args(&[
            "--config",
            f.to_str().unwrap(),
            "--vcpus",
            "3",
            "--disk",
            "/b.img,ro",
        ])
        .into_config()
        .unwrap();
        assert_eq!(
            (c.vcpus, c.memory_mib, c.disks.len(), c.console),
            (3, 64, 2, ConsoleConfig::None)
        );
        assert_eq!(c.api_socket, Some("/s".into()));
        std::fs::write(&f, r#"{"kernel":"/k","bogus":1}"#).unwrap();
        assert!(matches!(
            args(&["--config", f.to_str().unwrap()]).into_config(),
            Err(ConfigError::Json { .. })
        ));
        assert!(matches!(
            args(&["--config", "/nonexistent.json"]).into_config(),
            Err(ConfigError::File { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,64}") {
            let _ = parse_disk(&s);
            let _ = parse_net(&s);
            let _ = parse_mac(&s);
            let _ = parse_console(&s);
        }
    }
}
