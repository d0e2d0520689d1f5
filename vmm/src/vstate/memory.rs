//! Guest RAM: anonymous private mappings (vm-memory), split around the MMIO gap below 4 GiB.

use crate::arch::x86_64::layout::ram_regions;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size_mib} MiB of guest memory: {source}")]
    Mmap {
        size_mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Maps `mem_size` bytes of guest RAM laid out by [`ram_regions`].
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(mem_size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Mmap {
        size_mib: mem_size >> 20,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn maps_around_the_gap() {
        let m = create_guest_memory(64 << 20).unwrap();
        assert_eq!(m.num_regions(), 1);
        // Reserved address space only (MAP_NORESERVE): 5 GiB costs nothing until touched.
        let m = create_guest_memory(5 << 30).unwrap();
        let regions: Vec<_> = m.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(
            regions,
            vec![(0, 0xd000_0000), (1 << 32, (5 << 30) - 0xd000_0000)]
        );
    }
}
