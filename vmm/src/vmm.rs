//! A built micro-VM and its event loop: starts the vCPU threads, installs the seccomp filters,
//! then serves devices, the console, the API socket and the exit signal until the VM stops.

use crate::api_socket::{ApiServer, Request};
use crate::config::VmConfig;
use crate::devices::legacy::{I8042, SerialDevice};
use crate::exit::{ExitSignal, ExitTrigger, VmExit};
use crate::seccomp;
use crate::vstate::kvm::KvmContext;
use crate::vstate::vcpu::{self, Vcpu, VcpuHandle};
use crate::vstate::vm::Vm;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::signal::register_signal_handler;

/// The exit eventfd a termination signal writes (set once, before any handler is installed).
static TERM_EVENTFD: AtomicI32 = AtomicI32::new(-1);
/// The termination signal received, or 0.
static TERM_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_terminate(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TERM_SIGNAL.store(sig, Ordering::SeqCst);
    let fd = TERM_EVENTFD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` outlives the call and `fd` is the
        // exit eventfd, which lives as long as the process runs the VM.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// SIGTERM, SIGINT and SIGHUP stop the VM cleanly (exit status 0, reason on stderr).
fn install_termination_handlers(exit: &ExitSignal) -> Result<(), String> {
    TERM_EVENTFD.store(exit.eventfd().as_raw_fd(), Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        register_signal_handler(sig, on_terminate)
            .map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    Ok(())
}

fn termination_reason() -> Option<VmExit> {
    let name = match TERM_SIGNAL.load(Ordering::SeqCst) {
        0 => return None,
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    };
    Some(VmExit::Stopped(format!("received {name}")))
}

/// What the event loop holds.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// How often the VMM checks whether every vCPU halted for good.
pub const HALT_CHECK_PERIOD: Duration = Duration::from_millis(100);

/// Wakes the loop when the exit signal fires (the loop then reads the reason).
struct ExitWaker(Arc<ExitSignal>);

impl MutEventSubscriber for ExitWaker {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.eventfd().read();
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.eventfd(), EventSet::IN)) {
            tracing::error!("cannot watch the exit signal: {e:?}");
        }
    }
}

#[derive(Default)]
struct ShutdownState {
    requested: bool,
    deadline: Option<Instant>,
}

/// A micro-VM, built and not yet running.
pub struct Vmm {
    config: VmConfig,
    // Kept alive for the VM's lifetime: KVM handles and the memory KVM maps.
    _kvm: KvmContext,
    _vm: Vm,
    _guest_memory: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    event_manager: EventManager<Subscriber>,
    exit: Arc<ExitSignal>,
    i8042: Arc<Mutex<I8042<ExitTrigger>>>,
    _serial: Arc<Mutex<SerialDevice>>,
    api: Option<ApiServer>,
    shutdown: Arc<Mutex<ShutdownState>>,
}

impl Vmm {
    /// Assembles the parts the builder made.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: VmConfig,
        kvm: KvmContext,
        vm: Vm,
        guest_memory: GuestMemoryMmap,
        vcpus: Vec<Vcpu>,
        event_manager: EventManager<Subscriber>,
        exit: Arc<ExitSignal>,
        i8042: Arc<Mutex<I8042<ExitTrigger>>>,
        serial: Arc<Mutex<SerialDevice>>,
        api: Option<ApiServer>,
    ) -> Self {
        Self {
            config,
            _kvm: kvm,
            _vm: vm,
            _guest_memory: guest_memory,
            vcpus,
            event_manager,
            exit,
            i8042,
            _serial: serial,
            api,
            shutdown: Arc::default(),
        }
    }

    fn api_handler(&self) -> crate::api_socket::Handler {
        let (exit, i8042, shutdown) =
            (self.exit.clone(), self.i8042.clone(), self.shutdown.clone());
        let (vcpus, memory_mib) = (self.config.vcpus, self.config.memory_mib);
        let started = Instant::now();
        Box::new(move |req| {
            let mut sd = shutdown.lock().unwrap_or_else(|e| e.into_inner());
            match req {
                Request::Status => serde_json::json!({
                    "ok": true,
                    "state": if sd.requested { "shutting-down" } else { "running" },
                    "pid": std::process::id(),
                    "vcpus": vcpus,
                    "memory_mib": memory_mib,
                    "uptime_ms": started.elapsed().as_millis() as u64,
                }),
                Request::Shutdown { timeout_ms } => {
                    sd.requested = true;
                    if let Some(ms) = timeout_ms {
                        let d = Instant::now() + Duration::from_millis(ms);
                        sd.deadline = Some(sd.deadline.map_or(d, |old| old.min(d)));
                    }
                    if !i8042
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .press_ctrl_alt_del()
                    {
                        tracing::warn!("i8042 buffer full: Ctrl-Alt-Del not delivered");
                    }
                    serde_json::json!({"ok": true, "state": "shutting-down"})
                }
                Request::Stop => {
                    exit.signal(VmExit::Stopped(
                        "stop requested through the API socket".into(),
                    ));
                    serde_json::json!({"ok": true, "state": "stopping"})
                }
            }
        })
    }

    /// Runs the VM until it stops; returns why. The seccomp filters are installed on every
    /// thread once setup is done (`seccomp = false` skips them, for debugging).
    pub fn run(mut self, use_seccomp: bool) -> VmExit {
        self.event_manager
            .add_subscriber(Arc::new(Mutex::new(ExitWaker(self.exit.clone()))));
        let mut api_path = None;
        if let Some(mut api) = self.api.take() {
            api.set_handler(self.api_handler());
            api_path = Some(api.path().to_path_buf());
            self.event_manager.add_subscriber(Arc::new(Mutex::new(api)));
        }
        let reason = self.run_loop(use_seccomp);
        if let Some(p) = api_path {
            let _ = std::fs::remove_file(p);
        }
        reason
    }

    fn run_loop(&mut self, use_seccomp: bool) -> VmExit {
        if let Err(e) = vcpu::install_kick_handler() {
            return VmExit::VmmError(e.to_string());
        }
        if let Err(e) = install_termination_handlers(&self.exit) {
            return VmExit::VmmError(e);
        }
        let filters = if use_seccomp {
            match (seccomp::vcpu_filter(), seccomp::vmm_filter()) {
                (Ok(v), Ok(m)) => Some((Arc::new(v), m)),
                (Err(e), _) | (_, Err(e)) => return VmExit::VmmError(format!("seccomp: {e}")),
            }
        } else {
            None
        };
        let mut handles: Vec<VcpuHandle> = Vec::with_capacity(self.vcpus.len());
        for v in self.vcpus.drain(..) {
            match v.start(filters.as_ref().map(|f| f.0.clone())) {
                Ok(h) => handles.push(h),
                Err(e) => return VmExit::VmmError(e.to_string()),
            }
        }
        if let Some((_, vmm_filter)) = &filters
            && let Err(e) = seccompiler::apply_filter(vmm_filter)
        {
            return VmExit::VmmError(format!("cannot install the VMM seccomp filter: {e}"));
        }

        let mut next_check = Instant::now() + HALT_CHECK_PERIOD;
        let mut all_halted_before = false;
        loop {
            if let Some(reason) = self.exit.reason().or_else(termination_reason) {
                return reason;
            }
            let now = Instant::now();
            let wait = next_check
                .saturating_duration_since(now)
                .as_millis()
                .min(1000) as i32;
            if let Err(e) = self.event_manager.run_with_timeout(wait.max(1)) {
                return VmExit::VmmError(format!("event loop failed: {e:?}"));
            }
            if let Some(reason) = self.exit.reason().or_else(termination_reason) {
                return reason;
            }
            let now = Instant::now();
            if let Some(deadline) = self
                .shutdown
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .deadline
                && now >= deadline
            {
                return VmExit::Stopped("the guest did not shut down in time; stopped".into());
            }
            if now >= next_check {
                next_check = now + HALT_CHECK_PERIOD;
                // Two consecutive checks must agree before the VM is declared halted.
                let all_halted = handles.iter().all(|h| h.halted_for_good());
                if all_halted && all_halted_before {
                    return VmExit::HaltedForGood;
                }
                all_halted_before = all_halted;
                for h in &handles {
                    h.kick_for_halt_check();
                }
            }
        }
    }
}
