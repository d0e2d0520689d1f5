//! Instance backends: how an instance's root disk comes to life.
//!
//! - [`kvm`]: a `kumo-vmm` process (a KVM micro-VM) boots the image's kernel with the root disk
//!   as `/dev/vda` and its NIC on a TAP device. The real thing; needs hardware virtualization.
//! - [`namespace`]: the image's own init (kumo-agent) runs as PID 1 of fresh mount, PID, UTS,
//!   IPC and network namespaces on the root disk, its NIC a veth. No kernel of its own, so only
//!   images whose init is kumo-agent (kumo-minimal) run there; for hosts without hardware
//!   virtualization, and for fast user-data tests.
//!
//! Either way the NIC is a port of the same VPC switch, the console is read by kumo, and the
//! instance is stopped gracefully (the guest is asked to power off) before it is forced.
//! `--backend auto` picks kvm where the host has hardware virtualization (vmx or svm in
//! /proc/cpuinfo, not kvm-pvm's software nesting) and /dev/kvm, else namespace.

pub mod kvm;
pub mod namespace;
pub mod ns_init;

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A backend that runs instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Kvm,
    Namespace,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Kvm => "kvm",
            BackendKind::Namespace => "namespace",
        }
    }
}

/// What the user asked for (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendChoice {
    #[default]
    Auto,
    Kvm,
    Namespace,
}

/// What the host offers for running VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostVirt {
    /// `vmx` or `svm` in /proc/cpuinfo.
    pub hardware_virtualization: bool,
    /// /sys/module/kvm_pvm exists: /dev/kvm is PVM's software nested virtualization.
    pub kvm_pvm: bool,
    /// /dev/kvm exists.
    pub dev_kvm: bool,
}

impl HostVirt {
    /// Reads this host's facts.
    pub fn detect() -> HostVirt {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        HostVirt {
            hardware_virtualization: cpuinfo_has_virt(&cpuinfo),
            kvm_pvm: Path::new("/sys/module/kvm_pvm").exists(),
            dev_kvm: Path::new("/dev/kvm").exists(),
        }
    }

    /// Whether a stock Linux guest can boot here.
    pub fn can_boot_linux(&self) -> bool {
        self.hardware_virtualization && !self.kvm_pvm && self.dev_kvm
    }
}

/// Whether a /proc/cpuinfo text lists the vmx or svm flag.
pub fn cpuinfo_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Why a backend cannot run an image here.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error(
        "/dev/kvm not found: load kvm (modprobe kvm_intel or kvm_amd) or use --backend namespace"
    )]
    NoDevKvm,
    #[error(
        "this host has no hardware virtualization ({why}), so a Linux guest cannot boot under \
         KVM here: use --backend namespace (set KUMO_KVM_ANYWAY=1 to try kvm regardless)"
    )]
    NoHardwareVirtualization { why: String },
    #[error(
        "{image} boots its own kernel and init (systemd, cloud-init), which the namespace backend \
         cannot run: it runs with --backend kvm, on a host with hardware virtualization{here} \
         (the namespace backend runs kumo-minimal only)"
    )]
    NeedsKvm { image: String, here: String },
}

fn no_hw_why(host: &HostVirt) -> String {
    if host.kvm_pvm {
        "/dev/kvm is kvm-pvm, software nested virtualization".into()
    } else {
        "no vmx or svm flag in /proc/cpuinfo".into()
    }
}

/// Whether the namespace backend can run this image: its init must be kumo-agent, which is so
/// for kumo's own kumo-minimal.
pub fn namespace_can_run(image_name: &str) -> bool {
    image_name == "kumo-minimal"
}

/// Picks the backend for `image_name` on `host`. `kvm_anyway` lets kvm run where Linux cannot
/// boot (for developers: the VM is started and fails as the host makes it fail).
pub fn choose(
    choice: BackendChoice,
    host: &HostVirt,
    image_name: &str,
    kvm_anyway: bool,
) -> Result<BackendKind, BackendError> {
    let kvm_ok = || -> Result<BackendKind, BackendError> {
        if !host.dev_kvm {
            return Err(BackendError::NoDevKvm);
        }
        let hardware = host.hardware_virtualization && !host.kvm_pvm;
        if !kvm_anyway && !hardware {
            return Err(BackendError::NoHardwareVirtualization {
                why: no_hw_why(host),
            });
        }
        Ok(BackendKind::Kvm)
    };
    let needs_kvm = |here: &str| BackendError::NeedsKvm {
        image: image_name.to_string(),
        here: here.to_string(),
    };
    match choice {
        BackendChoice::Kvm => kvm_ok(),
        BackendChoice::Namespace => {
            if namespace_can_run(image_name) {
                Ok(BackendKind::Namespace)
            } else {
                Err(needs_kvm(""))
            }
        }
        BackendChoice::Auto => {
            if host.can_boot_linux() {
                Ok(BackendKind::Kvm)
            } else if namespace_can_run(image_name) {
                Ok(BackendKind::Namespace)
            } else {
                Err(needs_kvm(&format!(
                    " (this host has none: {})",
                    no_hw_why(host)
                )))
            }
        }
    }
}

/// Settings for kumo-agent in the instance, given on the kernel command line (kvm) or in the
/// environment (namespace): see agent/README.md.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentKnobs {
    /// `kumo.script_timeout`: a user-data script running longer is killed.
    pub script_timeout_secs: Option<u64>,
    /// `kumo.imds_timeout`: how long to wait for the metadata service.
    pub imds_timeout_secs: Option<u64>,
    /// `kumo.dhcp_timeout`: how long to wait for a DHCP lease.
    pub dhcp_timeout_secs: Option<u64>,
}

impl AgentKnobs {
    fn pairs(&self) -> Vec<(&'static str, u64)> {
        [
            ("script_timeout", self.script_timeout_secs),
            ("imds_timeout", self.imds_timeout_secs),
            ("dhcp_timeout", self.dhcp_timeout_secs),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }

    /// `kumo.script_timeout=600 ...` for the kernel command line.
    pub fn cmdline(&self) -> Vec<String> {
        self.pairs()
            .into_iter()
            .map(|(k, v)| format!("kumo.{k}={v}"))
            .collect()
    }

    /// `KUMO_AGENT_SCRIPT_TIMEOUT=600 ...` for the environment of the namespace's init.
    pub fn env(&self) -> Vec<(String, String)> {
        self.pairs()
            .into_iter()
            .map(|(k, v)| {
                (
                    format!("KUMO_AGENT_{}", k.to_ascii_uppercase()),
                    v.to_string(),
                )
            })
            .collect()
    }
}

/// A running instance's host process (kumo-vmm, or the namespace launcher and its init).
pub trait InstanceProcess: Send {
    /// The main host process's pid.
    fn pid(&self) -> i32;
    /// Its exit status, if it has ended.
    fn try_wait(&mut self) -> Option<ExitStatus>;
    /// Asks the guest to power off (ACPI-less: Ctrl-Alt-Del through the VMM, or SIGUSR2 to the
    /// namespace's init, busybox's `poweroff` signal).
    fn request_shutdown(&mut self) -> Result<(), String>;
    /// Stops it now (the VMM's stop request, then SIGKILL; SIGKILL to the namespace's init).
    fn force_stop(&mut self);
    /// Waits up to `timeout` for the process to end.
    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sets what every instance process gets in the child before exec: its own process group (a
/// terminal's Ctrl-C goes to kumo only, which then stops the instance gracefully), and SIGKILL
/// when kumo dies, so a killed `kumo run` never leaves a running instance behind.
pub fn instance_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls prctl(2) and getppid(2),
    // which are async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nothing would kill us later.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other(
                    "kumo exited while starting the instance",
                ));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PVM: HostVirt = HostVirt {
        hardware_virtualization: false,
        kvm_pvm: true,
        dev_kvm: true,
    };
    const REAL: HostVirt = HostVirt {
        hardware_virtualization: true,
        kvm_pvm: false,
        dev_kvm: true,
    };
    const NO_KVM: HostVirt = HostVirt {
        hardware_virtualization: true,
        kvm_pvm: false,
        dev_kvm: false,
    };

    #[test]
    fn cpuinfo_flags() {
        assert!(cpuinfo_has_virt(
            "processor: 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(cpuinfo_has_virt("flags : fpu svm\n"));
        assert!(!cpuinfo_has_virt("flags : fpu vme sse hypervisor\n"));
        assert!(!cpuinfo_has_virt("model name : vmx inside a name\n"));
    }

    #[test]
    fn auto_picks_kvm_only_where_linux_boots() {
        use BackendChoice::*;
        assert_eq!(
            choose(Auto, &REAL, "kumo-minimal", false),
            Ok(BackendKind::Kvm)
        );
        assert_eq!(
            choose(Auto, &PVM, "kumo-minimal", false),
            Ok(BackendKind::Namespace)
        );
        assert_eq!(
            choose(Auto, &NO_KVM, "kumo-minimal", false),
            Ok(BackendKind::Namespace)
        );
        assert_eq!(
            choose(Auto, &REAL, "debian-12", false),
            Ok(BackendKind::Kvm)
        );
        let e = choose(Auto, &PVM, "debian-12", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--backend kvm") && e.contains("kvm-pvm"), "{e}");
    }

    #[test]
    fn explicit_choices_explain_refusals() {
        use BackendChoice::*;
        let e = choose(Kvm, &NO_KVM, "kumo-minimal", false).unwrap_err();
        assert_eq!(e, BackendError::NoDevKvm);
        assert!(e.to_string().starts_with("/dev/kvm not found: load kvm"));
        let e = choose(Kvm, &PVM, "kumo-minimal", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--backend namespace") && e.contains("kvm-pvm"),
            "{e}"
        );
        assert_eq!(
            choose(Kvm, &PVM, "kumo-minimal", true),
            Ok(BackendKind::Kvm)
        );
        let e = choose(Namespace, &REAL, "debian-12", false)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("debian-12 boots its own kernel"), "{e}");
        assert!(e.contains("--backend kvm"), "{e}");
        assert_eq!(
            choose(Namespace, &REAL, "kumo-minimal", false),
            Ok(BackendKind::Namespace)
        );
    }

    #[test]
    fn agent_knobs() {
        let k = AgentKnobs {
            script_timeout_secs: Some(600),
            imds_timeout_secs: None,
            dhcp_timeout_secs: Some(20),
        };
        assert_eq!(
            k.cmdline(),
            vec!["kumo.script_timeout=600", "kumo.dhcp_timeout=20"]
        );
        assert_eq!(
            k.env(),
            vec![
                ("KUMO_AGENT_SCRIPT_TIMEOUT".to_string(), "600".to_string()),
                ("KUMO_AGENT_DHCP_TIMEOUT".to_string(), "20".to_string())
            ]
        );
        assert!(AgentKnobs::default().cmdline().is_empty());
    }
}
