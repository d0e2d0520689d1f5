//! The e820 memory map and what the guest is told at entry: Linux's zero page
//! (`struct boot_params`) for the 64-bit and bzImage entries, `hvm_start_info` for PVH.
//! Pure functions over values; the builder writes the results into guest memory.

use super::layout::{EBDA_END, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// The zero page holds at most this many e820 entries.
pub const E820_MAX_ENTRIES: usize = 128;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// One e820 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// Errors building boot information.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootParamsError {
    #[error(
        "guest memory of {0:#x} bytes is too small: at least {HIMEM_START:#x} bytes are needed"
    )]
    MemoryTooSmall(u64),
    #[error("too many e820 entries: {0}")]
    TooManyE820Entries(usize),
}

/// The memory map for `mem_size` bytes of RAM laid out by [`super::layout::ram_regions`]:
/// base memory below the EBDA, the EBDA (holding the MP table) reserved, the legacy hole
/// (0xa0000-0x100000) left out, RAM from 1 MiB to the MMIO gap, and RAM above 4 GiB.
pub fn e820_map(mem_size: u64) -> Result<Vec<E820Entry>, BootParamsError> {
    if mem_size <= HIMEM_START {
        return Err(BootParamsError::MemoryTooSmall(mem_size));
    }
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: EBDA_END - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = mem_size.min(MMIO_GAP_START);
    map.push(E820Entry {
        addr: HIMEM_START,
        size: low_end - HIMEM_START,
        kind: E820_RAM,
    });
    if mem_size > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    Ok(map)
}

/// What goes into the zero page besides the e820 map.
#[derive(Clone, Copy, Debug, Default)]
pub struct ZeroPageInput {
    /// The bzImage's own setup header, if the kernel is a bzImage.
    pub setup_header: Option<setup_header>,
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Its length including the NUL.
    pub cmdline_size: u32,
    /// The initrd's (address, size), if any.
    pub initrd: Option<(u64, u64)>,
}

/// Builds Linux's `struct boot_params`.
pub fn zero_page(
    input: &ZeroPageInput,
    e820: &[E820Entry],
) -> Result<boot_params, BootParamsError> {
    if e820.len() > E820_MAX_ENTRIES {
        return Err(BootParamsError::TooManyE820Entries(e820.len()));
    }
    let mut params = boot_params::default();
    if let Some(hdr) = input.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.cmd_line_ptr = input.cmdline_addr as u32;
    params.ext_cmd_line_ptr = (input.cmdline_addr >> 32) as u32;
    params.hdr.cmdline_size = input.cmdline_size;
    if let Some((addr, size)) = input.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// What the PVH entry receives: `hvm_start_info`, its memory map, and its module list (the
/// initrd, if any).
pub fn pvh_start_info(
    cmdline_addr: u64,
    memmap_addr: u64,
    modlist_addr: u64,
    initrd: Option<(u64, u64)>,
    e820: &[E820Entry],
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Vec<hvm_modlist_entry>,
) {
    let memmap: Vec<_> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let modules: Vec<_> = initrd
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { modlist_addr },
        cmdline_paddr: cmdline_addr,
        memmap_paddr: memmap_addr,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    (info, memmap, modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_small_guest() {
        let map = e820_map(128 << 20).unwrap();
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (128 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_large_guest_skips_the_mmio_gap() {
        let mem = 6u64 << 30;
        let map = e820_map(mem).unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!(
            map[3],
            E820Entry {
                addr: 1 << 32,
                size: mem - MMIO_GAP_START,
                kind: E820_RAM
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // Everything but the EBDA and the legacy hole is usable.
        assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr, "entries overlap: {w:?}");
        }
    }

    #[test]
    fn e820_rejects_tiny_memory() {
        assert_eq!(
            e820_map(1 << 20),
            Err(BootParamsError::MemoryTooSmall(1 << 20))
        );
    }

    #[test]
    fn zero_page_fields() {
        let e820 = e820_map(64 << 20).unwrap();
        let input = ZeroPageInput {
            setup_header: None,
            cmdline_addr: 0x20000,
            cmdline_size: 12,
            initrd: Some((0x300_0000, 0x1234)),
        };
        let p = zero_page(&input, &e820).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 12);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!(p.e820_entries, 3);
        let last = p.e820_table[2];
        assert_eq!(
            ({ last.addr }, { last.size }, { last.r#type }),
            (0x10_0000, (64 << 20) - 0x10_0000, 1)
        );
        // The byte layout Linux reads: e820_entries at 0x1e8, cmd_line_ptr at 0x228, table at 0x2d0.
        let bytes = vm_memory::ByteValued::as_slice(&p);
        assert_eq!(bytes.len(), 4096);
        assert_eq!(bytes[0x1e8], 3);
        assert_eq!(
            u32::from_le_bytes(bytes[0x228..0x22c].try_into().unwrap()),
            0x20000
        );
        assert_eq!(
            u64::from_le_bytes(bytes[0x2d0 + 20..0x2d0 + 28].try_into().unwrap()),
            0x9fc00
        );
    }

    #[test]
    fn zero_page_keeps_the_bzimage_header() {
        let hdr = setup_header {
            setup_sects: 27,
            version: 0x20f,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        let input = ZeroPageInput {
            setup_header: Some(hdr),
            cmdline_addr: 0x20000,
            cmdline_size: 1,
            initrd: None,
        };
        let p = zero_page(&input, &e820_map(64 << 20).unwrap()).unwrap();
        assert_eq!(
            ({ p.hdr.setup_sects }, { p.hdr.version }, {
                p.hdr.kernel_alignment
            }),
            (27, 0x20f, 0x20_0000)
        );
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn zero_page_rejects_too_many_entries() {
        let e = E820Entry {
            addr: 0,
            size: 1,
            kind: E820_RAM,
        };
        let input = ZeroPageInput::default();
        assert!(zero_page(&input, &vec![e; 129]).is_err());
        assert!(zero_page(&input, &vec![e; 128]).is_ok());
    }

    #[test]
    fn pvh_info() {
        let e820 = e820_map(64 << 20).unwrap();
        let (info, memmap, mods) =
            pvh_start_info(0x20000, 0x7000, 0x6040, Some((0x200_0000, 99)), &e820);
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, 0x6040);
        assert_eq!(memmap[1].type_, E820_RESERVED);
        assert_eq!((mods[0].paddr, mods[0].size), (0x200_0000, 99));
        let (info, _, mods) = pvh_start_info(0x20000, 0x7000, 0x6040, None, &e820);
        assert_eq!((info.nr_modules, info.modlist_paddr, mods.len()), (0, 0, 0));
    }
}
