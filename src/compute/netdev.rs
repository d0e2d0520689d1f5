//! The host-side network devices of an instance: its TAP device (kvm backend), its veth pair and
//! network namespace (namespace backend), and their names.
//!
//! Names are derived from the instance id so that a leftover is recognisable and removable:
//! `kumot<10 hex>` (TAP), `kumov<10 hex>` (veth, switch end), `kumoi<10 hex>` (veth, instance end
//! before it moves into the namespace and becomes `eth0`), network namespace `kumo-i-<17 hex>`
//! (`/run/netns/`, so `ip netns exec` and `nsenter` reach it). None of them gets an address: the
//! switch (kumo-net) opens an AF_PACKET socket on the switch end, turns IPv6 off on it and brings
//! it up.
//!
//! The TAP is created here with `TUNSETIFF` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, the flags
//! kumo-vmm opens it with) and made persistent with `TUNSETPERSIST`, so that it exists before the
//! switch attaches and kumo-vmm can open it by name; removing it clears the persist flag. veth
//! pairs and namespaces are made with iproute2's `ip`, as no netlink crate is in the workspace.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use kumo_net::MacAddr;

use super::ids;

/// Errors creating or removing network devices.
#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    #[error(
        "/dev/net/tun cannot be opened ({0}): load the tun module (modprobe tun) and run as root"
    )]
    Tun(std::io::Error),
    #[error("creating TAP device {name}: {source}")]
    TapCreate {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {detail}")]
    Ip { args: String, detail: String },
    #[error("iproute2's `ip` is not installed (apt-get install iproute2): {0}")]
    NoIp(std::io::Error),
}

/// Longest netdev name Linux accepts (IFNAMSIZ - 1).
pub const MAX_NAME: usize = 15;

/// The last 10 hex digits of an instance id: enough to keep concurrent instances apart.
fn suffix(instance_id: &str) -> &str {
    let hex = ids::hex_part(instance_id);
    &hex[hex.len().saturating_sub(10)..]
}

/// The instance's TAP device.
pub fn tap_name(instance_id: &str) -> String {
    format!("kumot{}", suffix(instance_id))
}

/// The switch end of the instance's veth pair.
pub fn veth_switch_name(instance_id: &str) -> String {
    format!("kumov{}", suffix(instance_id))
}

/// The instance end of the veth pair, before it moves into the namespace as `eth0`.
pub fn veth_instance_name(instance_id: &str) -> String {
    format!("kumoi{}", suffix(instance_id))
}

/// The switch end of the internet gateway's veth pair (`--keep-running`).
pub fn gateway_switch_name(instance_id: &str) -> String {
    format!("kumog{}", suffix(instance_id))
}

/// The host end of the internet gateway's veth pair: it carries the host's address in the
/// instance's public range.
pub fn gateway_host_name(instance_id: &str) -> String {
    format!("kumoh{}", suffix(instance_id))
}

/// The instance's network namespace (`/run/netns/<name>`).
pub fn netns_name(instance_id: &str) -> String {
    format!("kumo-{instance_id}")
}

/// Whether a netdev of this name exists in kumo's network namespace.
pub fn exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn ip_binary() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip")
}

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<(), NetdevError> {
    let out = Command::new(ip_binary())
        .args(args)
        .output()
        .map_err(NetdevError::NoIp)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetdevError::Ip {
            args: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_int) -> IfReq {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: flags as libc::c_short,
        _pad: [0; 22],
    };
    let bytes = name.as_bytes();
    let n = bytes.len().min(MAX_NAME);
    req.name[..n].copy_from_slice(&bytes[..n]);
    req
}

fn open_tun() -> Result<std::fs::File, NetdevError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(NetdevError::Tun)
}

/// Sets or clears the persist flag of TAP `name` (creating it if it does not exist).
fn tap_persist(name: &str, persist: bool) -> Result<(), NetdevError> {
    let tun = open_tun()?;
    let err = |source| NetdevError::TapCreate {
        name: name.to_string(),
        source,
    };
    let req = ifreq(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    // SAFETY: TUNSETIFF reads a `struct ifreq` (name + flags, 40 bytes); `req` is a live,
    // initialised value of that layout and the fd is /dev/net/tun.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &req) } < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument by value; the fd is attached to the TAP.
    if unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(persist),
        )
    } < 0
    {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Creates the persistent TAP device `name` with IPv6 off and no address (the switch brings it
/// up when it attaches).
pub fn create_tap(name: &str) -> Result<(), NetdevError> {
    if exists(name) {
        // A leftover of the same instance name: start clean.
        let _ = delete_tap(name);
    }
    tap_persist(name, true)?;
    disable_ipv6(name);
    Ok(())
}

/// Removes a TAP device made by [`create_tap`] (no-op if it is gone).
pub fn delete_tap(name: &str) -> Result<(), NetdevError> {
    if !exists(name) {
        return Ok(());
    }
    // Attaching fails while a VMM still holds it; `ip link del` removes it anyway.
    if tap_persist(name, false).is_err() || exists(name) {
        ip(&["link", "del", "dev", name])?;
    }
    Ok(())
}

/// Turns IPv6 off on a host-side netdev so the host never solicits or answers on a VPC.
pub fn disable_ipv6(name: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if Path::new(&path).exists() {
        let _ = std::fs::write(path, "1");
    }
}

/// Creates network namespace `name` (`ip netns add`), with its loopback up.
pub fn create_netns(name: &str) -> Result<(), NetdevError> {
    if Path::new("/run/netns").join(name).exists() {
        let _ = delete_netns(name);
    }
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Removes a network namespace (and the netdevs inside it); no-op if it is gone.
pub fn delete_netns(name: &str) -> Result<(), NetdevError> {
    if !Path::new("/run/netns").join(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name])
}

/// Creates a veth pair: `switch_end` stays in kumo's namespace (no address, IPv6 off),
/// `instance_end` moves into `netns` as `eth0` with the ENI's MAC address.
pub fn create_veth(
    switch_end: &str,
    instance_end: &str,
    netns: &str,
    mac: MacAddr,
) -> Result<(), NetdevError> {
    for leftover in [switch_end, instance_end] {
        if exists(leftover) {
            let _ = ip(&["link", "del", "dev", leftover]);
        }
    }
    let mac = mac.to_string();
    ip(&[
        "link",
        "add",
        instance_end,
        "address",
        &mac,
        "type",
        "veth",
        "peer",
        "name",
        switch_end,
    ])?;
    disable_ipv6(switch_end);
    let moved = ip(&["link", "set", instance_end, "netns", netns])
        .and_then(|()| ip(&["-n", netns, "link", "set", instance_end, "name", "eth0"]));
    if let Err(e) = moved {
        let _ = ip(&["link", "del", "dev", switch_end]);
        return Err(e);
    }
    Ok(())
}

/// Creates the internet gateway's veth pair: `switch_end` (no address, the switch's gateway
/// port) and `host_end` with `host_cidr` (e.g. 198.18.3.1/30), so that the host routes the
/// instance's public range to the switch.
pub fn create_gateway_veth(
    switch_end: &str,
    host_end: &str,
    host_cidr: &str,
) -> Result<(), NetdevError> {
    for leftover in [switch_end, host_end] {
        if exists(leftover) {
            let _ = ip(&["link", "del", "dev", leftover]);
        }
    }
    ip(&[
        "link", "add", host_end, "type", "veth", "peer", "name", switch_end,
    ])?;
    disable_ipv6(switch_end);
    disable_ipv6(host_end);
    let configured = ip(&["addr", "add", host_cidr, "dev", host_end])
        .and_then(|()| ip(&["link", "set", host_end, "up"]));
    if let Err(e) = configured {
        let _ = ip(&["link", "del", "dev", switch_end]);
        return Err(e);
    }
    Ok(())
}

/// The host's IPv4 addresses (all netdevs of kumo's network namespace).
fn host_ipv4_addresses() -> Vec<std::net::Ipv4Addr> {
    let out = Command::new(ip_binary())
        .args(["-o", "-4", "addr", "show"])
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.find(|t| *t == "inet")?;
                w.next()?.split('/').next()?.parse().ok()
            })
            .collect()
    })
    .unwrap_or_default()
}

/// The host-only range public addresses come from (RFC 2544's benchmarking range, never routed
/// on the internet).
pub const PUBLIC_RANGE: &str = "198.18.0.0/15";

/// A /30 of [`PUBLIC_RANGE`] that no address of this host is in: (host address, block). The
/// search starts at a block derived from the instance id, so concurrent runs rarely collide.
pub fn pick_public_block(instance_id: &str) -> Option<(std::net::Ipv4Addr, ipnet::Ipv4Net)> {
    pick_public_block_avoiding(instance_id, &host_ipv4_addresses())
}

fn pick_public_block_avoiding(
    instance_id: &str,
    taken: &[std::net::Ipv4Addr],
) -> Option<(std::net::Ipv4Addr, ipnet::Ipv4Net)> {
    let range: ipnet::Ipv4Net = PUBLIC_RANGE.parse().expect("valid CIDR");
    let blocks = 1u32 << (30 - range.prefix_len());
    let start =
        (u64::from_str_radix(suffix(instance_id), 16).unwrap_or(0) % u64::from(blocks)) as u32;
    let base = u32::from(range.network());
    (0..blocks).find_map(|i| {
        let block = base + ((start + i) % blocks) * 4;
        let net = ipnet::Ipv4Net::new(block.into(), 30).expect("valid prefix");
        if taken.iter().any(|a| net.contains(a)) {
            None
        } else {
            Some(((block + 1).into(), net))
        }
    })
}

/// Removes a veth pair by its switch end (no-op if it is gone).
pub fn delete_link(name: &str) -> Result<(), NetdevError> {
    if !exists(name) {
        return Ok(());
    }
    ip(&["link", "del", "dev", name])
}

/// Processes with a file open on the network namespace `name` (as `ip netns pids` lists them).
pub fn netns_pids(name: &str) -> Vec<i32> {
    let out = Command::new(ip_binary())
        .args(["netns", "pids", name])
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "i-0123456789abcdef0";

    fn ifreq_name(req: &IfReq) -> String {
        std::ffi::CStr::from_bytes_until_nul(&req.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    #[test]
    fn names_fit_ifnamsiz_and_name_the_instance() {
        for name in [tap_name(ID), veth_switch_name(ID), veth_instance_name(ID)] {
            assert!(name.len() <= MAX_NAME, "{name}");
            assert!(name.ends_with("789abcdef0"), "{name}");
        }
        assert_eq!(tap_name(ID), "kumot789abcdef0");
        assert_eq!(veth_switch_name(ID), "kumov789abcdef0");
        assert_eq!(netns_name(ID), "kumo-i-0123456789abcdef0");
        assert_ne!(veth_switch_name(ID), veth_instance_name(ID));
    }

    #[test]
    fn public_blocks_avoid_the_hosts_addresses() {
        let (host, net) = pick_public_block_avoiding(ID, &[]).unwrap();
        assert_eq!(net.prefix_len(), 30);
        assert!(
            PUBLIC_RANGE
                .parse::<ipnet::Ipv4Net>()
                .unwrap()
                .contains(&net)
        );
        assert_eq!(u32::from(host), u32::from(net.network()) + 1);
        // Taken by another run: the next block.
        let (host2, net2) = pick_public_block_avoiding(ID, &[host]).unwrap();
        assert_ne!(net2, net);
        assert!(!net2.contains(&host));
        assert_eq!(u32::from(host2), u32::from(net2.network()) + 1);
        // Same id, same start: deterministic; another id starts elsewhere.
        assert_eq!(pick_public_block_avoiding(ID, &[]), Some((host, net)));
        let (_, other) = pick_public_block_avoiding("i-0123456789abcdef7", &[]).unwrap();
        assert_ne!(other, net);
        assert_ne!(
            net.network(),
            "198.18.0.0".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert_eq!(gateway_switch_name(ID), "kumog789abcdef0");
        assert_eq!(gateway_host_name(ID), "kumoh789abcdef0");
    }

    #[test]
    fn ifreq_layout_matches_the_kernels() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        let req = ifreq("kumot0123456789", libc::IFF_TAP | libc::IFF_NO_PI);
        assert_eq!(ifreq_name(&req), "kumot0123456789");
        assert_eq!(req.name[15], 0, "NUL-terminated");
    }

    /// Creates and removes a real TAP device (root only).
    #[test]
    fn tap_create_and_delete() {
        if !kumo_testkit::is_root() || !Path::new("/dev/net/tun").exists() {
            kumo_testkit::skip(
                "compute netdev::tap_create_and_delete",
                "needs root and /dev/net/tun",
            );
            return;
        }
        let name = format!("kumot{:010x}", std::process::id());
        assert!(name.len() <= MAX_NAME);
        create_tap(&name).unwrap();
        assert!(exists(&name));
        let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/tun_flags")).unwrap();
        let flags = i64::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
        assert_eq!(flags & 0x0002, 0x0002, "IFF_TAP");
        assert_eq!(flags & 0x1000, 0x1000, "IFF_NO_PI");
        assert_eq!(flags & 0x4000, 0x4000, "IFF_VNET_HDR");
        let v6 = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"));
        if let Ok(v6) = v6 {
            assert_eq!(v6.trim(), "1");
        }
        delete_tap(&name).unwrap();
        assert!(!exists(&name));
        delete_tap(&name).unwrap();
    }
}
