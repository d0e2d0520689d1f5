//! kumo-vmm: a KVM micro-VM monitor, one process per instance.
//!
//! Owns everything between a kernel image plus disks and a running guest: guest memory, the
//! x86_64 boot protocol, vCPUs, the legacy devices (8250 serial, i8042) and the virtio-mmio
//! block and net devices.
//!
//! Layout (Firecracker's and vmm-reference's split):
//! - [`config`]: flags and the JSON config file.
//! - [`builder`]: the boot order in one function, [`builder::build_microvm`].
//! - [`vstate`]: KVM, the VM, guest memory, vCPUs and their exits.
//! - [`arch`]: x86_64 layout and pure boot-structure builders (boot params, e820, MP table,
//!   CPUID, MSRs, registers, page tables).
//! - [`devices`]: the buses, legacy devices, virtio devices.
//! - [`vmm`]: the running VM's event loop; [`api_socket`]: the control socket;
//!   [`seccomp`]: the syscall filters; [`exit`]: why a VM stops.
//!
//! # Exit status of the `kumo-vmm` binary
//!
//! | status | meaning |
//! |---|---|
//! | 0 | the guest ended: reset through the i8042, triple fault (reset), KVM power-off/reset event, halted with interrupts off on every vCPU, or stopped through the API socket or by SIGTERM, SIGINT or SIGHUP |
//! | 1 | the VMM failed: setup (no /dev/kvm, kernel missing or not a kernel, TAP missing, memory too small, ...) or a runtime failure; one line on stderr says which |
//! | 2 | bad command line or configuration |
//! | 3 | the guest crashed in a way KVM reports (emulation failure, entry failure) |
//!
//! The reason is printed on stderr as one line starting with `kumo-vmm:`.
//!
//! A Linux guest without ACPI (kumo's kernels) ends through these paths: `reboot` resets through
//! the i8042 (`reboot=k`); `halt` stops every CPU with interrupts off (seen by the VMM's halt
//! check, which kicks the vCPUs every 100 ms); `poweroff` has no firmware to call, so init exits
//! and the kernel panics, and with `panic=1` it then reboots through the i8042. All exit 0.

pub mod api_socket;
pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod exit;
pub mod seccomp;
pub mod vmm;
pub mod vstate;
