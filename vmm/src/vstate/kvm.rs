//! Opening `/dev/kvm` and checking what kumo-vmm needs from it.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

/// Errors opening or querying KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error(
        "/dev/kvm not found: this host has no KVM (load kvm_intel or kvm_amd, or run kumo's namespace backend)"
    )]
    NotFound,
    #[error("permission denied opening /dev/kvm: run as root or join the group that owns /dev/kvm")]
    PermissionDenied,
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (12 expected)")]
    ApiVersion(i32),
    #[error("KVM lacks a capability kumo-vmm needs: {0:?}")]
    MissingCap(Cap),
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
}

/// Capabilities the VMM relies on.
pub const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
    Cap::PitState2,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::ExtCpuid,
];

/// An open `/dev/kvm` with its supported CPUID.
pub struct KvmContext {
    /// The KVM system handle.
    pub kvm: Kvm,
    /// What `KVM_GET_SUPPORTED_CPUID` reported.
    pub supported_cpuid: CpuId,
}

impl KvmContext {
    /// Opens `/dev/kvm` and checks the API version and capabilities.
    pub fn open() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(|e| match e.errno() {
            libc::ENOENT => KvmError::NotFound,
            libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
            _ => KvmError::Open(e),
        })?;
        let v = kvm.get_api_version();
        if v != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(KvmError::ApiVersion(v));
        }
        for cap in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(KvmError::MissingCap(*cap));
            }
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)?;
        Ok(Self {
            kvm,
            supported_cpuid,
        })
    }

    /// The most vCPUs KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }
}
