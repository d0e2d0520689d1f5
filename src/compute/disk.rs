//! The instance's root disk: a per-instance copy of the AMI's root disk, never the catalog's file.
//!
//! The copy is a reflink (`FICLONE`: instant, copy-on-write, on btrfs or XFS) where the file
//! system can, else a sparse copy that skips the image's holes (`SEEK_DATA`/`SEEK_HOLE`) and
//! all-zero blocks, so a mostly empty ext4 image costs only its used blocks. Both backends boot
//! from it: the kvm backend as the VM's `/dev/vda`, the namespace backend loop-mounted as the
//! namespace's root. It is deleted when the instance terminates.
//!
//! Also here: finding and detaching loop devices still backed by an instance's disk (after a
//! killed run; normally the kernel detaches them itself, see `backend/namespace.rs`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// How a disk was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyKind {
    /// Copy-on-write clone of the whole file.
    Reflink,
    /// Data blocks copied, holes and zero blocks left as holes.
    Sparse,
}

/// Copies `src` to `dst` (created, or truncated), as a reflink if possible, else sparsely.
pub fn copy_disk(src: &Path, dst: &Path) -> io::Result<CopyKind> {
    let input = File::open(src)?;
    let output = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)?;
    // SAFETY: FICLONE takes the source file descriptor as its argument; both fds are open.
    if unsafe { libc::ioctl(output.as_raw_fd(), libc::FICLONE, input.as_raw_fd()) } == 0 {
        return Ok(CopyKind::Reflink);
    }
    sparse_copy(input, output)?;
    Ok(CopyKind::Sparse)
}

const BLOCK: usize = 64 * 1024;

fn seek_data_or_hole(file: &File, offset: u64, whence: libc::c_int) -> Option<u64> {
    // SAFETY: lseek on an open fd; no memory is passed.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    (r >= 0).then_some(r as u64)
}

fn sparse_copy(mut input: File, mut output: File) -> io::Result<()> {
    let len = input.metadata()?.len();
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    while pos < len {
        // Skip to the next data region (the whole file is data where SEEK_DATA is unsupported).
        let data = seek_data_or_hole(&input, pos, libc::SEEK_DATA).unwrap_or(pos);
        if data >= len {
            break;
        }
        let hole = seek_data_or_hole(&input, data, libc::SEEK_HOLE)
            .unwrap_or(len)
            .min(len);
        input.seek(SeekFrom::Start(data))?;
        let mut at = data;
        while at < hole {
            let want = ((hole - at) as usize).min(BLOCK);
            input.read_exact(&mut buf[..want])?;
            if buf[..want].iter().any(|b| *b != 0) {
                output.seek(SeekFrom::Start(at))?;
                output.write_all(&buf[..want])?;
            }
            at += want as u64;
        }
        pos = hole;
    }
    output.set_len(len)?;
    output.sync_all()
}

/// Loop devices (`/dev/loopN`) whose backing file is `file`.
pub fn loop_devices_backed_by(file: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let want = file.to_string_lossy().into_owned();
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file")).is_ok_and(|b| {
                let b = b.trim();
                // A deleted backing file reads as "PATH (deleted)".
                b == want || b.strip_suffix(" (deleted)") == Some(want.as_str())
            })
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect()
}

/// LOOP_CLR_FD from <linux/loop.h>.
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;

/// Detaches a loop device (it goes once nothing has it mounted or open).
pub fn detach_loop(dev: &Path) -> io::Result<()> {
    let f = File::open(dev)?;
    // SAFETY: LOOP_CLR_FD takes no argument; the fd is an open loop device.
    if unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CLR_FD, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `timeout` for the kernel to release the loop devices backed by `file` (they go
/// when the last mount of them goes), then detaches any that are left. Returns those that could
/// not be detached.
pub fn release_loops(file: &Path, timeout: std::time::Duration) -> Vec<PathBuf> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = loop_devices_backed_by(file);
        if left.is_empty() {
            return left;
        }
        if std::time::Instant::now() >= deadline {
            for dev in &left {
                let _ = detach_loop(dev);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            return loop_devices_backed_by(file);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copy_is_identical_and_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        {
            let mut f = File::create(&src).unwrap();
            f.set_len(8 << 20).unwrap();
            f.seek(SeekFrom::Start(1 << 20)).unwrap();
            f.write_all(&[0xab; 4096]).unwrap();
            f.seek(SeekFrom::Start((8 << 20) - 10)).unwrap();
            f.write_all(b"end-marker").unwrap();
            // A block of explicit zeros in the middle.
            f.seek(SeekFrom::Start(3 << 20)).unwrap();
            f.write_all(&vec![0u8; 256 * 1024]).unwrap();
        }
        let kind = copy_disk(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.len(), 8 << 20);
        if kind == CopyKind::Sparse {
            // Two small data regions, not 8 MiB.
            assert!(meta.blocks() * 512 < (1 << 20), "{} blocks", meta.blocks());
        }
        // Copying over an existing file replaces it.
        std::fs::write(&src, b"small").unwrap();
        copy_disk(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"small");
    }

    #[test]
    fn missing_source_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(copy_disk(&dir.path().join("nope"), &dir.path().join("out")).is_err());
    }

    #[test]
    fn no_loop_device_is_backed_by_a_fresh_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(loop_devices_backed_by(&dir.path().join("x")).is_empty());
    }
}
