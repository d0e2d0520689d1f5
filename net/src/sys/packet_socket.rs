//! An AF_PACKET socket bound to one netdev, with virtio-net headers (PACKET_VNET_HDR) so that
//! checksum-offloaded and segmentation-offloaded (GSO) packets arrive and leave whole, and batched
//! I/O with `recvmmsg`/`sendmmsg`.
//!
//! The socket ignores frames the host itself transmits on the netdev (PACKET_IGNORE_OUTGOING),
//! so it sees exactly what the guest (TAP) or the namespace (veth peer) sends, and what it sends
//! goes to them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::SysError;
use super::netdev;
use crate::packet::VnetHdr;

const ETH_P_ALL: u16 = 0x0003;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_QDISC_BYPASS: libc::c_int = 20;

/// Room for one frame: virtio-net header + the largest GSO packet (64 KiB IP + Ethernet/VLAN).
pub const FRAME_BUF: usize = VnetHdr::LEN + 65_536 + 64;

/// An AF_PACKET socket on one netdev.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    netdev: String,
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `val` is a valid c_int that lives for the call; the size matches.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl PacketSocket {
    /// Opens a non-blocking socket on `netdev` (after [`netdev::prepare_port`]).
    pub fn open(netdev: &str) -> Result<PacketSocket, SysError> {
        let err = |what: &'static str| {
            let source = io::Error::last_os_error();
            SysError::Socket {
                what,
                netdev: netdev.to_string(),
                source,
            }
        };
        let ifindex = netdev::ifindex(netdev)?;
        // Protocol 0: receive nothing until bound to the netdev below, so no frame of another
        // netdev (or without a virtio-net header) is ever queued.
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(err("socket(AF_PACKET)"));
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        let opt_err = |what: &'static str, source: io::Error| SysError::Socket {
            what,
            netdev: netdev.to_string(),
            source,
        };
        setsockopt_int(raw, libc::SOL_PACKET, PACKET_VNET_HDR, 1)
            .map_err(|e| opt_err("PACKET_VNET_HDR", e))?;
        setsockopt_int(raw, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            .map_err(|e| opt_err("PACKET_IGNORE_OUTGOING", e))?;
        // Frames go straight to the driver (a TAP or veth has no queue worth keeping).
        let _ = setsockopt_int(raw, libc::SOL_PACKET, PACKET_QDISC_BYPASS, 1);
        // Big buffers absorb bursts between two runs of the switch thread.
        let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
        let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20);
        // SAFETY: sockaddr_ll is a plain C struct; all-zero is valid before we fill it.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: `sll` is a valid sockaddr_ll and the length matches it.
        let r = unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(err("bind"));
        }
        // Promiscuous membership: frames for any MAC on this netdev reach us.
        // SAFETY: packet_mreq is a plain C struct; all-zero is valid before we fill it.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = ifindex;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        // SAFETY: `mreq` is valid for the call and the size matches.
        let r = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&mreq as *const libc::packet_mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(err("PACKET_ADD_MEMBERSHIP"));
        }
        Ok(PacketSocket {
            fd,
            netdev: netdev.to_string(),
        })
    }

    pub fn netdev(&self) -> &str {
        &self.netdev
    }

    /// Receives up to `batch.capacity()` frames without blocking; returns how many.
    pub fn recv_batch(&self, batch: &mut RxBatch) -> io::Result<usize> {
        let n = batch.slots;
        let base = batch.buf.as_mut_ptr();
        for i in 0..n {
            // SAFETY: slot i starts inside `batch.buf`, which holds n * FRAME_BUF bytes.
            let slot = unsafe { base.add(i * FRAME_BUF) };
            batch.iov[i] = libc::iovec {
                iov_base: slot.cast(),
                iov_len: FRAME_BUF,
            };
        }
        for i in 0..n {
            // SAFETY: mmsghdr is a plain C struct; all-zero is valid before we fill it.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = &mut batch.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            batch.hdrs[i] = h;
        }
        // SAFETY: every header points at an iovec in `batch.iov` describing memory in
        // `batch.buf`; all stay alive and unaliased for the duration of the call.
        let r = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                batch.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                batch.len = 0;
                return Ok(0);
            }
            return Err(e);
        }
        let got = r as usize;
        for i in 0..got {
            batch.lens[i] = batch.hdrs[i].msg_len as usize;
            batch.truncated[i] =
                batch.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || batch.lens[i] > FRAME_BUF;
        }
        batch.len = got;
        Ok(got)
    }

    /// Sends frames (each: virtio-net header followed by the Ethernet frame, contiguous).
    /// Returns how many the kernel refused (buffer full, netdev down, too big).
    pub fn send_batch(&self, msgs: &[&[u8]]) -> usize {
        let mut sent = 0;
        let mut failed = 0;
        while sent < msgs.len() {
            let chunk = &msgs[sent..msgs.len().min(sent + 64)];
            let mut iov: Vec<libc::iovec> = chunk
                .iter()
                .map(|m| libc::iovec {
                    iov_base: m.as_ptr() as *mut libc::c_void,
                    iov_len: m.len(),
                })
                .collect();
            let mut hdrs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .map(|v| {
                    // SAFETY: mmsghdr is a plain C struct; all-zero is valid before we fill it.
                    let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    h.msg_hdr.msg_iov = v;
                    h.msg_hdr.msg_iovlen = 1;
                    h
                })
                .collect();
            // SAFETY: each header points at one iovec describing a live slice from `msgs`; the
            // kernel only reads them. The vectors outlive the call.
            let r = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    hdrs.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                let e = io::Error::last_os_error();
                if r < 0 && e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if r < 0 && e.kind() == io::ErrorKind::WouldBlock {
                    // Wait briefly for room rather than dropping a burst outright.
                    let mut pfd = libc::pollfd {
                        fd: self.fd.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the call.
                    let ready = unsafe { libc::poll(&mut pfd, 1, 5) };
                    if ready > 0 {
                        continue;
                    }
                }
                // Skip the frame the kernel refused (e.g. too big for the netdev) and go on.
                tracing::debug!(netdev = %self.netdev, error = %e, "send failed");
                sent += 1;
                failed += 1;
                continue;
            }
            sent += r as usize;
        }
        failed
    }
}

/// Receive buffers for one `recvmmsg` call.
pub struct RxBatch {
    buf: Vec<u8>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    slots: usize,
    len: usize,
}

impl std::fmt::Debug for RxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBatch")
            .field("slots", &self.slots)
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: the raw pointers inside `iov`/`hdrs` only ever point into `buf`, owned by the same
// struct; they are rewritten before every use, so moving the batch to another thread is sound.
unsafe impl Send for RxBatch {}

impl RxBatch {
    pub fn new(slots: usize) -> RxBatch {
        RxBatch {
            buf: vec![0u8; slots * FRAME_BUF],
            iov: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                slots
            ],
            // SAFETY: mmsghdr is a plain C struct; all-zero is a valid value.
            hdrs: vec![unsafe { std::mem::zeroed() }; slots],
            lens: vec![0; slots],
            truncated: vec![false; slots],
            slots,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether message `i` was cut short (bigger than the buffer).
    pub fn truncated(&self, i: usize) -> bool {
        self.truncated[i]
    }

    /// Message `i`: virtio-net header plus frame, mutable for in-place rewriting.
    pub fn message_mut(&mut self, i: usize) -> &mut [u8] {
        let len = self.lens[i].min(FRAME_BUF);
        &mut self.buf[i * FRAME_BUF..i * FRAME_BUF + len]
    }

    pub fn message(&self, i: usize) -> &[u8] {
        let len = self.lens[i].min(FRAME_BUF);
        &self.buf[i * FRAME_BUF..i * FRAME_BUF + len]
    }
}
