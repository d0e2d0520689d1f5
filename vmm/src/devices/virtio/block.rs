//! virtio-blk over a raw disk image (a regular file or a block device).
//!
//! Requests (virtio spec 5.2.6): a 16-byte header (type, reserved, sector) the device reads,
//! the data, and a status byte the device writes as the last byte of the chain. Supported:
//! `VIRTIO_BLK_T_IN` (read), `VIRTIO_BLK_T_OUT` (write), `VIRTIO_BLK_T_FLUSH` (fdatasync) and
//! `VIRTIO_BLK_T_GET_ID` (the 20-byte serial). Other types get `VIRTIO_BLK_S_UNSUPP`.
//!
//! A request fails with `VIRTIO_BLK_S_IOERR` when it writes to a read-only disk, reaches past
//! the disk's last sector, has a data length that is not a whole number of 512-byte sectors,
//! has its data buffers in the wrong direction (device-readable data in a read, device-writable
//! data in a write),
//! has a header shorter than 16 bytes, points its buffers outside guest memory, or when the host
//! I/O fails. A chain with no writable byte for the status, or one that is malformed (loops,
//! wrong direction), is returned with a used length of 0 and counted in
//! [`BlockCounters::invalid_chains`].
//!
//! The image is locked with `flock` (shared for read-only, exclusive otherwise) so that two VMs
//! cannot write the same disk.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use vm_memory::Bytes;

use super::chain::{self, ChainLayout, Segment};
use super::{DeviceError, GuestMemory, Queues, VirtioDevice};

/// Bytes in a virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of the request header (type u32, reserved u32, sector u64).
const HEADER_LEN: u64 = 16;
/// Bytes of the serial `VIRTIO_BLK_T_GET_ID` returns.
const SERIAL_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Why a disk could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "disk image {path} is in use by another VM (it is locked); stop that VM or use another image"
    )]
    Locked { path: PathBuf },
    #[error("cannot find the size of disk image {path}: {source}")]
    Size {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {path} is smaller than one 512-byte sector")]
    Empty { path: PathBuf },
}

/// Counters of one virtio-blk device; readable from any thread while the VM runs.
#[derive(Debug, Default)]
pub struct BlockStats {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    get_ids: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    io_errors: AtomicU64,
    unsupported: AtomicU64,
    invalid_chains: AtomicU64,
}

/// A snapshot of [`BlockStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BlockCounters {
    /// Read requests completed.
    pub reads: u64,
    /// Write requests completed.
    pub writes: u64,
    /// Flush requests completed.
    pub flushes: u64,
    /// Get-id requests completed.
    pub get_ids: u64,
    /// Bytes read from the image into the guest.
    pub read_bytes: u64,
    /// Bytes written from the guest to the image.
    pub write_bytes: u64,
    /// Requests failed with `VIRTIO_BLK_S_IOERR`.
    pub io_errors: u64,
    /// Requests failed with `VIRTIO_BLK_S_UNSUPP`.
    pub unsupported: u64,
    /// Chains returned unprocessed with used length 0 (malformed, or no status byte).
    pub invalid_chains: u64,
}

impl BlockStats {
    /// The current values.
    pub fn snapshot(&self) -> BlockCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockCounters {
            reads: get(&self.reads),
            writes: get(&self.writes),
            flushes: get(&self.flushes),
            get_ids: get(&self.get_ids),
            read_bytes: get(&self.read_bytes),
            write_bytes: get(&self.write_bytes),
            io_errors: get(&self.io_errors),
            unsupported: get(&self.unsupported),
            invalid_chains: get(&self.invalid_chains),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The request header as the guest wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestHeader {
    pub request_type: u32,
    pub sector: u64,
}

impl RequestHeader {
    pub(crate) fn parse(bytes: &[u8; HEADER_LEN as usize]) -> Self {
        let mut request_type = [0u8; 4];
        request_type.copy_from_slice(&bytes[0..4]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&bytes[8..16]);
        RequestHeader {
            request_type: u32::from_le_bytes(request_type),
            sector: u64::from_le_bytes(sector),
        }
    }
}

/// What a well-formed chain asks for, before any I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Read `len` bytes from byte `offset` of the disk into `data`.
    Read {
        offset: u64,
        len: u64,
        data: Vec<Segment>,
    },
    /// Write the bytes of `data` to byte `offset` of the disk.
    Write {
        offset: u64,
        len: u64,
        data: Vec<Segment>,
    },
    Flush,
    /// Write the serial into `data` (up to `len` bytes).
    GetId {
        len: u64,
        data: Vec<Segment>,
    },
    /// A request that fails with this status without touching the disk.
    Fail(u8),
}

/// Where the status byte of a chain is, if it has a usable one: the chain's last writable byte.
pub(crate) fn status_location(mem: &GuestMemory, layout: &ChainLayout) -> Option<Segment> {
    let writable = layout.writable_len();
    let (addr, _) = *chain::sub_ranges(&layout.writable, writable.checked_sub(1)?, 1).first()?;
    vm_memory::GuestMemoryBackend::check_range(mem, addr, 1).then_some(Segment { addr, len: 1 })
}

/// Turns a chain (whose status byte is known to be usable) into a [`Request`], checking
/// everything the guest controls: header, lengths, sector range, direction and memory.
pub(crate) fn parse_request(
    mem: &GuestMemory,
    layout: &ChainLayout,
    capacity_sectors: u64,
    read_only: bool,
) -> Request {
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    let mut header = [0u8; HEADER_LEN as usize];
    if layout.readable_len() < HEADER_LEN
        || chain::read_from(mem, &layout.readable, 0, &mut header).is_err()
    {
        return Request::Fail(IOERR);
    }
    let header = RequestHeader::parse(&header);
    // The writable bytes before the status byte, and the readable bytes after the header.
    let in_len = layout.writable_len() - 1;
    let out_len = layout.readable_len() - HEADER_LEN;
    let in_data = || -> Option<Vec<Segment>> {
        let data = to_segments(&layout.writable, 0, in_len);
        chain::in_memory(mem, &data).then_some(data)
    };
    let sector_range_ok = |len: u64| {
        len.is_multiple_of(SECTOR_SIZE)
            && header
                .sector
                .checked_add(len / SECTOR_SIZE)
                .is_some_and(|end| end <= capacity_sectors)
    };
    match header.request_type {
        VIRTIO_BLK_T_IN => {
            // Data the device would read in a read request is a buffer in the wrong direction.
            if out_len != 0 || !sector_range_ok(in_len) {
                return Request::Fail(IOERR);
            }
            match in_data() {
                Some(data) => Request::Read {
                    offset: header.sector * SECTOR_SIZE,
                    len: in_len,
                    data,
                },
                None => Request::Fail(IOERR),
            }
        }
        VIRTIO_BLK_T_OUT => {
            // A device-writable data buffer (besides the status) is in the wrong direction.
            if read_only || in_len != 0 || !sector_range_ok(out_len) {
                return Request::Fail(IOERR);
            }
            let data = to_segments(&layout.readable, HEADER_LEN, out_len);
            if !chain::in_memory(mem, &data) {
                return Request::Fail(IOERR);
            }
            Request::Write {
                offset: header.sector * SECTOR_SIZE,
                len: out_len,
                data,
            }
        }
        VIRTIO_BLK_T_FLUSH => Request::Flush,
        VIRTIO_BLK_T_GET_ID => {
            if in_len == 0 {
                return Request::Fail(IOERR);
            }
            match in_data() {
                Some(data) => Request::GetId { len: in_len, data },
                None => Request::Fail(IOERR),
            }
        }
        _ => Request::Fail(VIRTIO_BLK_S_UNSUPP as u8),
    }
}

fn to_segments(segments: &[Segment], start: u64, len: u64) -> Vec<Segment> {
    chain::sub_ranges(segments, start, len)
        .into_iter()
        .map(|(addr, len)| Segment {
            addr,
            len: len as u32,
        })
        .collect()
}

/// A virtio-blk device backed by a raw image.
pub struct Block {
    file: File,
    path: PathBuf,
    read_only: bool,
    capacity_sectors: u64,
    serial: [u8; SERIAL_LEN],
    stats: Arc<BlockStats>,
    queue_sizes: [u16; 1],
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .field("capacity_sectors", &self.capacity_sectors)
            .finish()
    }
}

impl Block {
    /// Opens the raw image at `path` (read-only if `read_only`) and locks it.
    ///
    /// The disk's capacity is the image's size in whole 512-byte sectors; the serial
    /// (`VIRTIO_BLK_T_GET_ID`) defaults to `kumo` and the image's device and inode numbers.
    pub fn new(path: impl AsRef<Path>, read_only: bool) -> Result<Self, BlockError> {
        let path = path.as_ref().to_path_buf();
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&path)
            .map_err(|source| BlockError::Open {
                path: path.clone(),
                source,
            })?;
        let lock = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a file descriptor we own; it touches no memory.
        if unsafe { libc::flock(file.as_raw_fd(), lock | libc::LOCK_NB) } != 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(BlockError::Locked { path });
            }
            return Err(BlockError::Open { path, source });
        }
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.clone(),
                source,
            })?;
        if size < SECTOR_SIZE {
            return Err(BlockError::Empty { path });
        }
        if size % SECTOR_SIZE != 0 {
            warn!(
                "disk image {} is {size} bytes, not a whole number of sectors: the last {} bytes are not visible to the guest",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        let serial = match file.metadata() {
            Ok(m) => format!("kumo{:08x}{:08x}", m.dev() as u32, m.ino() as u32),
            Err(_) => "kumo".to_string(),
        };
        let mut block = Block {
            file,
            path,
            read_only,
            capacity_sectors: size / SECTOR_SIZE,
            serial: [0; SERIAL_LEN],
            stats: Arc::default(),
            queue_sizes: [QUEUE_SIZE],
        };
        block.set_serial(&serial);
        Ok(block)
    }

    /// Sets the serial the guest reads with `VIRTIO_BLK_T_GET_ID` (at most 20 bytes are kept;
    /// shorter serials are NUL-padded), e.g. an EBS-style volume id.
    pub fn set_serial(&mut self, serial: &str) {
        self.serial = [0; SERIAL_LEN];
        let bytes = serial.as_bytes();
        let n = bytes.len().min(SERIAL_LEN);
        self.serial[..n].copy_from_slice(&bytes[..n]);
    }

    /// The disk's size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Whether the guest may write the disk.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The device's counters; keep a clone to read them while the VM runs.
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    /// Handles one chain; returns the used length to report.
    fn handle_chain(
        &mut self,
        mem: &GuestMemory,
        layout: Result<ChainLayout, chain::ChainError>,
    ) -> u32 {
        let layout = match layout {
            Ok(layout) => layout,
            Err(e) => {
                debug!("virtio-blk: {e}");
                bump(&self.stats.invalid_chains, 1);
                return 0;
            }
        };
        let Some(status) = status_location(mem, &layout) else {
            debug!("virtio-blk: request without a usable status byte");
            bump(&self.stats.invalid_chains, 1);
            return 0;
        };
        let request = parse_request(mem, &layout, self.capacity_sectors, self.read_only);
        let (code, written) = self.execute(mem, request);
        if mem.write_obj(code, status.addr).is_err() {
            bump(&self.stats.invalid_chains, 1);
            return 0;
        }
        // `written` is at most the writable length, which walk() capped below 4 GiB.
        (written + 1).min(u64::from(u32::MAX)) as u32
    }

    /// Runs a parsed request; returns the status and the data bytes written to the guest.
    fn execute(&mut self, mem: &GuestMemory, request: Request) -> (u8, u64) {
        const OK: u8 = VIRTIO_BLK_S_OK as u8;
        const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
        match request {
            Request::Read { offset, len, data } => match self.transfer(mem, offset, &data, false) {
                Ok(()) => {
                    bump(&self.stats.reads, 1);
                    bump(&self.stats.read_bytes, len);
                    (OK, len)
                }
                Err(e) => {
                    warn!("virtio-blk: reading {}: {e}", self.path.display());
                    bump(&self.stats.io_errors, 1);
                    (IOERR, 0)
                }
            },
            Request::Write { offset, len, data } => match self.transfer(mem, offset, &data, true) {
                Ok(()) => {
                    bump(&self.stats.writes, 1);
                    bump(&self.stats.write_bytes, len);
                    (OK, 0)
                }
                Err(e) => {
                    warn!("virtio-blk: writing {}: {e}", self.path.display());
                    bump(&self.stats.io_errors, 1);
                    (IOERR, 0)
                }
            },
            Request::Flush => {
                let result = if self.read_only {
                    Ok(())
                } else {
                    self.file.sync_data()
                };
                match result {
                    Ok(()) => {
                        bump(&self.stats.flushes, 1);
                        (OK, 0)
                    }
                    Err(e) => {
                        warn!("virtio-blk: flushing {}: {e}", self.path.display());
                        bump(&self.stats.io_errors, 1);
                        (IOERR, 0)
                    }
                }
            }
            Request::GetId { len, data } => {
                let n = (len as usize).min(SERIAL_LEN);
                match chain::write_to(mem, &data, 0, &self.serial[..n]) {
                    Ok(()) => {
                        bump(&self.stats.get_ids, 1);
                        (OK, n as u64)
                    }
                    Err(_) => {
                        bump(&self.stats.io_errors, 1);
                        (IOERR, 0)
                    }
                }
            }
            Request::Fail(code) => {
                if code == VIRTIO_BLK_S_UNSUPP as u8 {
                    bump(&self.stats.unsupported, 1);
                } else {
                    bump(&self.stats.io_errors, 1);
                }
                (code, 0)
            }
        }
    }

    /// Moves the bytes of `data` between guest memory and the image at byte `offset`.
    fn transfer(
        &mut self,
        mem: &GuestMemory,
        offset: u64,
        data: &[Segment],
        to_disk: bool,
    ) -> Result<(), vm_memory::GuestMemoryError> {
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(vm_memory::GuestMemoryError::IOError)?;
        for segment in data {
            let len = segment.len as usize;
            if to_disk {
                mem.write_all_volatile_to(segment.addr, &mut self.file, len)?;
            } else {
                mem.read_exact_volatile_from(segment.addr, &mut self.file, len)?;
            }
        }
        Ok(())
    }

    fn config_bytes(&self) -> [u8; 24] {
        let mut config = [0u8; 24];
        config[0..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        // size_max (8..12) stays 0: no limit on one segment's size.
        let seg_max = u32::from(QUEUE_SIZE) - 2;
        config[12..16].copy_from_slice(&seg_max.to_le_bytes());
        config
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        let mut features = (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX);
        if self.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn activate(&mut self, _acked_features: u64) -> Result<(), DeviceError> {
        Ok(())
    }

    fn reset(&mut self) {}

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut Queues<'_>,
    ) -> Result<bool, DeviceError> {
        if index != 0 {
            return Ok(false);
        }
        let mem = queues.mem();
        let budget = queues.size(0).max(1);
        for _ in 0..budget {
            let Some(chain) = queues.pop(0)? else {
                return Ok(false);
            };
            let (head, layout) = chain::walk(chain);
            let used_len = self.handle_chain(mem, layout);
            queues.add_used(0, head, used_len)?;
        }
        Ok(true)
    }
}

/// Copies `config[offset..]` into `data`; bytes past the end read as zero.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = (config.len() - start).min(data.len());
    data[..n].copy_from_slice(&config[start..start + n]);
}
