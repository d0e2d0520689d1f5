//! Checks that a file really is what a user says it is before it enters the catalog: a root disk
//! must be an ext2/3/4 file system that a Linux 6.1 guest can mount read-write, and a kernel must
//! be an x86_64 ELF `vmlinux` or a bzImage that kumo-vmm can load.
//!
//! The parsers read only headers (the ext4 superblock; the ELF header, program headers and notes;
//! the bzImage setup header), take any bytes without panicking, and report what is wrong in words
//! a user can act on.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a file was refused. Every message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("{path}: file not found: pass the path of an existing file")]
    Missing { path: PathBuf },
    #[error("{path}: not a regular file: pass a raw disk image or kernel file")]
    NotAFile { path: PathBuf },
    #[error("{path}: cannot read it: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is not a usable ext4 root disk: {reason}; make one with \
         `mke2fs -t ext4 -d ROOTDIR DISK.ext4 SIZE` (a raw image, no partition table)"
    )]
    NotExt4 { path: PathBuf, reason: String },
    #[error(
        "{path} is truncated or corrupt: its ext4 superblock describes {fs_bytes} bytes but the \
         file holds only {file_bytes}; copy the whole image again"
    )]
    TruncatedDisk {
        path: PathBuf,
        fs_bytes: u64,
        file_bytes: u64,
    },
    #[error(
        "{path}: e2fsck found errors in the file system: run `e2fsck -f {path}` to repair it\n{report}"
    )]
    FsckFailed { path: PathBuf, report: String },
    #[error(
        "{path} is neither an ELF vmlinux nor a bzImage ({detail}): pass an x86_64 vmlinux \
         (ELF, ideally with CONFIG_PVH) or arch/x86/boot/bzImage"
    )]
    NotAKernel { path: PathBuf, detail: String },
    #[error("{path} is an unsupported kernel: {reason}")]
    UnsupportedKernel { path: PathBuf, reason: String },
}

/// What the ext4 superblock of a root disk says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Info {
    /// "ext4" (extents), "ext3" (journal, no extents) or "ext2".
    pub kind: &'static str,
    pub block_size: u64,
    pub blocks: u64,
    /// `blocks * block_size`: the bytes the file system spans.
    pub fs_bytes: u64,
    pub label: String,
    pub uuid: String,
}

/// A loadable kernel's format, as kumo-vmm (linux-loader) distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum KernelFormat {
    /// An ELF64 x86_64 `vmlinux`; `pvh` is whether it has the PVH entry note
    /// (XEN_ELFNOTE_PHYS32_ENTRY) that kumo-vmm and QEMU microvm boot it through.
    #[serde(rename_all = "PascalCase")]
    Elf { pvh: bool },
    /// A bzImage; `protocol` is the boot protocol version (e.g. 0x020f).
    #[serde(rename_all = "PascalCase")]
    BzImage { protocol: u16 },
}

impl KernelFormat {
    /// The file name the catalog stores a kernel of this format under.
    pub fn file_name(self) -> &'static str {
        match self {
            KernelFormat::Elf { .. } => "vmlinux",
            KernelFormat::BzImage { .. } => "bzImage",
        }
    }
}

/// Random access to the bytes of a file (or, in tests, a slice).
trait Bytes {
    fn len(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `offset`; `Ok(false)` if the source is too short.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool>;
}

impl Bytes for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        let Some(end) = offset.checked_add(buf.len() as u64) else {
            return Ok(false);
        };
        if end > Bytes::len(self) {
            return Ok(false);
        }
        buf.copy_from_slice(&self[offset as usize..end as usize]);
        Ok(true)
    }
}

struct FileBytes {
    file: File,
    len: u64,
}

impl Bytes for FileBytes {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Ok(false);
        }
        self.file.read_exact_at(buf, offset)?;
        Ok(true)
    }
}

fn open_regular(path: &Path) -> Result<FileBytes, ValidationError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ValidationError::Missing {
            path: path.to_owned(),
        },
        _ => ValidationError::Unreadable {
            path: path.to_owned(),
            source: e,
        },
    })?;
    if !meta.is_file() {
        return Err(ValidationError::NotAFile {
            path: path.to_owned(),
        });
    }
    let file = File::open(path).map_err(|e| ValidationError::Unreadable {
        path: path.to_owned(),
        source: e,
    })?;
    Ok(FileBytes {
        file,
        len: meta.len(),
    })
}

/// Checks that `path` is a raw ext2/3/4 image a Linux 6.1 guest can mount read-write as its root.
pub fn check_root_disk(path: &Path) -> Result<Ext4Info, ValidationError> {
    let bytes = open_regular(path)?;
    let unreadable = |e| ValidationError::Unreadable {
        path: path.to_owned(),
        source: e,
    };
    let mut sb = [0u8; 1024];
    if !bytes.read_at(1024, &mut sb).map_err(unreadable)? {
        return Err(ValidationError::NotExt4 {
            path: path.to_owned(),
            reason: format!(
                "the file is {} bytes, too short to hold an ext4 superblock",
                bytes.len()
            ),
        });
    }
    let info = parse_ext4_superblock(&sb).map_err(|reason| ValidationError::NotExt4 {
        path: path.to_owned(),
        reason,
    })?;
    if info.fs_bytes > bytes.len() {
        return Err(ValidationError::TruncatedDisk {
            path: path.to_owned(),
            fs_bytes: info.fs_bytes,
            file_bytes: bytes.len(),
        });
    }
    Ok(info)
}

/// Runs `e2fsck -fn` on `path` (read-only). `Ok(false)` if e2fsck is not installed.
pub fn fsck_root_disk(path: &Path) -> Result<bool, ValidationError> {
    let output = match std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(path)
        .env("PATH", crate::images::build::tool_path())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(ValidationError::Unreadable {
                path: path.to_owned(),
                source: e,
            });
        }
    };
    if output.status.success() {
        return Ok(true);
    }
    let mut report = String::from_utf8_lossy(&output.stdout).into_owned();
    report.push_str(&String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = report.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    Err(ValidationError::FsckFailed {
        path: path.to_owned(),
        report: tail,
    })
}

const EXT4_MAGIC: u16 = 0xEF53;
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
/// Incompatible features Linux 6.1's ext4 mounts: filetype, recover, journal_dev excluded,
/// meta_bg, extents, 64bit, mmp, flex_bg, ea_inode, csum_seed, largedir, inline_data, encrypt,
/// casefold.
const INCOMPAT_SUPPORTED: u32 = 0x2
    | 0x4
    | 0x10
    | 0x40
    | 0x80
    | 0x100
    | 0x200
    | 0x400
    | 0x1000
    | 0x2000
    | 0x8000
    | 0x10000
    | 0x20000;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
/// Read-only-compatible features Linux 6.1 mounts read-write (the "readonly" feature, 0x1000, is
/// left out on purpose: a root disk must be writable).
const RO_COMPAT_SUPPORTED: u32 =
    0x1 | 0x2 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x2000 | 0x8000 | 0x10000;
const STATE_ERRORS: u16 = 0x2;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parses the 1024-byte ext2/3/4 superblock (found at byte 1024 of the disk).
pub fn parse_ext4_superblock(sb: &[u8; 1024]) -> Result<Ext4Info, String> {
    let magic = le16(sb, 0x38);
    if magic != EXT4_MAGIC {
        return Err(format!(
            "no ext2/3/4 superblock (magic at byte 1080 is {magic:#06x}, expected 0xef53); \
             is it a partitioned disk, another file system, or not a disk image at all?"
        ));
    }
    let log_block_size = le32(sb, 0x18);
    if log_block_size > 6 {
        return Err(format!(
            "corrupt superblock: block size 2^{} bytes",
            10 + log_block_size as u64
        ));
    }
    let block_size = 1024u64 << log_block_size;
    if block_size > 4096 {
        return Err(format!(
            "block size {block_size} is larger than the guest's 4096-byte pages, so Linux cannot \
             mount it (recreate with `mke2fs -b 4096`)"
        ));
    }
    let compat = le32(sb, 0x5C);
    let incompat = le32(sb, 0x60);
    let ro_compat = le32(sb, 0x64);
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return Err("this is an external journal device, not a file system".into());
    }
    let unknown = incompat & !INCOMPAT_SUPPORTED;
    if unknown != 0 {
        return Err(format!(
            "it uses incompatible features Linux 6.1 cannot mount (s_feature_incompat bits {unknown:#x})"
        ));
    }
    let unknown_ro = ro_compat & !RO_COMPAT_SUPPORTED;
    if unknown_ro != 0 {
        return Err(format!(
            "it uses features that make Linux 6.1 mount it read-only (s_feature_ro_compat bits \
             {unknown_ro:#x}); a root disk must be writable"
        ));
    }
    let state = le16(sb, 0x3A);
    if state & STATE_ERRORS != 0 {
        return Err(
            "the superblock records file system errors: run `e2fsck -f` on it first".into(),
        );
    }
    let inodes = le32(sb, 0x00);
    let mut blocks = u64::from(le32(sb, 0x04));
    if incompat & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(le32(sb, 0x150)) << 32;
    }
    if inodes == 0 || blocks == 0 {
        return Err(format!(
            "corrupt superblock: {inodes} inodes, {blocks} blocks"
        ));
    }
    let kind = if incompat & INCOMPAT_EXTENTS != 0 {
        "ext4"
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    };
    let label_bytes = &sb[0x78..0x88];
    let label_end = label_bytes.iter().position(|&b| b == 0).unwrap_or(16);
    let label = String::from_utf8_lossy(&label_bytes[..label_end]).into_owned();
    let u = &sb[0x68..0x78];
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        hex::encode(&u[0..4]),
        hex::encode(&u[4..6]),
        hex::encode(&u[6..8]),
        hex::encode(&u[8..10]),
        hex::encode(&u[10..16])
    );
    Ok(Ext4Info {
        kind,
        block_size,
        blocks,
        fs_bytes: blocks.saturating_mul(block_size),
        label,
        uuid,
    })
}

/// Checks that `path` is a kernel kumo-vmm can load: an x86_64 ELF vmlinux or a bzImage.
pub fn check_kernel(path: &Path) -> Result<KernelFormat, ValidationError> {
    let bytes = open_regular(path)?;
    identify_kernel(&bytes).map_err(|problem| match problem {
        KernelProblem::Io(e) => ValidationError::Unreadable {
            path: path.to_owned(),
            source: e,
        },
        KernelProblem::NotAKernel(detail) => ValidationError::NotAKernel {
            path: path.to_owned(),
            detail,
        },
        KernelProblem::Unsupported(reason) => ValidationError::UnsupportedKernel {
            path: path.to_owned(),
            reason,
        },
    })
}

#[derive(Debug)]
enum KernelProblem {
    Io(io::Error),
    NotAKernel(String),
    Unsupported(String),
}

impl From<io::Error> for KernelProblem {
    fn from(e: io::Error) -> Self {
        KernelProblem::Io(e)
    }
}

fn identify_kernel<B: Bytes + ?Sized>(bytes: &B) -> Result<KernelFormat, KernelProblem> {
    let mut head = [0u8; 16];
    let got = bytes.read_at(0, &mut head)?;
    if got && head[..4] == *b"\x7fELF" {
        return identify_elf(bytes);
    }
    let mut setup = [0u8; 0x260];
    if bytes.read_at(0, &mut setup)?
        && le16(&setup, 0x1FE) == 0xAA55
        && setup[0x202..0x206] == *b"HdrS"
    {
        return identify_bzimage(bytes, &setup);
    }
    let n = bytes.len().min(4) as usize;
    let mut first = [0u8; 4];
    bytes.read_at(0, &mut first[..n])?;
    Err(KernelProblem::NotAKernel(if n == 0 {
        "the file is empty".into()
    } else {
        format!(
            "it starts with bytes {}, not an ELF or bzImage header",
            hex::encode(&first[..n])
        )
    }))
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn identify_elf<B: Bytes + ?Sized>(bytes: &B) -> Result<KernelFormat, KernelProblem> {
    let mut eh = [0u8; 64];
    if !bytes.read_at(0, &mut eh)? {
        return Err(KernelProblem::NotAKernel(
            "an ELF file too short to hold its header".into(),
        ));
    }
    if eh[4] != 2 {
        return Err(KernelProblem::Unsupported(
            "a 32-bit ELF file: kumo boots x86_64 kernels (vmlinux built with CONFIG_64BIT)".into(),
        ));
    }
    if eh[5] != 1 {
        return Err(KernelProblem::Unsupported(
            "a big-endian ELF file: kumo boots x86_64 kernels".into(),
        ));
    }
    let e_type = le16(&eh, 16);
    let e_machine = le16(&eh, 18);
    if e_machine != 62 {
        return Err(KernelProblem::Unsupported(format!(
            "an ELF file for machine {e_machine}, not x86_64 (62)"
        )));
    }
    if e_type != 2 {
        return Err(KernelProblem::Unsupported(format!(
            "an ELF file of type {e_type}, not an executable (2): a kernel module or object file?"
        )));
    }
    let phoff = le64(&eh, 32);
    let phentsize = u64::from(le16(&eh, 54));
    let phnum = u64::from(le16(&eh, 56));
    if phentsize < 56 || phnum == 0 {
        return Err(KernelProblem::Unsupported(
            "an ELF executable with no program headers to load".into(),
        ));
    }
    let mut loads = 0;
    let mut pvh = false;
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        let at = phoff.saturating_add(i.saturating_mul(phentsize));
        if !bytes.read_at(at, &mut ph)? {
            return Err(KernelProblem::Unsupported(
                "truncated ELF file: its program headers run past the end".into(),
            ));
        }
        let p_type = le32(&ph, 0);
        let p_offset = le64(&ph, 8);
        let p_filesz = le64(&ph, 32);
        if p_offset
            .checked_add(p_filesz)
            .is_none_or(|end| end > bytes.len())
        {
            return Err(KernelProblem::Unsupported(format!(
                "truncated ELF file: segment {i} ends past the end of the file ({} bytes); copy it again",
                bytes.len()
            )));
        }
        match p_type {
            PT_LOAD => loads += 1,
            PT_NOTE if p_filesz <= 1 << 20 => {
                let mut notes = vec![0u8; p_filesz as usize];
                if bytes.read_at(p_offset, &mut notes)? && has_pvh_note(&notes) {
                    pvh = true;
                }
            }
            _ => {}
        }
    }
    if loads == 0 {
        return Err(KernelProblem::Unsupported(
            "an ELF executable with no loadable segment".into(),
        ));
    }
    Ok(KernelFormat::Elf { pvh })
}

/// Whether an ELF note segment holds a "Xen" note of type XEN_ELFNOTE_PHYS32_ENTRY.
fn has_pvh_note(mut notes: &[u8]) -> bool {
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
    while notes.len() >= 12 {
        let namesz = le32(notes, 0) as usize;
        let descsz = le32(notes, 4) as usize;
        let n_type = le32(notes, 8);
        let (Some(name_len), Some(desc_len)) = (align4(namesz), align4(descsz)) else {
            return false;
        };
        let Some(total) = 12usize
            .checked_add(name_len)
            .and_then(|v| v.checked_add(desc_len))
        else {
            return false;
        };
        if total > notes.len() {
            return false;
        }
        let name = &notes[12..12 + namesz];
        if n_type == XEN_ELFNOTE_PHYS32_ENTRY && name.strip_suffix(b"\0").unwrap_or(name) == b"Xen"
        {
            return true;
        }
        notes = &notes[total..];
    }
    false
}

fn identify_bzimage<B: Bytes + ?Sized>(
    bytes: &B,
    setup: &[u8; 0x260],
) -> Result<KernelFormat, KernelProblem> {
    let protocol = le16(setup, 0x206);
    if protocol < 0x0200 {
        return Err(KernelProblem::Unsupported(format!(
            "a bzImage with boot protocol {protocol:#06x}; kumo needs 2.00 or later"
        )));
    }
    let loadflags = setup[0x211];
    if loadflags & 0x1 == 0 {
        return Err(KernelProblem::Unsupported(
            "a zImage that loads low (LOADED_HIGH not set); kumo loads bzImages only".into(),
        ));
    }
    let setup_sects = match setup[0x1F1] {
        0 => 4,
        n => u64::from(n),
    };
    let syssize = u64::from(le32(setup, 0x1F4));
    let expected = (setup_sects + 1) * 512 + syssize * 16;
    if expected > bytes.len() {
        return Err(KernelProblem::Unsupported(format!(
            "truncated bzImage: its header says {expected} bytes, the file holds {}; copy it again",
            bytes.len()
        )));
    }
    Ok(KernelFormat::BzImage { protocol })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal superblock: `blocks` blocks of 4 KiB, ext4 features, clean.
    pub(crate) fn superblock(blocks: u32) -> [u8; 1024] {
        let mut sb = [0u8; 1024];
        sb[0x00..0x04].copy_from_slice(&64u32.to_le_bytes());
        sb[0x04..0x08].copy_from_slice(&blocks.to_le_bytes());
        sb[0x18..0x1C].copy_from_slice(&2u32.to_le_bytes());
        sb[0x38..0x3A].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        sb[0x3A..0x3C].copy_from_slice(&1u16.to_le_bytes());
        sb[0x5C..0x60].copy_from_slice(&COMPAT_HAS_JOURNAL.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&(0x2u32 | 0x40 | 0x200).to_le_bytes());
        sb[0x64..0x68].copy_from_slice(&(0x1u32 | 0x2 | 0x400).to_le_bytes());
        sb[0x78..0x7D].copy_from_slice(b"rootf");
        sb
    }

    /// A disk image of `blocks` 4 KiB blocks (the data blocks are zero).
    pub(crate) fn disk_image(blocks: u32) -> Vec<u8> {
        let mut disk = vec![0u8; blocks as usize * 4096];
        disk[1024..2048].copy_from_slice(&superblock(blocks));
        disk
    }

    /// A minimal x86_64 ELF executable with one PT_LOAD and, if `pvh`, a Xen PVH note.
    pub(crate) fn elf_kernel(pvh: bool) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        // PT_LOAD: offset 0x100, 0x80 bytes.
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&0x100u64.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&0x80u64.to_le_bytes());
        // PT_NOTE at 0x180: namesz 4 "Xen\0", descsz 4, type 18 (or 17 without PVH).
        let ph = 64 + 56;
        f[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&0x180u64.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&20u64.to_le_bytes());
        let n = 0x180;
        f[n..n + 4].copy_from_slice(&4u32.to_le_bytes());
        f[n + 4..n + 8].copy_from_slice(&4u32.to_le_bytes());
        let ty = if pvh { XEN_ELFNOTE_PHYS32_ENTRY } else { 17 };
        f[n + 8..n + 12].copy_from_slice(&ty.to_le_bytes());
        f[n + 12..n + 16].copy_from_slice(b"Xen\0");
        f[n + 16..n + 20].copy_from_slice(&0x1000000u32.to_le_bytes());
        f
    }

    /// A minimal bzImage: a setup header and `payload` bytes of protected-mode code.
    pub(crate) fn bzimage(payload: usize) -> Vec<u8> {
        let setup_sects = 4u8;
        let mut f = vec![0u8; (setup_sects as usize + 1) * 512 + payload];
        f[0x1F1] = setup_sects;
        f[0x1F4..0x1F8].copy_from_slice(&((payload / 16) as u32).to_le_bytes());
        f[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        f[0x211] = 0x1;
        f
    }

    #[test]
    fn accepts_a_real_looking_superblock() {
        let info = parse_ext4_superblock(&superblock(4096)).unwrap();
        assert_eq!(info.kind, "ext4");
        assert_eq!(info.block_size, 4096);
        assert_eq!(info.fs_bytes, 16 << 20);
        assert_eq!(info.label, "rootf");
    }

    #[test]
    fn refuses_bad_superblocks_with_reasons() {
        let mut sb = superblock(16);
        sb[0x38] = 0;
        assert!(parse_ext4_superblock(&sb).unwrap_err().contains("0xef53"));

        let mut sb = superblock(16);
        sb[0x3A] = 0x2;
        assert!(parse_ext4_superblock(&sb).unwrap_err().contains("e2fsck"));

        let mut sb = superblock(16);
        sb[0x18] = 4; // 16 KiB blocks
        assert!(parse_ext4_superblock(&sb).unwrap_err().contains("4096"));

        let mut sb = superblock(16);
        sb[0x64..0x68].copy_from_slice(&0x1000u32.to_le_bytes());
        assert!(
            parse_ext4_superblock(&sb)
                .unwrap_err()
                .contains("read-only")
        );

        let mut sb = superblock(16);
        sb[0x60..0x64].copy_from_slice(&0x8u32.to_le_bytes());
        assert!(parse_ext4_superblock(&sb).unwrap_err().contains("journal"));

        let sb = superblock(0);
        assert!(parse_ext4_superblock(&sb).unwrap_err().contains("corrupt"));
    }

    #[test]
    fn check_root_disk_names_the_file_and_catches_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.ext4");
        std::fs::write(&good, disk_image(8)).unwrap();
        assert_eq!(check_root_disk(&good).unwrap().blocks, 8);

        let truncated = dir.path().join("cut.ext4");
        std::fs::write(&truncated, &disk_image(8)[..5 * 4096]).unwrap();
        let err = check_root_disk(&truncated).unwrap_err();
        assert!(
            matches!(err, ValidationError::TruncatedDisk { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("cut.ext4"), "{err}");

        let garbage = dir.path().join("garbage.img");
        std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
        let err = check_root_disk(&garbage).unwrap_err();
        assert!(err.to_string().contains("garbage.img"), "{err}");
        assert!(err.to_string().contains("mke2fs"), "{err}");

        let tiny = dir.path().join("tiny");
        std::fs::write(&tiny, b"abc").unwrap();
        assert!(matches!(
            check_root_disk(&tiny).unwrap_err(),
            ValidationError::NotExt4 { .. }
        ));

        let missing = dir.path().join("nope.ext4");
        let err = check_root_disk(&missing).unwrap_err();
        assert!(matches!(err, ValidationError::Missing { .. }));
        assert!(err.to_string().contains("nope.ext4"));

        assert!(matches!(
            check_root_disk(dir.path()).unwrap_err(),
            ValidationError::NotAFile { .. }
        ));
    }

    #[test]
    fn identifies_kernels() {
        assert_eq!(
            identify_kernel(elf_kernel(true).as_slice()).unwrap(),
            KernelFormat::Elf { pvh: true }
        );
        assert_eq!(
            identify_kernel(elf_kernel(false).as_slice()).unwrap(),
            KernelFormat::Elf { pvh: false }
        );
        assert_eq!(
            identify_kernel(bzimage(4096).as_slice()).unwrap(),
            KernelFormat::BzImage { protocol: 0x020f }
        );
    }

    #[test]
    fn refuses_non_kernels_with_reasons() {
        let err = |b: &[u8]| identify_kernel(b).unwrap_err();
        assert!(matches!(err(b""), KernelProblem::NotAKernel(d) if d.contains("empty")));
        assert!(matches!(err(b"#!/bin/sh\n"), KernelProblem::NotAKernel(d) if d.contains("2321")));

        let mut elf32 = elf_kernel(true);
        elf32[4] = 1;
        assert!(matches!(err(&elf32), KernelProblem::Unsupported(r) if r.contains("32-bit")));

        let mut arm = elf_kernel(true);
        arm[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert!(matches!(err(&arm), KernelProblem::Unsupported(r) if r.contains("183")));

        let mut object = elf_kernel(true);
        object[16..18].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(err(&object), KernelProblem::Unsupported(r) if r.contains("module")));

        let cut = &elf_kernel(true)[..0x140];
        assert!(matches!(err(cut), KernelProblem::Unsupported(r) if r.contains("truncated")));

        let cut = &bzimage(4096)[..3000];
        assert!(matches!(err(cut), KernelProblem::Unsupported(r) if r.contains("truncated")));

        let mut low = bzimage(64);
        low[0x211] = 0;
        assert!(matches!(err(&low), KernelProblem::Unsupported(r) if r.contains("LOADED_HIGH")));
    }

    #[test]
    fn check_kernel_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-kernel.txt");
        std::fs::write(&path, b"hello world").unwrap();
        let err = check_kernel(&path).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("not-a-kernel.txt") && msg.contains("vmlinux"),
            "{msg}"
        );
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, elf_kernel(true)).unwrap();
        assert_eq!(
            check_kernel(&path).unwrap(),
            KernelFormat::Elf { pvh: true }
        );
    }

    proptest! {
        #[test]
        fn superblock_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 1024)) {
            let sb: [u8; 1024] = bytes.try_into().unwrap();
            let _ = parse_ext4_superblock(&sb);
        }

        #[test]
        fn superblock_mutations_never_panic(at in 0usize..1024, value: u8) {
            let mut sb = superblock(4096);
            sb[at] = value;
            let _ = parse_ext4_superblock(&sb);
        }

        #[test]
        fn kernel_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = identify_kernel(bytes.as_slice());
        }

        #[test]
        fn mutated_kernels_never_panic(at in 0usize..0x200, value: u8, bz in any::<bool>()) {
            let mut k = if bz { bzimage(256) } else { elf_kernel(true) };
            k[at] = value;
            let _ = identify_kernel(k.as_slice());
        }
    }
}
