//! kumo's compute layer: launching an instance from an AMI and an instance type, running it on a
//! backend, and terminating it without leaving anything behind. `kumo run` drives it in the
//! foreground today; the EC2 API's `RunInstances` and `TerminateInstances` will call the same
//! [`launch`] module.
//!
//! - [`launch`]: the launch and terminate sequences;
//! - [`instance_types`]: vCPUs and memory of EC2's common instance types;
//! - [`backend`]: kvm (a `kumo-vmm` process per instance) and namespace (the AMI's init in Linux
//!   namespaces, for hosts without hardware virtualization), and how one is chosen;
//! - [`network`]: the default VPC on kumo-net's switch, run in-process, and the instance's ENI
//!   and metadata;
//! - [`netdev`]: TAP devices, veth pairs and network namespaces on the host;
//! - [`disk`]: the per-instance copy of the AMI's root disk, and loop devices;
//! - [`cgroup`]: memory and CPU limits for namespace instances (cgroups v1 or v2);
//! - [`console`]: the console log and kumo-agent's report events;
//! - [`instance`]: the instance record under `$KUMO_HOME/instances/`;
//! - [`cleanup`], [`stale`]: removing what a launch made, on every exit path and after a kill;
//! - [`ids`]: EC2-style ids.

pub mod backend;
pub mod cgroup;
pub mod cleanup;
pub mod console;
pub mod disk;
pub mod ids;
pub mod instance;
pub mod instance_types;
pub mod launch;
pub mod netdev;
pub mod network;
pub mod stale;
