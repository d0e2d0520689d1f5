//! Why the VM stops, and how whoever notices (a vCPU thread, the i8042, the API socket) tells
//! the VMM's event loop: the first recorded reason wins, and an eventfd wakes the loop.

use std::sync::Mutex;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine through the i8042 (port 0x64, command 0xfe).
    ResetI8042,
    /// The guest triple-faulted (a reset on real hardware; KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM reported a system event: power off or reset (PSCI-like, rare on x86).
    SystemEvent(String),
    /// Every vCPU halted with interrupts disabled: nothing can ever run again.
    HaltedForGood,
    /// An API client asked for a stop (graceful shutdown timed out, or force stop).
    Stopped(String),
    /// The guest did something KVM could not run (emulation failure, entry failure).
    GuestCrashed(String),
    /// A VMM-side failure while the VM ran.
    VmmError(String),
}

impl VmExit {
    /// The process exit status for this reason (see the crate docs' table).
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::ResetI8042
            | VmExit::TripleFault
            | VmExit::SystemEvent(_)
            | VmExit::HaltedForGood
            | VmExit::Stopped(_) => 0,
            VmExit::VmmError(_) => 1,
            VmExit::GuestCrashed(_) => 3,
        }
    }

    /// One line describing the reason.
    pub fn describe(&self) -> String {
        match self {
            VmExit::ResetI8042 => "guest reset through the i8042".into(),
            VmExit::TripleFault => "guest triple-faulted (reset)".into(),
            VmExit::SystemEvent(s) => format!("guest system event: {s}"),
            VmExit::HaltedForGood => "guest halted with interrupts disabled on every vCPU".into(),
            VmExit::Stopped(s) => format!("stopped: {s}"),
            VmExit::GuestCrashed(s) => format!("guest crashed: {s}"),
            VmExit::VmmError(s) => format!("VMM error: {s}"),
        }
    }
}

/// Shared "the VM must stop" signal.
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<VmExit>>,
}

impl ExitSignal {
    /// A new signal with a non-blocking eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    /// Records `reason` (unless one is already recorded) and wakes the event loop.
    pub fn signal(&self, reason: VmExit) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        // A full counter only means the loop has not read it yet: it is awake anyway.
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<VmExit> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The eventfd the event loop watches.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// A `vm_superio::Trigger` that ends the VM with a fixed reason (the i8042's reset line).
pub struct ExitTrigger {
    signal: std::sync::Arc<ExitSignal>,
    reason: VmExit,
}

impl ExitTrigger {
    /// A trigger that signals `reason`.
    pub fn new(signal: std::sync::Arc<ExitSignal>, reason: VmExit) -> Self {
        Self { signal, reason }
    }
}

impl vm_superio::Trigger for ExitTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.signal.signal(self.reason.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_codes() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.reason(), None);
        s.signal(VmExit::ResetI8042);
        s.signal(VmExit::VmmError("late".into()));
        assert_eq!(s.reason(), Some(VmExit::ResetI8042));
        assert_eq!(s.eventfd().read().unwrap(), 2);
        assert_eq!(VmExit::ResetI8042.exit_code(), 0);
        assert_eq!(VmExit::VmmError("x".into()).exit_code(), 1);
        assert_eq!(VmExit::GuestCrashed("x".into()).exit_code(), 3);
    }
}
