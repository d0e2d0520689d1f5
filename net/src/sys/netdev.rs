//! Netdev plumbing for switch ports: look up the interface index, bring the link up, and make
//! the host's stack stay away from it (no IPv4 address, IPv6 disabled, no forwarding, no ARP
//! answers for host addresses), so the host never answers or solicits on a VPC.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::SysError;

fn check_name(name: &str) -> Result<CString, SysError> {
    if name.is_empty()
        || name.len() > 15
        || name.contains('/')
        || name.contains('\0')
        || name == "."
        || name == ".."
    {
        return Err(SysError::BadName(name.to_string()));
    }
    CString::new(name).map_err(|_| SysError::BadName(name.to_string()))
}

/// The interface index of `name`.
pub fn ifindex(name: &str) -> Result<i32, SysError> {
    let c = check_name(name)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(SysError::NoSuchNetdev(name.to_string()));
    }
    Ok(idx as i32)
}

fn ifreq_for(name: &str) -> Result<libc::ifreq, SysError> {
    let c = check_name(name)?;
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(c.as_bytes_with_nul()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn inet_socket(name: &str) -> Result<OwnedFd, SysError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(SysError::Socket {
            what: "socket(AF_INET)",
            netdev: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fd is a freshly created, owned, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Brings the link of `name` up (IFF_UP).
pub fn set_up(name: &str) -> Result<(), SysError> {
    let sock = inet_socket(name)?;
    let mut req = ifreq_for(name)?;
    let err = |what| SysError::Socket {
        what,
        netdev: name.to_string(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own; the fd is valid.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(err("SIOCGIFFLAGS"));
    }
    // SAFETY: the kernel filled ifru_flags for SIOCGIFFLAGS; reading the union field is valid.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own; the fd is valid.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(err("SIOCSIFFLAGS"));
    }
    Ok(())
}

/// Whether `name` has an IPv4 address.
pub fn has_ipv4_address(name: &str) -> Result<bool, SysError> {
    let sock = inet_socket(name)?;
    let mut req = ifreq_for(name)?;
    // SAFETY: SIOCGIFADDR writes into the ifreq we own; the fd is valid.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFADDR, &mut req) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
        return Ok(false);
    }
    Err(SysError::Socket {
        what: "SIOCGIFADDR",
        netdev: name.to_string(),
        source: e,
    })
}

fn sysctl(path: String, value: &str) -> Result<(), SysError> {
    std::fs::write(&path, value).map_err(|source| SysError::Sysctl { path, source })
}

/// Prepares a port netdev (in the switch's network namespace): checks it has no IPv4 address,
/// disables IPv6, forwarding and ARP answers for host addresses on it, and brings it up.
pub fn prepare_port(name: &str) -> Result<i32, SysError> {
    let idx = ifindex(name)?;
    if has_ipv4_address(name)? {
        return Err(SysError::HasAddress(name.to_string()));
    }
    let v6 = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if std::path::Path::new(&v6).exists() {
        sysctl(v6, "1")?;
    }
    sysctl(format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "0")?;
    sysctl(format!("/proc/sys/net/ipv4/conf/{name}/arp_ignore"), "8")?;
    set_up(name)?;
    Ok(idx)
}
