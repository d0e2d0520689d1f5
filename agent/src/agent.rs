//! The boot sequence shared by both modes: network (DHCP, PID 1 only), metadata, hostname, SSH
//! keys, user-data; and the settings that steer it.
//!
//! Settings come from the kernel command line (`kumo.imds=ADDR:PORT`, `kumo.imds_timeout=SECS`,
//! `kumo.dhcp_timeout=SECS`, `kumo.script_timeout=SECS`, `kumo.iface=NAME`, `kumo.network=0`)
//! and, overriding those, from the environment (`KUMO_AGENT_IMDS`, `KUMO_AGENT_IMDS_TIMEOUT`,
//! `KUMO_AGENT_DHCP_TIMEOUT`, `KUMO_AGENT_SCRIPT_TIMEOUT`, `KUMO_AGENT_IFACE`,
//! `KUMO_AGENT_NETWORK`). Service mode also takes them as command-line flags.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::dhcp::{self, DhcpConfig, Lease, PacketSocket};
use crate::exec::Children;
use crate::imds::{self, ImdsClient, ImdsConfig};
use crate::netif;
use crate::provision::Provisioner;
use crate::report::{Event, Mode, Reporter};

/// Everything that steers one boot.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    /// The image's root (`/` in a guest).
    pub root: PathBuf,
    /// Run DHCP on the first NIC (PID 1 by default).
    pub configure_network: bool,
    /// The NIC to configure; the first non-loopback one when `None`.
    pub interface: Option<String>,
    pub dhcp: DhcpConfig,
    pub imds: ImdsConfig,
    pub script_timeout: Duration,
}

impl Settings {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            root: PathBuf::from("/"),
            configure_network: mode == Mode::Init,
            interface: None,
            dhcp: DhcpConfig::default(),
            imds: ImdsConfig::default(),
            script_timeout: Duration::from_secs(3600),
        }
    }

    /// Applies one `key=value` setting (names without the `kumo.` / `KUMO_AGENT_` prefix).
    pub fn apply(&mut self, key: &str, value: &str) -> Result<(), String> {
        let secs = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("{key}={v}: expected a number of seconds"))
        };
        match key.to_ascii_lowercase().as_str() {
            "imds" => {
                self.imds.endpoint = value
                    .parse::<SocketAddr>()
                    .or_else(|_| {
                        value
                            .parse::<Ipv4Addr>()
                            .map(|ip| SocketAddr::from((ip, 80)))
                    })
                    .map_err(|_| format!("imds={value}: expected ADDRESS[:PORT]"))?
            }
            "imds_timeout" => self.imds.total_wait = secs(value)?,
            "dhcp_timeout" => self.dhcp.total_timeout = secs(value)?,
            "script_timeout" => self.script_timeout = secs(value)?,
            "iface" => self.interface = Some(value.to_string()).filter(|v| !v.is_empty()),
            "network" => self.configure_network = !matches!(value, "0" | "no" | "off" | "false"),
            other => return Err(format!("unknown setting {other}")),
        }
        Ok(())
    }

    /// Applies `kumo.*` words of a kernel command line, then `KUMO_AGENT_*` variables.
    /// Returns the settings that could not be used.
    pub fn load(&mut self, cmdline: &str, env: &[(String, String)]) -> Vec<String> {
        let mut problems = Vec::new();
        for word in cmdline.split_whitespace() {
            if let Some(rest) = word.strip_prefix("kumo.")
                && let Some((k, v)) = rest.split_once('=')
                && let Err(e) = self.apply(k, v)
            {
                problems.push(e);
            }
        }
        for (k, v) in env {
            if let Some(key) = k.strip_prefix("KUMO_AGENT_")
                && key != "LOG"
                && let Err(e) = self.apply(key, v)
            {
                problems.push(e);
            }
        }
        problems
    }
}

/// Runs DHCP on the NIC and applies the lease. Returns the interface, its MAC and the lease.
pub fn bring_up_network(
    settings: &Settings,
    reporter: &Reporter,
) -> Result<(netif::Interface, [u8; 6], Lease), String> {
    if let Err(e) = netif::set_up("lo") {
        tracing::warn!("cannot bring up lo: {e}");
    }
    let iface = match &settings.interface {
        Some(name) => netif::list()
            .map_err(|e| format!("cannot list interfaces: {e}"))?
            .into_iter()
            .find(|i| &i.name == name)
            .ok_or_else(|| format!("interface {name} does not exist"))?,
        None => netif::first_nic()
            .map_err(|e| format!("cannot list interfaces: {e}"))?
            .ok_or_else(|| "no network interface besides lo".to_string())?,
    };
    let fail = |e: String| format!("{}: {e}", iface.name);
    let mac = netif::mac(&iface.name).map_err(|e| fail(e.to_string()))?;
    netif::set_up(&iface.name).map_err(|e| fail(e.to_string()))?;
    let sock = PacketSocket::open(&iface.name, iface.index).map_err(|e| e.to_string())?;
    tracing::info!("DHCP on {} ({})", iface.name, netif::format_mac(&mac));
    let lease = dhcp::acquire(&sock, mac, &settings.dhcp).map_err(|e| e.to_string())?;
    apply_lease(&settings.root, &iface.name, &lease).map_err(fail)?;
    reporter.send(network_event(&iface.name, &mac, &lease));
    spawn_renewal(
        sock,
        iface.name.clone(),
        mac,
        lease.clone(),
        settings.dhcp.clone(),
    );
    Ok((iface, mac, lease))
}

fn network_event(name: &str, mac: &[u8; 6], lease: &Lease) -> Event {
    Event::NetworkUp {
        interface: name.to_string(),
        mac: netif::format_mac(mac),
        address: format!("{}/{}", lease.address, lease.prefix_len),
        gateway: lease.router.map(|r| r.to_string()),
        dns: lease.dns.iter().map(ToString::to_string).collect(),
        mtu: lease.mtu,
        lease_secs: lease.lease_secs,
        dhcp_server: lease.server.map(|s| s.to_string()),
    }
}

/// Sets address, MTU, default route and /etc/resolv.conf from the lease.
pub fn apply_lease(root: &std::path::Path, name: &str, lease: &Lease) -> Result<(), String> {
    netif::set_ipv4(name, lease.address, lease.prefix_len).map_err(|e| e.to_string())?;
    if let Some(mtu) = lease.mtu
        && let Err(e) = netif::set_mtu(name, mtu)
    {
        tracing::warn!("cannot set MTU {mtu} on {name}: {e}");
    }
    if let Some(gw) = lease.router {
        netif::add_default_route(name, gw).map_err(|e| e.to_string())?;
    }
    if !lease.dns.is_empty() {
        let search: Vec<String> = lease.domain_name.iter().cloned().collect();
        let text = netif::resolv_conf(&lease.dns, &search);
        let etc = root.join("etc");
        let _ = std::fs::create_dir_all(&etc);
        let path = etc.join("resolv.conf");
        // Images often link /etc/resolv.conf into /run (kumo-minimal: ../run/resolv.conf): write
        // through the link; replace it only when its target cannot be written (dangling into a
        // directory that does not exist, as systemd-resolved's when it is not running).
        if std::fs::write(&path, &text).is_err() {
            let _ = std::fs::remove_file(&path);
            if let Err(e) = std::fs::write(&path, &text) {
                tracing::warn!("cannot write {}: {e}", path.display());
            }
        }
    }
    Ok(())
}

/// Keeps the lease: renews at T1, retries every minute, starts over after a NAK.
fn spawn_renewal(sock: PacketSocket, name: String, mac: [u8; 6], lease: Lease, config: DhcpConfig) {
    std::thread::spawn(move || {
        let mut lease = lease;
        loop {
            let Some(wait) = lease.renew_after() else {
                return; // Infinite lease.
            };
            std::thread::sleep(wait);
            let expires = Instant::now()
                + Duration::from_secs(
                    u64::from(lease.lease_secs.unwrap_or(0)).saturating_sub(wait.as_secs()),
                );
            loop {
                match dhcp::renew(&sock, mac, &lease, &config) {
                    Ok(Some(new)) => {
                        tracing::info!(
                            "DHCP lease for {} on {name} renewed for {}s",
                            new.address,
                            new.lease_secs.unwrap_or(0)
                        );
                        if new.address != lease.address {
                            let _ = apply_lease(std::path::Path::new("/"), &name, &new);
                        }
                        lease = new;
                        break;
                    }
                    Ok(None) => {
                        tracing::warn!(
                            "DHCP server refused to renew {}; asking again",
                            lease.address
                        );
                        match dhcp::acquire(&sock, mac, &config) {
                            Ok(new) => {
                                let _ = apply_lease(std::path::Path::new("/"), &name, &new);
                                lease = new;
                                break;
                            }
                            Err(e) => tracing::error!("DHCP: {e}"),
                        }
                    }
                    Err(e) => tracing::warn!("DHCP renewal of {}: {e}", lease.address),
                }
                if Instant::now() >= expires {
                    tracing::error!("DHCP lease for {} expired without renewal", lease.address);
                }
                std::thread::sleep(Duration::from_secs(60));
            }
        }
    });
}

/// Everything after the network: metadata, hostname, keys, user-data. Returns the user-data's
/// exit status (0 when there was none).
/// `lease` is the DHCP lease when the agent configured the network: without metadata, the
/// hostname still comes from it (`ip-10-0-1-5`, as EC2's DHCP names instances).
pub fn provision(
    settings: &Settings,
    reporter: &Reporter,
    children: &Children,
    lease: Option<&Lease>,
) -> i32 {
    let provisioner = Provisioner {
        root: settings.root.clone(),
        system: settings.root == std::path::Path::new("/"),
        reporter: reporter.clone(),
        children: children.clone(),
        script_timeout: settings.script_timeout,
    };
    let endpoint = settings.imds.endpoint;
    let mut client = match ImdsClient::connect(settings.imds.clone(), |attempt, err| {
        if attempt == 1 || attempt % 10 == 0 {
            tracing::info!("waiting for the metadata service at {endpoint}: {err}");
        }
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}. Booting on without metadata: no SSH keys or user-data from EC2.");
            reporter.send(Event::MetadataUnavailable {
                reason: e.to_string(),
            });
            if let Some(lease) = lease {
                let address = lease.address.to_string();
                if let Some(name) = imds::ec2_hostname(lease.hostname.as_deref(), Some(&address))
                    && let Err(e) = provisioner.set_hostname(&name)
                {
                    tracing::warn!("hostname from the DHCP lease not set: {e}");
                }
            }
            return 0;
        }
    };
    let info = match client.instance_info() {
        Ok(i) => i,
        Err(e) => {
            reporter.send(Event::MetadataUnavailable {
                reason: e.to_string(),
            });
            return 0;
        }
    };
    reporter.send(Event::MetadataReady {
        imds_version: client.version().as_str().to_string(),
        instance_id: info.instance_id.clone(),
    });
    if let Some(name) =
        imds::ec2_hostname(info.local_hostname.as_deref(), info.local_ipv4.as_deref())
        && let Err(e) = provisioner.set_hostname(&name)
    {
        reporter.send(Event::Warning {
            message: format!("hostname not set: {e}"),
        });
    }
    provisioner.install_metadata_keys(&info.public_keys);
    let user_data = match client.user_data() {
        Ok(u) => u,
        Err(e) => {
            reporter.send(Event::UserdataRejected {
                reason: format!("cannot fetch user-data: {e}"),
            });
            return 1;
        }
    };
    let id = info.instance_id.unwrap_or_else(|| "unknown".into());
    provisioner.run_user_data(&id, user_data.as_deref()).exit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_cmdline_and_env() {
        let mut s = Settings::new(Mode::Init);
        let problems = s.load(
            "console=ttyS0 kumo.imds=10.0.0.9 kumo.script_timeout=5 kumo.bogus=1 kumo.dhcp_timeout=x",
            &[
                ("KUMO_AGENT_IMDS".into(), "127.0.0.1:8080".into()),
                ("KUMO_AGENT_NETWORK".into(), "0".into()),
                ("KUMO_AGENT_LOG".into(), "debug".into()),
            ],
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(s.imds.endpoint, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.script_timeout, Duration::from_secs(5));
        assert!(!s.configure_network);
        let mut s = Settings::new(Mode::Init);
        s.load("kumo.imds=10.0.0.9", &[]);
        assert_eq!(s.imds.endpoint, "10.0.0.9:80".parse().unwrap());
    }
}
