//! Where things live in guest-physical memory (the same layout Linux's boot protocols expect).
//!
//! ```text
//! 0x0000_0500  boot GDT (64-bit and PVH entries)
//! 0x0000_0520  boot IDT (empty)
//! 0x0000_6000  PVH hvm_start_info      (PVH entry only)
//! 0x0000_7000  zero page / PVH memmap  (one of the two, by entry protocol)
//! 0x0000_8ff0  boot stack top (64-bit entry)
//! 0x0000_9000  page tables: PML4, PDPT, 4 x PD (identity map of the first 4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line (CMDLINE_MAX_SIZE bytes)
//! 0x0009_fc00  EBDA: the MP table (reserved in e820)
//! 0x0010_0000  kernel (HIMEM_START), then the initrd near the top of low RAM
//! 0xd000_0000  MMIO gap: virtio-mmio slots, then I/O APIC 0xfec0_0000, local APIC 0xfee0_0000
//! 0x1_0000_0000 the rest of RAM when it does not fit below the gap
//! ```

/// Boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Number of boot GDT entries (null, code, data, TSS).
pub const BOOT_GDT_MAX: usize = 4;
/// Boot IDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (one per GiB).
pub const PDE_START: u64 = 0xb000;
/// How much the boot page tables identity-map.
pub const IDENTITY_MAPPED: u64 = 4 << 30;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Command line capacity (including the NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Extended BIOS data area: holds the MP table.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table.
pub const MPTABLE_START: u64 = EBDA_START;
/// End of the EBDA (and of base memory).
pub const EBDA_END: u64 = 0xa0000;
/// Start of memory above the legacy hole: kernels load at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Where virtio-mmio slots are allocated: from the gap's start up to the I/O APIC.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// Size of the virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = IOAPIC_START - MMIO_GAP_START;
/// One virtio-mmio device's register window.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// The I/O APIC (in-kernel).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs (in-kernel).
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages just below the BIOS area at the top of the gap).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// I/O APIC pins: 24.
pub const IOAPIC_PINS: u32 = 24;
/// COM1's IRQ.
pub const SERIAL_IRQ: u32 = 4;
/// The i8042 keyboard IRQ.
pub const I8042_KBD_IRQ: u32 = 1;
/// First IRQ handed to virtio devices.
pub const IRQ_DEVICE_BASE: u32 = 5;
/// Last IRQ handed to virtio devices.
pub const IRQ_DEVICE_MAX: u32 = IOAPIC_PINS - 1;
/// Initrds stay below this (Linux's default `initrd_addr_max`).
pub const INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// The guest RAM regions for `mem_size` bytes: all of it below the MMIO gap if it fits,
/// otherwise split around the gap.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// The end of RAM below the gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_split_around_the_gap() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        let r = ram_regions(4 << 30);
        assert_eq!(
            r,
            vec![(0, MMIO_GAP_START), (1 << 32, (4 << 30) - MMIO_GAP_START)]
        );
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
        assert_eq!(low_ram_end(8 << 30), MMIO_GAP_START);
    }
}
