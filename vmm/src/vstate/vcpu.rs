//! vCPUs: configuring boot state, one thread per vCPU running `KVM_RUN`, and turning each
//! KVM exit into bus accesses or a reason to stop ([`handle_exit`], testable without KVM).
//!
//! A vCPU thread tells the VMM to stop through the shared [`ExitSignal`] (an eventfd the event
//! loop watches). Guest garbage never stops the VMM: an unknown port reads 0xff, MMIO to
//! nowhere reads 0, writes to either are dropped.
//!
//! Halt detection: with the in-kernel irqchip a `hlt` never reaches userspace, so the VMM
//! periodically kicks each vCPU thread with a signal ([`VcpuHandle::kick_for_halt_check`]);
//! the thread then records whether its vCPU is halted with interrupts off (or never started),
//! which is how "the guest halted for good" is seen.

use crate::arch::x86_64::{cpuid, lapic, msr, regs};
use crate::devices::bus::Bus;
use crate::exit::{ExitSignal, VmExit};
use crate::vstate::vm::Vm;
use kvm_bindings::{
    CpuId, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_SIMUL_EX, KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, KVM_MP_STATE_HALTED,
    KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_SIPI_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, Msrs,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU {0} failed: {1}")]
    Create(u8, kvm_ioctls::Error),
    #[error("vCPU {0}: {1}")]
    Cpuid(u8, cpuid::CpuidError),
    #[error("vCPU {0}: KVM_SET_CPUID2 failed: {1}")]
    SetCpuid(u8, kvm_ioctls::Error),
    #[error("vCPU {0}: KVM_SET_MSRS failed: {1}")]
    SetMsrs(u8, String),
    #[error("vCPU {0}: cannot set {1}: {2}")]
    SetState(u8, &'static str, kvm_ioctls::Error),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("cannot start the thread of vCPU {0}: {1}")]
    Spawn(u8, std::io::Error),
}

/// What to do after one exit.
#[derive(Debug, PartialEq, Eq)]
pub enum VcpuEmulation {
    /// Keep running.
    Handled,
    /// Stop the VM.
    Exit(VmExit),
}

/// Handles one KVM exit (other than `InternalError`, which needs the run structure).
pub fn handle_exit(exit: VcpuExit<'_>, io_bus: &Bus, mmio_bus: &Bus) -> VcpuEmulation {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !io_bus.read(port as u64, data) {
                data.fill(0xff);
            }
            VcpuEmulation::Handled
        }
        VcpuExit::IoOut(port, data) => {
            if !io_bus.write(port as u64, data) {
                tracing::trace!(port, ?data, "write to an unclaimed port");
            }
            VcpuEmulation::Handled
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio_bus.read(addr, data) {
                tracing::debug!(addr, len = data.len(), "MMIO read from nowhere");
                data.fill(0);
            }
            VcpuEmulation::Handled
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio_bus.write(addr, data) {
                tracing::debug!(addr, len = data.len(), "MMIO write to nowhere");
            }
            VcpuEmulation::Handled
        }
        VcpuExit::Shutdown => VcpuEmulation::Exit(VmExit::TripleFault),
        VcpuExit::Hlt => VcpuEmulation::Exit(VmExit::HaltedForGood),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => {
                VcpuEmulation::Exit(VmExit::SystemEvent("power off".into()))
            }
            KVM_SYSTEM_EVENT_RESET => VcpuEmulation::Exit(VmExit::SystemEvent("reset".into())),
            KVM_SYSTEM_EVENT_CRASH => {
                VcpuEmulation::Exit(VmExit::GuestCrashed("guest reported a crash".into()))
            }
            other => {
                tracing::warn!(other, "ignoring KVM system event");
                VcpuEmulation::Handled
            }
        },
        VcpuExit::FailEntry(reason, cpu) => VcpuEmulation::Exit(VmExit::GuestCrashed(format!(
            "KVM could not enter the guest (hardware entry failure reason {reason:#x}, cpu {cpu})"
        ))),
        VcpuExit::Intr | VcpuExit::IrqWindowOpen | VcpuExit::IoapicEoi(_) => VcpuEmulation::Handled,
        VcpuExit::Debug(_) | VcpuExit::Exception | VcpuExit::Nmi => VcpuEmulation::Handled,
        other => VcpuEmulation::Exit(VmExit::VmmError(format!("unexpected KVM exit: {other:?}"))),
    }
}

/// State a vCPU thread shares with the VMM.
#[derive(Default)]
pub struct VcpuShared {
    check_requested: AtomicBool,
    halted_for_good: AtomicBool,
}

/// One vCPU before it runs.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    io_bus: Bus,
    mmio_bus: Bus,
    exit: Arc<ExitSignal>,
    shared: Arc<VcpuShared>,
}

/// A running vCPU thread.
pub struct VcpuHandle {
    thread: JoinHandle<()>,
    shared: Arc<VcpuShared>,
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler of the signal that kicks vCPU threads out of `KVM_RUN`.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), noop_handler).map_err(VcpuError::Signal)
}

impl Vcpu {
    /// Creates vCPU `index` of `vm`.
    pub fn new(
        vm: &Vm,
        index: u8,
        io_bus: Bus,
        mmio_bus: Bus,
        exit: Arc<ExitSignal>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(index as u64)
            .map_err(|e| VcpuError::Create(index, e))?;
        Ok(Self {
            fd,
            index,
            io_bus,
            mmio_bus,
            exit,
            shared: Arc::default(),
        })
    }

    /// Sets CPUID, MSRs, registers, FPU and LAPIC for entering the guest in `mode`.
    pub fn configure(
        &self,
        supported: &CpuId,
        num_cpus: u8,
        mode: regs::EntryMode,
    ) -> Result<(), VcpuError> {
        let i = self.index;
        let cpuid =
            cpuid::vcpu_cpuid(supported, i, num_cpus).map_err(|e| VcpuError::Cpuid(i, e))?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::SetCpuid(i, e))?;
        let entries = msr::boot_msr_entries();
        let msrs =
            Msrs::from_entries(&entries).map_err(|e| VcpuError::SetMsrs(i, format!("{e:?}")))?;
        let written = self
            .fd
            .set_msrs(&msrs)
            .map_err(|e| VcpuError::SetMsrs(i, e.to_string()))?;
        if written != entries.len() {
            // Hosts differ in which MSRs they let a VMM set (nested/software KVM especially);
            // an MSR the host refuses keeps its reset value, which Linux copes with.
            tracing::debug!(
                vcpu = i,
                written,
                wanted = entries.len(),
                "KVM accepted only some boot MSRs"
            );
        }
        let sregs = self
            .fd
            .get_sregs()
            .map_err(|e| VcpuError::SetState(i, "sregs", e))?;
        self.fd
            .set_sregs(&regs::boot_sregs(&sregs, mode))
            .map_err(|e| VcpuError::SetState(i, "sregs", e))?;
        self.fd
            .set_regs(&regs::boot_regs(mode))
            .map_err(|e| VcpuError::SetState(i, "regs", e))?;
        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(|e| VcpuError::SetState(i, "fpu", e))?;
        let l = self
            .fd
            .get_lapic()
            .map_err(|e| VcpuError::SetState(i, "lapic", e))?;
        self.fd
            .set_lapic(&lapic::boot_lapic(l))
            .map_err(|e| VcpuError::SetState(i, "lapic", e))?;
        Ok(())
    }

    /// Starts the vCPU's thread; it installs `filter` (seccomp) on itself before running.
    pub fn start(
        self,
        filter: Option<Arc<seccompiler::BpfProgram>>,
    ) -> Result<VcpuHandle, VcpuError> {
        let index = self.index;
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kumo-vcpu{index}"))
            .spawn(move || self.run(filter))
            .map_err(|e| VcpuError::Spawn(index, e))?;
        Ok(VcpuHandle { thread, shared })
    }

    fn run(mut self, filter: Option<Arc<seccompiler::BpfProgram>>) {
        if let Some(f) = filter
            && let Err(e) = seccompiler::apply_filter(&f)
        {
            self.exit.signal(VmExit::VmmError(format!(
                "vCPU {}: cannot install seccomp filter: {e}",
                self.index
            )));
            return;
        }
        loop {
            let outcome = match self.fd.run() {
                Ok(VcpuExit::InternalError) => None,
                Ok(exit) => Some(handle_exit(exit, &self.io_bus, &self.mmio_bus)),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    Some(VcpuEmulation::Handled)
                }
                Err(e) => Some(VcpuEmulation::Exit(VmExit::VmmError(format!(
                    "vCPU {}: KVM_RUN failed: {e}",
                    self.index
                )))),
            };
            let outcome = outcome.unwrap_or_else(|| {
                VcpuEmulation::Exit(VmExit::GuestCrashed(self.internal_error()))
            });
            if let VcpuEmulation::Exit(reason) = outcome {
                self.exit.signal(reason);
                return;
            }
            if self.shared.check_requested.swap(false, Ordering::AcqRel) {
                self.shared
                    .halted_for_good
                    .store(self.is_halted_for_good(), Ordering::Release);
            }
        }
    }

    /// Halted with interrupts off, or never started (waiting for INIT/SIPI).
    fn is_halted_for_good(&self) -> bool {
        let Ok(mp) = self.fd.get_mp_state() else {
            return false;
        };
        match mp.mp_state {
            KVM_MP_STATE_UNINITIALIZED
            | KVM_MP_STATE_INIT_RECEIVED
            | KVM_MP_STATE_SIPI_RECEIVED => true,
            KVM_MP_STATE_HALTED => self
                .fd
                .get_regs()
                .map(|r| r.rflags & (1 << 9) == 0)
                .unwrap_or(false),
            _ => false,
        }
    }

    fn internal_error(&mut self) -> String {
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the `internal` member of the union for KVM_EXIT_INTERNAL_ERROR.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let what = match internal.suberror {
            KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
            KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
            KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
            KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
            _ => "unknown",
        };
        format!(
            "KVM internal error on vCPU {} at rip {rip:#x}: {what} (suberror {})",
            self.index, internal.suberror
        )
    }
}

impl VcpuHandle {
    /// Asks the thread to check whether its vCPU halted for good, and kicks it out of KVM_RUN.
    pub fn kick_for_halt_check(&self) {
        self.shared.check_requested.store(true, Ordering::Release);
        let _ = self.thread.kill(kick_signal());
    }

    /// What the last check found.
    pub fn halted_for_good(&self) -> bool {
        self.shared.halted_for_good.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use std::sync::Mutex;

    struct Echo(Vec<u8>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    #[test]
    fn unknown_ports_and_mmio_never_fail() {
        let (io, mmio) = (Bus::new(), Bus::new());
        let mut b = [0u8; 4];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x1234, &mut b), &io, &mmio),
            VcpuEmulation::Handled
        );
        assert_eq!(b, [0xff; 4]);
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x80, &[1]), &io, &mmio),
            VcpuEmulation::Handled
        );
        let mut b = [7u8; 8];
        assert_eq!(
            handle_exit(VcpuExit::MmioRead(0xdead_0000, &mut b), &io, &mmio),
            VcpuEmulation::Handled
        );
        assert_eq!(b, [0; 8]);
        assert_eq!(
            handle_exit(VcpuExit::MmioWrite(u64::MAX - 3, &[1, 2, 3, 4]), &io, &mmio),
            VcpuEmulation::Handled
        );
    }

    #[test]
    fn routes_to_devices() {
        let (mut io, mmio) = (Bus::new(), Bus::new());
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        io.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        handle_exit(VcpuExit::IoIn(0x3fa, &mut b), &io, &mmio);
        assert_eq!(b, [3]);
        handle_exit(VcpuExit::IoOut(0x3f8, b"h"), &io, &mmio);
        assert_eq!(dev.lock().unwrap().0, b"h");
    }

    #[test]
    fn stop_reasons() {
        let (io, mmio) = (Bus::new(), Bus::new());
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &io, &mmio),
            VcpuEmulation::Exit(VmExit::TripleFault)
        );
        assert!(matches!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &io,
                &mmio
            ),
            VcpuEmulation::Exit(VmExit::SystemEvent(_))
        ));
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(7, 0), &io, &mmio),
            VcpuEmulation::Exit(VmExit::GuestCrashed(_))
        ));
        assert_eq!(
            handle_exit(VcpuExit::Intr, &io, &mmio),
            VcpuEmulation::Handled
        );
    }
}
