//! Boot-time CPU state: the boot GDT, identity page tables, segment/control registers for the
//! 64-bit and PVH entries, general registers and the FPU. Values are built by pure functions;
//! [`write_boot_tables`] puts the GDT and page tables into guest memory.

use super::layout::{
    BOOT_GDT_MAX, BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, IDENTITY_MAPPED, PDE_START,
    PDPTE_START, PML4_START,
};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// How the guest is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, paging on, `rsi` = zero page.
    Long64 {
        /// Entry point.
        entry: u64,
        /// Zero page address.
        zero_page: u64,
    },
    /// PVH: 32-bit protected mode, paging off, `ebx` = `hvm_start_info`.
    Pvh {
        /// The 32-bit entry point from the ELF note.
        entry: u64,
        /// `hvm_start_info` address.
        start_info: u64,
    },
}

/// Errors writing boot tables.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT into guest memory: {0}")]
    Gdt(vm_memory::GuestMemoryError),
    #[error("cannot write the boot page tables into guest memory: {0}")]
    PageTables(vm_memory::GuestMemoryError),
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// A GDT entry from flags (access byte and the 4 flag bits, as `0xF0AA`), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT for `mode`: null, code (0x08), data (0x10), TSS (0x18).
pub fn boot_gdt(mode: EntryMode) -> [u64; BOOT_GDT_MAX] {
    let code = match mode {
        EntryMode::Long64 { .. } => gdt_entry(0xa09b, 0, 0xfffff), // 64-bit, L=1
        EntryMode::Pvh { .. } => gdt_entry(0xc09b, 0, 0xfffff),    // 32-bit, D=1
    };
    [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// The `kvm_segment` a GDT entry loads, for selector index `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector: (index as u16) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Special registers for `mode`, starting from what KVM reported (`base`).
pub fn boot_sregs(base: &kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let gdt = boot_gdt(mode);
    let mut s = *base;
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    s.gdt.base = BOOT_GDT_START;
    s.gdt.limit = (std::mem::size_of::<u64>() * BOOT_GDT_MAX - 1) as u16;
    s.idt.base = BOOT_IDT_START;
    s.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = tss;
    match mode {
        EntryMode::Long64 { .. } => {
            s.cr0 = (s.cr0 | X86_CR0_PE | X86_CR0_PG | X86_CR0_ET) & !(1 << 30 | 1 << 29); // CD, NW off
            s.cr3 = PML4_START;
            s.cr4 |= X86_CR4_PAE | (3 << 9);
            s.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh { .. } => {
            s.cr0 = (X86_CR0_PE | X86_CR0_ET) & !(1 << 30 | 1 << 29);
            s.cr3 = 0;
            s.cr4 = 0;
            s.efer = 0;
        }
    }
    s
}

/// General registers for `mode`.
pub fn boot_regs(mode: EntryMode) -> kvm_regs {
    match mode {
        EntryMode::Long64 { entry, zero_page } => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: zero_page,
            ..Default::default()
        },
        EntryMode::Pvh { entry, start_info } => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rbx: start_info,
            ..Default::default()
        },
    }
}

/// FPU state at reset: x87 control word 0x37f, MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// The identity page tables as (address, 8-byte entries): PML4 -> one PDPT -> four PDs of
/// 2 MiB pages covering [0, 4 GiB).
pub fn identity_page_tables() -> Vec<(u64, Vec<u64>)> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    let gibs = IDENTITY_MAPPED >> 30;
    let pml4 = vec![PDPTE_START | PRESENT_RW];
    let pdpt: Vec<u64> = (0..gibs)
        .map(|g| (PDE_START + g * 0x1000) | PRESENT_RW)
        .collect();
    let mut tables = vec![(PML4_START, pml4), (PDPTE_START, pdpt)];
    for g in 0..gibs {
        let pd: Vec<u64> = (0..512u64)
            .map(|i| ((g << 30) + (i << 21)) | PRESENT_RW | PAGE_SIZE_2M)
            .collect();
        tables.push((PDE_START + g * 0x1000, pd));
    }
    tables
}

/// Writes the boot GDT (and an empty IDT) and, for the 64-bit entry, the page tables.
pub fn write_boot_tables(mem: &GuestMemoryMmap, mode: EntryMode) -> Result<(), RegsError> {
    for (i, e) in boot_gdt(mode).iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(RegsError::Gdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::Gdt)?;
    if let EntryMode::Long64 { .. } = mode {
        for (addr, entries) in identity_page_tables() {
            let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            mem.write_slice(&bytes, GuestAddress(addr))
                .map_err(RegsError::PageTables)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn gdt_entries_decode() {
        let code = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (
                code.selector,
                code.l,
                code.db,
                code.present,
                code.type_,
                code.s
            ),
            (8, 1, 0, 1, 0xb, 1)
        );
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.selector, data.db, data.type_, data.g), (16, 1, 3, 1));
        let tss = segment_from_gdt(gdt_entry(0x808b, 0, 0xfffff), 3);
        assert_eq!((tss.selector, tss.type_, tss.s), (24, 0xb, 0));
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn long_mode_sregs() {
        let s = boot_sregs(
            &kvm_sregs::default(),
            EntryMode::Long64 {
                entry: 0x100000,
                zero_page: 0x7000,
            },
        );
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.l, 1);
        let p = boot_sregs(
            &kvm_sregs::default(),
            EntryMode::Pvh {
                entry: 0x100000,
                start_info: 0x6000,
            },
        );
        assert_eq!((p.cr0 & X86_CR0_PG, p.efer, p.cs.l, p.cs.db), (0, 0, 0, 1));
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let t = identity_page_tables();
        assert_eq!(t.len(), 6);
        let pd3 = &t[5].1;
        assert_eq!(pd3[511] & !0xfff, (4u64 << 30) - (2 << 20));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(
            &mem,
            EntryMode::Long64 {
                entry: 0,
                zero_page: 0,
            },
        )
        .unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 8)).unwrap();
        assert_eq!(pde, (2 << 20) | 0x83);
    }

    #[test]
    fn entry_registers() {
        let r = boot_regs(EntryMode::Long64 {
            entry: 0x1000000,
            zero_page: 0x7000,
        });
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x1000000, 0x7000, BOOT_STACK_POINTER, 2)
        );
        let r = boot_regs(EntryMode::Pvh {
            entry: 0x1000200,
            start_info: 0x6000,
        });
        assert_eq!((r.rip, r.rbx), (0x1000200, 0x6000));
    }
}
