//! Seccomp filters (seccompiler) installed once setup is done: one for the vCPU threads, one
//! for the VMM thread (event loop, devices, API socket). A syscall outside the list kills the
//! process (`SECCOMP_RET_KILL_PROCESS`), so a compromised device model cannot open files,
//! exec or create sockets.
//!
//! Set `KUMO_VMM_NO_SECCOMP=1` to run without them (debugging only).

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Errors building a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter: {0}")]
    Build(String),
}

/// Syscalls every thread needs.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_mprotect,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_getrandom,
    libc::SYS_rseq,
    libc::SYS_restart_syscall,
    // Rust's std checks a descriptor is open before closing it (debug builds).
    libc::SYS_fcntl,
];

/// The VMM thread also runs epoll, accepts API connections and handles the device backends.
const VMM_EXTRA: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_ioctl,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_sigaltstack,
];

fn build(calls: &[&[libc::c_long]], kvm_ioctls_only: bool) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for set in calls {
        for &nr in *set {
            rules.insert(nr, vec![]);
        }
    }
    if kvm_ioctls_only {
        // vCPU threads: KVM_RUN and the vCPU ioctls the halt check and error reports use.
        let mut ioctl_rules = Vec::new();
        for req in vcpu_ioctls() {
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)
                .map_err(|e| SeccompError::Build(e.to_string()))?;
            ioctl_rules.push(
                SeccompRule::new(vec![cond]).map_err(|e| SeccompError::Build(e.to_string()))?,
            );
        }
        rules.insert(libc::SYS_ioctl, ioctl_rules);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(e.to_string()))
}

const fn kvm_ioctl(nr: u64) -> u64 {
    (0xae << 8) | nr
}

const fn kvm_ioctl_r(nr: u64, size: u64) -> u64 {
    (2 << 30) | (size << 16) | (0xae << 8) | nr
}

/// The ioctls a vCPU thread makes after setup.
fn vcpu_ioctls() -> Vec<u64> {
    use std::mem::size_of;
    vec![
        kvm_ioctl(0x80),                                                   // KVM_RUN
        kvm_ioctl_r(0x81, size_of::<kvm_bindings::kvm_regs>() as u64),     // KVM_GET_REGS
        kvm_ioctl_r(0x98, size_of::<kvm_bindings::kvm_mp_state>() as u64), // KVM_GET_MP_STATE
    ]
}

/// The filter for vCPU threads.
pub fn vcpu_filter() -> Result<BpfProgram, SeccompError> {
    build(&[COMMON], true)
}

/// The filter for the VMM (event loop) thread.
pub fn vmm_filter() -> Result<BpfProgram, SeccompError> {
    build(&[COMMON, VMM_EXTRA], false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build_and_ioctl_numbers_match_kvm() {
        assert!(!vcpu_filter().unwrap().is_empty());
        assert!(!vmm_filter().unwrap().is_empty());
        assert_eq!(kvm_ioctl(0x80), 0xae80);
        // KVM_GET_REGS = _IOR(KVMIO, 0x81, struct kvm_regs) = 0x8090ae81
        assert_eq!(
            kvm_ioctl_r(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>() as u64),
            0x8090_ae81
        );
        // KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, struct kvm_mp_state) = 0x8004ae98
        assert_eq!(kvm_ioctl_r(0x98, 4), 0x8004_ae98);
    }
}
