//! A TAP network device opened through `/dev/net/tun`, the host end of a virtio-net device.
//!
//! The TAP is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a vnet header size of 12
//! bytes (`struct virtio_net_hdr_v1`), so every frame read from or written to it starts with the
//! same header the guest's virtio-net driver uses: the device passes it through unchanged.
//!
//! The TAP must already exist (kumo's daemon creates it and plugs it into the VPC switch; by
//! hand: `ip tuntap add NAME mode tap`): attaching to a name that does not exist would create a
//! TAP nobody listens on, so [`Tap::open`] refuses.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::raw::{c_char, c_int, c_short, c_uint};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vmm_sys_util::ioctl::{ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::ioctl_iow_nr;

/// Bytes of the vnet header in front of every frame (`struct virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;

const TUNTAP: c_uint = b'T' as c_uint;
ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, c_int);
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, c_int);

/// `struct ifreq` with the `ifr_flags` member of its union (40 bytes on x86_64).
#[repr(C)]
struct IfReqFlags {
    name: [c_char; libc::IFNAMSIZ],
    flags: c_short,
    _pad: [u8; 22],
}

/// Why a TAP could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid TAP device name {0:?}: use 1-15 characters without '/', whitespace or ':'")]
    InvalidName(String),
    #[error(
        "TAP device {0} does not exist: create it first (ip tuntap add {0} mode tap), or let kumo create it"
    )]
    NotFound(String),
    #[error(
        "cannot open /dev/net/tun: {0} (is the tun module loaded, and are we root or CAP_NET_ADMIN?)"
    )]
    OpenTun(#[source] std::io::Error),
    #[error(
        "cannot attach to TAP device {name}: {source} (is it a TAP, not a TUN, and not in use?)"
    )]
    Attach {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the vnet header size on TAP device {name}: {source}")]
    VnetHeader {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set offloads {flags:#x} on TAP device {name}: {source}")]
    Offload {
        name: String,
        flags: u32,
        #[source]
        source: std::io::Error,
    },
}

/// An open TAP device (non-blocking, close-on-exec).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

impl Tap {
    /// Attaches to the existing TAP device `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::InvalidName(name.to_string()));
        }
        if !Path::new("/sys/class/net").join(name).exists() {
            return Err(TapError::NotFound(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut request = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as c_short,
            _pad: [0; 22],
        };
        for (dst, src) in request.name.iter_mut().zip(name.bytes()) {
            *dst = src as c_char;
        }
        // SAFETY: TUNSETIFF reads a `struct ifreq`; `request` is a valid, initialised
        // repr(C) struct of that size that outlives the call.
        let ret = unsafe { ioctl_with_ref(&file, TUNSETIFF(), &request) };
        if ret < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let header_len = VNET_HDR_LEN as c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer; `header_len` outlives the call.
        let ret = unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ(), &header_len) };
        if ret < 0 {
            return Err(TapError::VnetHeader {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The TAP's interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloads the guest accepts on frames it receives
    /// (`TUN_F_CSUM`, `TUN_F_TSO4`, ...).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
        let ret = unsafe { ioctl_with_val(&self.file, TUNSETOFFLOAD(), flags.into()) };
        if ret < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads one frame (vnet header first) without blocking.
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (vnet header first).
    pub fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
    }

    #[test]
    fn rejects_bad_names_before_touching_the_kernel() {
        for name in ["", "a/b", "0123456789abcdef", "tap 0", "..", "a:b"] {
            assert!(
                matches!(Tap::open(name), Err(TapError::InvalidName(_))),
                "{name:?}"
            );
        }
        assert!(matches!(
            Tap::open("kumo-nonexist0"),
            Err(TapError::NotFound(_))
        ));
    }
}
