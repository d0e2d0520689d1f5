//! The switch thread: moves frames between the ports' AF_PACKET sockets and the [`Switch`].
//!
//! One thread waits on every port socket with epoll, drains ready sockets in `recvmmsg` batches,
//! decides each frame under the switch lock, and sends the batch's forwarded frames per
//! destination port with `sendmmsg` straight from the receive buffers (no copy; GSO packets stay
//! whole). Frames the switch generates (ARP, DHCP, DNS, metadata) go out after each batch.
//! Timers ([`Switch::poll`]) run between batches. The control plane changes the model and ports
//! through [`SwitchRuntime`] while the thread runs; a change applies to the next batch.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::PortId;
use crate::counters::DropReason;
use crate::packet::VnetHdr;
use crate::switch::{PortRole, Switch, Verdict};
use crate::sys::{PacketSocket, RxBatch, SysError, netdev};

/// Frames per `recvmmsg`.
const BATCH: usize = 32;
/// Batches drained from one socket before looking at the others (fairness under floods).
const MAX_BATCHES_PER_WAKE: usize = 8;
const WAKE_TOKEN: u64 = u64::MAX;
/// How long the thread keeps polling without sleeping after it last saw a frame.
const BUSY_POLL: std::time::Duration = std::time::Duration::from_micros(50);

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("port {0} is already attached")]
    PortInUse(PortId),
    #[error("the switch thread has stopped")]
    Stopped,
}

struct Shared {
    switch: Mutex<Switch>,
    sockets: Mutex<HashMap<PortId, Arc<PacketSocket>>>,
    changed: AtomicBool,
    stop: AtomicBool,
    wake: OwnedFd,
}

impl Shared {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe {
            libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }
}

/// A running switch.
pub struct SwitchRuntime {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SwitchRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchRuntime").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock would be a bug; keep serving rather than cascade.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SwitchRuntime {
    /// Starts the switch thread.
    pub fn start(switch: Switch) -> Result<SwitchRuntime, RuntimeError> {
        // SAFETY: plain eventfd(2) call; checked below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(RuntimeError::Io("eventfd", std::io::Error::last_os_error()));
        }
        // SAFETY: efd is a fresh descriptor nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(efd) };
        let shared = Arc::new(Shared {
            switch: Mutex::new(switch),
            sockets: Mutex::new(HashMap::new()),
            changed: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            wake,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kumo-switch".into())
            .spawn(move || {
                if let Err(e) = run(&s) {
                    tracing::error!("switch thread stopped: {e}");
                }
            })
            .map_err(|e| RuntimeError::Io("spawning the switch thread", e))?;
        Ok(SwitchRuntime {
            shared,
            thread: Some(thread),
        })
    }

    /// Attaches `netdev` as `port` (ENI or gateway). The ENI must already be in the model with
    /// this port. Prepares the netdev (no address, IPv6 off, up) and opens its socket.
    pub fn attach(
        &self,
        port: PortId,
        netdev_name: &str,
        role: PortRole,
    ) -> Result<(), RuntimeError> {
        if lock(&self.shared.sockets).contains_key(&port) {
            return Err(RuntimeError::PortInUse(port));
        }
        netdev::prepare_port(netdev_name)?;
        let sock = PacketSocket::open(netdev_name)?;
        {
            let mut sw = lock(&self.shared.switch);
            let is_gw = role == PortRole::Gateway;
            sw.add_port(port, role);
            if is_gw {
                sw.probe_gateway_host();
            }
        }
        lock(&self.shared.sockets).insert(port, Arc::new(sock));
        self.shared.changed.store(true, Ordering::SeqCst);
        self.shared.wake();
        tracing::info!(%port, netdev = netdev_name, "port attached");
        Ok(())
    }

    /// Detaches a port.
    pub fn detach(&self, port: PortId) {
        lock(&self.shared.sockets).remove(&port);
        lock(&self.shared.switch).remove_port(port);
        self.shared.changed.store(true, Ordering::SeqCst);
        self.shared.wake();
    }

    /// Runs `f` with the switch locked (model changes, counters, flow logs).
    pub fn with_switch<R>(&self, f: impl FnOnce(&mut Switch) -> R) -> R {
        let r = f(&mut lock(&self.shared.switch));
        self.shared.wake();
        r
    }

    /// Whether the switch thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread and flushes the flow log.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        lock(&self.shared.switch).flush_flow_log();
    }
}

impl Drop for SwitchRuntime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> Result<Epoll, RuntimeError> {
        // SAFETY: plain epoll_create1(2); checked below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(RuntimeError::Io(
                "epoll_create1",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fresh descriptor nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: i32, token: u64) {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is valid for the call; errors (e.g. a closed fd) are harmless here.
        unsafe {
            libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev);
        }
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        // SAFETY: `events` is a valid writable buffer of the given length.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        n.max(0) as usize
    }
}

fn run(shared: &Shared) -> Result<(), RuntimeError> {
    let epoll = Epoll::new()?;
    epoll.ctl(libc::EPOLL_CTL_ADD, shared.wake.as_raw_fd(), WAKE_TOKEN);
    let mut registered: HashMap<PortId, Arc<PacketSocket>> = HashMap::new();
    let mut batch = RxBatch::new(BATCH);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut generated_msgs: Vec<Vec<u8>> = Vec::new();
    let mut busy_until = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.changed.swap(false, Ordering::SeqCst) {
            let current = lock(&shared.sockets).clone();
            for (port, sock) in &registered {
                if current.get(port).is_none_or(|s| !Arc::ptr_eq(s, sock)) {
                    epoll.ctl(libc::EPOLL_CTL_DEL, sock.as_raw_fd(), 0);
                }
            }
            for (port, sock) in &current {
                if registered.get(port).is_none_or(|s| !Arc::ptr_eq(s, sock)) {
                    epoll.ctl(libc::EPOLL_CTL_ADD, sock.as_raw_fd(), u64::from(port.0));
                }
            }
            registered = current;
        }
        let now = Instant::now();
        let deadline = lock(&shared.switch).poll_at(now);
        // Right after traffic, poll without sleeping for a short while: the next frame of a
        // busy flow usually arrives within microseconds, and a sleep/wake-up costs more.
        let timeout = if now < busy_until {
            0
        } else {
            deadline
                .saturating_duration_since(now)
                .as_millis()
                .min(1000) as i32
        };
        let n = epoll.wait(&mut events, timeout);
        if n > 0 {
            busy_until = Instant::now() + BUSY_POLL;
        }
        for ev in events.iter().take(n) {
            let token = ev.u64;
            if token == WAKE_TOKEN {
                let mut v = 0u64;
                // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
                unsafe {
                    libc::read(shared.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
                }
                continue;
            }
            let port = PortId(token as u32);
            let Some(sock) = registered.get(&port).cloned() else {
                continue;
            };
            for _ in 0..MAX_BATCHES_PER_WAKE {
                let got = match sock.recv_batch(&mut batch) {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!(%port, netdev = sock.netdev(), "receive failed: {e}");
                        0
                    }
                };
                if got == 0 {
                    break;
                }
                process_batch(shared, &registered, port, &mut batch, &mut generated_msgs);
                if got < batch.capacity() {
                    break;
                }
            }
        }
        // Timers.
        let generated = {
            let mut sw = lock(&shared.switch);
            sw.poll(Instant::now());
            sw.take_generated()
        };
        send_generated(shared, &registered, generated, &mut generated_msgs);
    }
    Ok(())
}

fn process_batch(
    shared: &Shared,
    sockets: &HashMap<PortId, Arc<PacketSocket>>,
    in_port: PortId,
    batch: &mut RxBatch,
    scratch: &mut Vec<Vec<u8>>,
) {
    let now = Instant::now();
    let mut forwards: Vec<(PortId, usize)> = Vec::with_capacity(batch.len());
    let generated = {
        let mut sw = lock(&shared.switch);
        for i in 0..batch.len() {
            if batch.truncated(i) {
                sw.counters_mut().drop(DropReason::Truncated);
                continue;
            }
            let msg = batch.message_mut(i);
            let Some(vnet) = VnetHdr::from_bytes(msg) else {
                sw.counters_mut().drop(DropReason::Truncated);
                continue;
            };
            let frame = &mut msg[VnetHdr::LEN..];
            match sw.handle_frame(now, in_port, &vnet, frame) {
                Verdict::Forward(port, _) => forwards.push((port, i)),
                Verdict::Consumed => {}
            }
        }
        sw.take_generated()
    };
    // Group forwards by destination port, keeping order within each.
    forwards.sort_by_key(|(p, _)| *p);
    let mut start = 0;
    while start < forwards.len() {
        let port = forwards[start].0;
        let end = forwards[start..]
            .iter()
            .position(|(p, _)| *p != port)
            .map_or(forwards.len(), |o| start + o);
        if let Some(sock) = sockets.get(&port) {
            let msgs: Vec<&[u8]> = forwards[start..end]
                .iter()
                .map(|(_, i)| batch.message(*i))
                .collect();
            let failed = sock.send_batch(&msgs);
            if failed > 0 {
                let mut sw = lock(&shared.switch);
                for _ in 0..failed {
                    sw.counters_mut().drop(DropReason::TxFailed);
                }
            }
        }
        start = end;
    }
    send_generated(shared, sockets, generated, scratch);
}

fn send_generated(
    shared: &Shared,
    sockets: &HashMap<PortId, Arc<PacketSocket>>,
    generated: Vec<(PortId, Vec<u8>)>,
    scratch: &mut Vec<Vec<u8>>,
) {
    if generated.is_empty() {
        return;
    }
    let mut failed = 0;
    for (port, frame) in generated {
        let Some(sock) = sockets.get(&port) else {
            continue;
        };
        scratch.clear();
        let mut m = Vec::with_capacity(VnetHdr::LEN + frame.len());
        m.extend_from_slice(&VnetHdr::default().to_bytes());
        m.extend_from_slice(&frame);
        scratch.push(m);
        let msgs: Vec<&[u8]> = scratch.iter().map(|v| v.as_slice()).collect();
        failed += sock.send_batch(&msgs);
    }
    if failed > 0 {
        let mut sw = lock(&shared.switch);
        for _ in 0..failed {
            sw.counters_mut().drop(DropReason::TxFailed);
        }
    }
}
