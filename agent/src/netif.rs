//! Network interface configuration with the classic ioctls (no external tools): list interfaces,
//! read the MAC, bring a link up, set an IPv4 address, netmask, broadcast and MTU, and add the
//! default route. Also writes /etc/resolv.conf.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An interface name and index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
}

/// All interfaces of this network namespace, by index.
pub fn list() -> io::Result<Vec<Interface>> {
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry, or NULL on error.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    loop {
        // SAFETY: `cur` points into the array returned above and never past its terminator.
        let entry = unsafe { &*cur };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        // SAFETY: if_name is a NUL-terminated string owned by the array.
        let name = unsafe { CStr::from_ptr(entry.if_name) }
            .to_string_lossy()
            .into_owned();
        out.push(Interface {
            index: entry.if_index,
            name,
        });
        // SAFETY: the terminator has not been reached, so the next element exists.
        cur = unsafe { cur.add(1) };
    }
    // SAFETY: `head` came from if_nameindex and is freed once.
    unsafe { libc::if_freenameindex(head) };
    out.sort_by_key(|i| i.index);
    Ok(out)
}

/// The first interface that is not loopback (the instance's primary ENI).
pub fn first_nic() -> io::Result<Option<Interface>> {
    Ok(list()?.into_iter().find(|i| i.name != "lo"))
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn ioctl(
    fd: &OwnedFd,
    request: libc::c_ulong,
    req: &mut libc::ifreq,
    what: &str,
) -> io::Result<()> {
    // SAFETY: `req` is a valid ifreq for these socket ioctls, which read/write only it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, req as *mut libc::ifreq) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The interface's MAC address.
pub fn mac(name: &str) -> io::Result<[u8; 6]> {
    let fd = control_socket()?;
    let mut req = ifreq(name)?;
    ioctl(&fd, libc::SIOCGIFHWADDR, &mut req, "SIOCGIFHWADDR")?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

/// Sets IFF_UP on the interface.
pub fn set_up(name: &str) -> io::Result<()> {
    let fd = control_socket()?;
    let mut req = ifreq(name)?;
    ioctl(&fd, libc::SIOCGIFFLAGS, &mut req, "SIOCGIFFLAGS")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member; we update that same member.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    ioctl(&fd, libc::SIOCSIFFLAGS, &mut req, "SIOCSIFFLAGS")
}

/// The netmask for a prefix length.
pub fn netmask(prefix_len: u8) -> Ipv4Addr {
    let bits = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    };
    Ipv4Addr::from(bits)
}

/// The prefix length of a netmask (counts leading ones).
pub fn prefix_len(mask: Ipv4Addr) -> u8 {
    u32::from(mask).leading_ones() as u8
}

/// Sets the IPv4 address, netmask and broadcast address; the kernel adds the subnet route.
pub fn set_ipv4(name: &str, addr: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    let fd = control_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(&fd, libc::SIOCSIFADDR, &mut req, "SIOCSIFADDR")?;
    let mask = netmask(prefix_len);
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    ioctl(&fd, libc::SIOCSIFNETMASK, &mut req, "SIOCSIFNETMASK")?;
    let broadcast = Ipv4Addr::from(u32::from(addr) | !u32::from(mask));
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_broadaddr = sockaddr_in(broadcast);
    ioctl(&fd, libc::SIOCSIFBRDADDR, &mut req, "SIOCSIFBRDADDR")
}

/// Sets the MTU.
pub fn set_mtu(name: &str, mtu: u16) -> io::Result<()> {
    let fd = control_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
    ioctl(&fd, libc::SIOCSIFMTU, &mut req, "SIOCSIFMTU")
}

/// Adds `default via gateway dev name`. An existing identical route is not an error.
pub fn add_default_route(name: &str, gateway: Ipv4Addr) -> io::Result<()> {
    let fd = control_socket()?;
    let mut dev: Vec<u8> = name.as_bytes().to_vec();
    dev.push(0);
    // SAFETY: rtentry is plain data; all-zero is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    rt.rt_dev = dev.as_mut_ptr().cast();
    // SAFETY: `rt` is a valid rtentry whose rt_dev points at `dev`, alive during the call.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::SIOCADDRT,
            &mut rt as *mut libc::rtentry,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Ok(());
        }
        return Err(io::Error::new(e.kind(), format!("SIOCADDRT: {e}")));
    }
    Ok(())
}

/// The text of /etc/resolv.conf for these servers and search domains.
pub fn resolv_conf(servers: &[Ipv4Addr], search: &[String]) -> String {
    let mut s = String::from("# written by kumo-agent from the DHCP lease\n");
    let search: Vec<&str> = search
        .iter()
        .map(String::as_str)
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_graphic()))
        .collect();
    if !search.is_empty() {
        s.push_str(&format!("search {}\n", search.join(" ")));
    }
    for server in servers.iter().take(3) {
        s.push_str(&format!("nameserver {server}\n"));
    }
    s
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 240, 0)), 20);
    }

    #[test]
    fn resolv() {
        let text = resolv_conf(
            &[Ipv4Addr::new(10, 0, 0, 2)],
            &["ec2.internal".into(), "bad domain".into()],
        );
        assert_eq!(
            text,
            "# written by kumo-agent from the DHCP lease\nsearch ec2.internal\nnameserver 10.0.0.2\n"
        );
    }

    #[test]
    fn loopback_is_listed() {
        let ifaces = list().unwrap();
        assert!(ifaces.iter().any(|i| i.name == "lo"), "{ifaces:?}");
        assert_eq!(format_mac(&[0, 1, 0xab, 3, 4, 5]), "00:01:ab:03:04:05");
    }
}
