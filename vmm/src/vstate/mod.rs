//! KVM state: the `/dev/kvm` handle, the VM (memory slots, in-kernel irqchip and PIT), guest
//! memory, and vCPUs with their exit handling.

pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod vm;
