//! kumo-vmm: a KVM micro-VM monitor, one process per instance.
//!
//! Owns everything between a kernel image plus disks and a running guest: guest memory, the
//! x86_64 boot protocol, vCPUs, the legacy devices (8250 serial, i8042) and the virtio-mmio
//! block and net devices.

pub mod devices;
