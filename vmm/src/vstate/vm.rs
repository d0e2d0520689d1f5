//! The KVM VM: memory slots, the in-kernel irqchip (PIC, I/O APIC, local APICs) and PIT.

use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;
use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Errors creating or setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM_CREATE_VM failed: {0}")]
    Create(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    TssAddress(kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP failed: {0}")]
    Irqchip(kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2 failed: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("cannot register guest memory with KVM (slot {slot}): {source}")]
    MemorySlot {
        slot: u32,
        source: kvm_ioctls::Error,
    },
    #[error("guest memory needs {0} slots but KVM offers {1}")]
    TooManySlots(usize, usize),
}

/// A KVM VM with its irqchip and PIT.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Creates the VM, its TSS, the in-kernel irqchip and the PIT.
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(VmError::TssAddress)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(Self { fd })
    }

    /// The VM file descriptor (ioeventfds, irqfds, vCPUs).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Makes every region of `mem` guest RAM.
    pub fn register_memory(&self, kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        if mem.num_regions() > kvm.get_nr_memslots() {
            return Err(VmError::TooManySlots(
                mem.num_regions(),
                kvm.get_nr_memslots(),
            ));
        }
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .expect("a region's start is inside guest memory") as u64;
            let region_desc = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host,
                flags: 0,
            };
            // SAFETY: `host` is the start of a live mapping of `region.len()` bytes owned by
            // `mem`, which the VMM keeps alive for as long as the VM exists.
            unsafe { self.fd.set_user_memory_region(region_desc) }.map_err(|source| {
                VmError::MemorySlot {
                    slot: slot as u32,
                    source,
                }
            })?;
        }
        Ok(())
    }
}
