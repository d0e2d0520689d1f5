//! kumo-agent: the in-guest init and agent of kumo's images.
//!
//! It owns everything that happens inside an instance between the kernel starting `/sbin/init`
//! and the user's workload running: as PID 1 ([`init`]) it mounts the basic file systems, brings
//! up the first NIC with a real DHCP exchange ([`dhcp`], [`netif`]), reaps orphans and handles
//! poweroff and reboot; in both modes (PID 1, or `kumo-agent --service` next to another init) it
//! reads the instance metadata service ([`imds`] over the small [`http`] client), sets the
//! hostname, installs SSH keys ([`accounts`]), and runs the user-data ([`userdata`],
//! [`cloudconfig`], [`provision`], [`exec`]), reporting each step to the host with the line
//! protocol in [`report`].
//!
//! It depends on nothing else of kumo and is built fully static (`agent/build-static`) so it runs
//! in an image that has nothing but busybox.

pub mod accounts;
pub mod agent;
pub mod cloudconfig;
pub mod dhcp;
pub mod exec;
pub mod http;
pub mod imds;
pub mod init;
pub mod netif;
pub mod provision;
pub mod report;
pub mod sys;
pub mod userdata;
