//! Walking a descriptor chain a guest handed us, trusting nothing in it.
//!
//! `virtio_queue::DescriptorChain` already stops after as many descriptors as the queue (or
//! indirect table) holds, so a chain that loops cannot hang us; it just ends early. This module
//! turns such a chain, and every other malformed one, into an error a device can fail the request
//! with: a chain that ends on a descriptor that still has NEXT set (it looped, pointed past the
//! table, or its table lies outside guest memory), a device-readable descriptor after a
//! device-writable one, or a buffer outside guest memory.

use vm_memory::{Bytes, GuestAddress};

use super::{Chain, GuestMemory};

/// A guest buffer: `len` bytes at `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a chain cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChainError {
    #[error("descriptor chain is empty (bad head index or unreadable descriptor table)")]
    Empty,
    #[error("descriptor chain does not end (it loops or its next index is out of range)")]
    Unterminated,
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("descriptor chain is longer than 4 GiB")]
    TooLong,
}

/// The buffers of a well-formed chain, split by direction, in order.
#[derive(Debug, Default)]
pub(crate) struct ChainLayout {
    pub readable: Vec<Segment>,
    pub writable: Vec<Segment>,
}

impl ChainLayout {
    /// Total bytes the device may read.
    pub fn readable_len(&self) -> u64 {
        total_len(&self.readable)
    }
    /// Total bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        total_len(&self.writable)
    }
}

/// Walks `chain` and returns its head index with its layout or why it is malformed.
///
/// Buffers outside guest memory are not an error here: the copy helpers below fail on them, so
/// a device can still write a status byte that lies inside memory.
pub(crate) fn walk(chain: Chain<'_>) -> (u16, Result<ChainLayout, ChainError>) {
    let head = chain.head_index();
    let mut layout = ChainLayout::default();
    let mut last_has_next = None;
    let mut total: u64 = 0;
    for desc in chain {
        last_has_next = Some(desc.has_next());
        total += u64::from(desc.len());
        if total > u64::from(u32::MAX) {
            return (head, Err(ChainError::TooLong));
        }
        let segment = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        if desc.is_write_only() {
            layout.writable.push(segment);
        } else if !layout.writable.is_empty() {
            return (head, Err(ChainError::ReadableAfterWritable));
        } else {
            layout.readable.push(segment);
        }
    }
    match last_has_next {
        None => (head, Err(ChainError::Empty)),
        Some(true) => (head, Err(ChainError::Unterminated)),
        Some(false) => (head, Ok(layout)),
    }
}

/// Sum of the segments' lengths.
pub(crate) fn total_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

/// The pieces of `segments` that cover bytes `[start, start + len)` of their concatenation
/// (fewer bytes if the segments end first).
pub(crate) fn sub_ranges(segments: &[Segment], start: u64, len: u64) -> Vec<(GuestAddress, usize)> {
    let mut out = Vec::new();
    let mut skip = start;
    let mut left = len;
    for segment in segments {
        if left == 0 {
            break;
        }
        let seg_len = u64::from(segment.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let take = (seg_len - skip).min(left);
        // `skip` < seg_len <= u32::MAX, so the address arithmetic cannot overflow past what
        // the guest described; checked_add guards a descriptor at the top of the address space.
        if let Some(addr) = segment.addr.0.checked_add(skip) {
            out.push((GuestAddress(addr), take as usize));
        }
        left -= take;
        skip = 0;
    }
    out
}

/// Whether every byte of `segments` lies in guest memory.
pub(crate) fn in_memory(mem: &GuestMemory, segments: &[Segment]) -> bool {
    segments.iter().all(|s| {
        s.len == 0 || vm_memory::GuestMemoryBackend::check_range(mem, s.addr, s.len as usize)
    })
}

/// Copies `buf.len()` bytes from the segments, starting `start` bytes in, into `buf`.
pub(crate) fn read_from(
    mem: &GuestMemory,
    segments: &[Segment],
    start: u64,
    buf: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut done = 0;
    for (addr, len) in sub_ranges(segments, start, buf.len() as u64) {
        mem.read_slice(&mut buf[done..done + len], addr)?;
        done += len;
    }
    if done != buf.len() {
        return Err(vm_memory::GuestMemoryError::PartialBuffer {
            expected: buf.len(),
            completed: done,
        });
    }
    Ok(())
}

/// Copies `data` into the segments, starting `start` bytes in.
pub(crate) fn write_to(
    mem: &GuestMemory,
    segments: &[Segment],
    start: u64,
    data: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut done = 0;
    for (addr, len) in sub_ranges(segments, start, data.len() as u64) {
        mem.write_slice(&data[done..done + len], addr)?;
        done += len;
    }
    if done != data.len() {
        return Err(vm_memory::GuestMemoryError::PartialBuffer {
            expected: data.len(),
            completed: done,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn sub_ranges_cross_segment_boundaries() {
        let segs = [seg(0x1000, 4), seg(0x2000, 4), seg(0x3000, 4)];
        assert_eq!(
            sub_ranges(&segs, 2, 6),
            vec![(GuestAddress(0x1002), 2), (GuestAddress(0x2000), 4)]
        );
        assert_eq!(sub_ranges(&segs, 11, 5), vec![(GuestAddress(0x3003), 1)]);
        assert!(sub_ranges(&segs, 12, 1).is_empty());
        assert!(sub_ranges(&segs, 0, 0).is_empty());
    }

    #[test]
    fn copies_fail_past_the_end_of_the_segments() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let segs = [seg(0x1000, 2), seg(0x2000, 2)];
        write_to(&mem, &segs, 1, &[1, 2, 3]).unwrap();
        let mut buf = [0u8; 3];
        read_from(&mem, &segs, 1, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3]);
        assert!(write_to(&mem, &segs, 2, &[1, 2, 3]).is_err());
        assert!(read_from(&mem, &segs, 0, &mut [0u8; 5]).is_err());
        assert!(in_memory(&mem, &segs));
        assert!(!in_memory(&mem, &[seg(0xfff0, 0x20)]));
        assert!(write_to(&mem, &[seg(0xfff0, 0x20)], 0, &[0u8; 0x20]).is_err());
    }
}
