//! virtio-blk request handling through the transport, with `virtio_queue::mock` rings.

use std::io::{Read, Seek, SeekFrom, Write};

use proptest::prelude::*;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::block::{Block, BlockCounters, Request, SECTOR_SIZE, parse_request};
use super::chain::{ChainLayout, Segment};
use super::test_utils::*;
use super::{GuestMemory, MmioTransport};

const NEXT: u32 = VRING_DESC_F_NEXT;
const WRITE: u32 = VRING_DESC_F_WRITE;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x10_1000;
const STATUS: u64 = 0x10_8000;
const DISK_SECTORS: u64 = 64;

struct Rig {
    mem: GuestMemory,
    image: tempfile::NamedTempFile,
}

impl Rig {
    fn new() -> Self {
        let mut image = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..DISK_SECTORS * SECTOR_SIZE)
            .map(|i| (i / SECTOR_SIZE) as u8)
            .collect();
        image.write_all(&content).unwrap();
        Rig {
            mem: guest_memory(),
            image,
        }
    }

    /// A running transport with a virtio-blk device on the image and its queue at 0x1000.
    fn start(
        &self,
        read_only: bool,
    ) -> (
        MmioTransport,
        MockSplitQueue<'_, GuestMemory>,
        std::sync::Arc<super::BlockStats>,
    ) {
        let block = Block::new(self.image.path(), read_only).unwrap();
        let stats = block.stats();
        let mut t = MmioTransport::new(Box::new(block), self.mem.clone()).unwrap();
        let features = (1 << VIRTIO_BLK_F_FLUSH) | if read_only { 1 << VIRTIO_BLK_F_RO } else { 0 };
        negotiate(&mut t, features);
        let vq = MockSplitQueue::create(&self.mem, GuestAddress(0x1000), 16);
        setup_queue(&mut t, 0, &vq);
        driver_ok(&mut t);
        assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        (t, vq, stats)
    }

    fn header(&self, request_type: u32, sector: u64) {
        self.mem.write_obj(request_type, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        self.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn disk(&self) -> Vec<u8> {
        let mut file = self.image.reopen().unwrap();
        let mut content = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut content).unwrap();
        content
    }
}

/// Adds one chain at descriptor index `at`, processes the queue and returns the used entry.
fn run(
    t: &mut MmioTransport,
    rig: &Rig,
    vq: &MockSplitQueue<'_, GuestMemory>,
    descs: &[virtio_queue::desc::RawDescriptor],
) -> (u32, u32) {
    let n = used_idx(&rig.mem, vq);
    vq.add_desc_chains(descs, 0).unwrap();
    t.process_queue_event(0);
    assert_eq!(used_idx(&rig.mem, vq), n + 1, "one chain returned");
    used_entry(&rig.mem, vq, n)
}

fn standard(data_len: u32, data_flags: u32) -> Vec<virtio_queue::desc::RawDescriptor> {
    vec![
        desc(HDR, 16, NEXT, 1),
        desc(DATA, data_len, data_flags | NEXT, 2),
        desc(STATUS, 1, WRITE, 0),
    ]
}

#[test]
fn write_then_read_back_reaches_the_file() {
    let rig = Rig::new();
    let (mut t, vq, stats) = rig.start(false);
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    rig.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    rig.header(VIRTIO_BLK_T_OUT, 5);
    assert_eq!(run(&mut t, &rig, &vq, &standard(1024, 0)), (0, 1));
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    let disk = rig.disk();
    assert_eq!(&disk[5 * 512..7 * 512], &pattern[..]);
    assert_eq!(disk[4 * 512], 4, "neighbours untouched");
    assert_eq!(disk[7 * 512], 7);

    rig.mem
        .write_slice(&[0u8; 1024], GuestAddress(DATA))
        .unwrap();
    rig.header(VIRTIO_BLK_T_IN, 5);
    assert_eq!(run(&mut t, &rig, &vq, &standard(1024, WRITE)), (0, 1025));
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    let mut back = vec![0u8; 1024];
    rig.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, pattern);
    assert_eq!(
        stats.snapshot(),
        BlockCounters {
            reads: 1,
            writes: 1,
            read_bytes: 1024,
            write_bytes: 1024,
            ..Default::default()
        }
    );
    assert_eq!(read_reg(&mut t, 0x60), 1, "used-ring interrupt");
}

#[test]
fn requests_may_split_data_and_status_any_way() {
    let rig = Rig::new();
    let (mut t, vq, _) = rig.start(false);
    // Header split over two descriptors, data over three, status in the last data descriptor.
    rig.header(VIRTIO_BLK_T_IN, 2);
    let descs = [
        desc(HDR, 10, NEXT, 1),
        desc(HDR + 10, 6, NEXT, 2),
        desc(DATA, 100, WRITE | NEXT, 3),
        desc(DATA + 0x1000, 412, WRITE | NEXT, 4),
        desc(STATUS - 512, 513, WRITE, 0),
    ];
    assert_eq!(run(&mut t, &rig, &vq, &descs), (0, 1025));
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    let mut first = [0u8; 100];
    rig.mem.read_slice(&mut first, GuestAddress(DATA)).unwrap();
    assert_eq!(first, [2u8; 100]);
    let mut second = [0u8; 512];
    rig.mem
        .read_slice(&mut second, GuestAddress(STATUS - 512))
        .unwrap();
    assert_eq!(second, [3u8; 512]);
}

#[test]
fn indirect_descriptors_work() {
    let rig = Rig::new();
    let (mut t, vq, _) = rig.start(false);
    rig.header(VIRTIO_BLK_T_IN, 9);
    let table = 0x18_0000;
    for (i, d) in standard(512, WRITE).iter().enumerate() {
        rig.mem
            .write_obj(*d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    assert_eq!(
        run(
            &mut t,
            &rig,
            &vq,
            &[desc(table, 48, VRING_DESC_F_INDIRECT, 0)]
        ),
        (0, 513)
    );
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(rig.mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 9);
}

#[test]
fn read_only_disks_fail_writes_with_ioerr() {
    let rig = Rig::new();
    let (mut t, vq, stats) = rig.start(true);
    write_reg(&mut t, 0x14, 0);
    assert_ne!(read_reg(&mut t, 0x10) & (1 << VIRTIO_BLK_F_RO), 0);
    rig.mem
        .write_slice(&[0xaa; 512], GuestAddress(DATA))
        .unwrap();
    rig.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(run(&mut t, &rig, &vq, &standard(512, 0)), (0, 1));
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(rig.disk()[0], 0, "file unchanged");
    // Reads and flushes still work.
    rig.header(VIRTIO_BLK_T_IN, 1);
    run(&mut t, &rig, &vq, &standard(512, WRITE));
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    run(
        &mut t,
        &rig,
        &vq,
        &[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
    );
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(stats.snapshot().io_errors, 1);
}

#[test]
fn out_of_range_and_unaligned_requests_fail_with_ioerr() {
    let rig = Rig::new();
    let (mut t, vq, stats) = rig.start(false);
    for (what, kind, sector, len, flags) in [
        (
            "read past the end",
            VIRTIO_BLK_T_IN,
            DISK_SECTORS - 1,
            1024,
            WRITE,
        ),
        ("write past the end", VIRTIO_BLK_T_OUT, DISK_SECTORS, 512, 0),
        ("sector overflow", VIRTIO_BLK_T_IN, u64::MAX, 512, WRITE),
        (
            "sector * 512 overflow",
            VIRTIO_BLK_T_OUT,
            u64::MAX / 2,
            512,
            0,
        ),
        ("partial sector read", VIRTIO_BLK_T_IN, 0, 100, WRITE),
        ("partial sector write", VIRTIO_BLK_T_OUT, 0, 513, 0),
        (
            "read into a device-readable buffer",
            VIRTIO_BLK_T_IN,
            0,
            512,
            0,
        ),
        (
            "write from a device-writable buffer",
            VIRTIO_BLK_T_OUT,
            0,
            512,
            WRITE,
        ),
    ] {
        rig.header(kind, sector);
        assert_eq!(run(&mut t, &rig, &vq, &standard(len, flags)).1, 1, "{what}");
        assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR as u8, "{what}");
    }
    // The very last sector is fine.
    rig.header(VIRTIO_BLK_T_IN, DISK_SECTORS - 1);
    run(&mut t, &rig, &vq, &standard(512, WRITE));
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(stats.snapshot().io_errors, 8);
    assert_eq!(&rig.disk()[..], &Rig::new().disk()[..], "nothing written");
}

#[test]
fn flush_get_id_and_unsupported_requests() {
    let rig = Rig::new();
    let block = Block::new(rig.image.path(), false).unwrap();
    let serial_default = {
        let mut t = MmioTransport::new(Box::new(block), rig.mem.clone()).unwrap();
        negotiate(&mut t, 0);
        let vq = MockSplitQueue::create(&rig.mem, GuestAddress(0x1000), 16);
        setup_queue(&mut t, 0, &vq);
        driver_ok(&mut t);
        rig.header(VIRTIO_BLK_T_GET_ID, 0);
        assert_eq!(run(&mut t, &rig, &vq, &standard(20, WRITE)), (0, 21));
        let mut id = [0u8; 20];
        rig.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        id
    };
    assert!(serial_default.starts_with(b"kumo"));

    let mut block = Block::new(rig.image.path(), false).unwrap();
    block.set_serial("vol-0123456789abcdef0");
    let mut t = MmioTransport::new(Box::new(block), rig.mem.clone()).unwrap();
    negotiate(&mut t, 1 << VIRTIO_BLK_F_FLUSH);
    let vq = MockSplitQueue::create(&rig.mem, GuestAddress(0x1000), 16);
    setup_queue(&mut t, 0, &vq);
    driver_ok(&mut t);
    rig.header(VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(run(&mut t, &rig, &vq, &standard(64, WRITE)), (0, 21));
    let mut id = [0u8; 20];
    rig.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"vol-0123456789abcdef", "truncated to 20 bytes");
    // A short buffer gets what fits.
    rig.header(VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(run(&mut t, &rig, &vq, &standard(4, WRITE)), (0, 5));

    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    let flush = [desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)];
    assert_eq!(run(&mut t, &rig, &vq, &flush), (0, 1));
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);

    for unsupported in [2, 11, 13, 0x8000_0000] {
        rig.header(unsupported, 0);
        assert_eq!(run(&mut t, &rig, &vq, &flush), (0, 1));
        assert_eq!(
            rig.status(),
            VIRTIO_BLK_S_UNSUPP as u8,
            "type {unsupported}"
        );
    }
}

#[test]
fn capacity_is_in_config_space() {
    let rig = Rig::new();
    let (mut t, _, _) = rig.start(false);
    let mut capacity = [0u8; 8];
    crate::devices::bus::BusDevice::read(&mut t, 0x100, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), DISK_SECTORS);
    assert_eq!(read_reg(&mut t, 0x104), 0, "high half");
    assert_eq!(read_reg(&mut t, 0x10c), 254, "seg_max");
}

#[test]
fn malicious_chains_fail_that_request_only() {
    let rig = Rig::new();
    let (mut t, vq, stats) = rig.start(false);
    let end = MEM_SIZE as u64;
    let cases: Vec<(&str, Vec<_>, u32, Option<u32>)> = vec![
        (
            "loop",
            vec![desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE | NEXT, 0)],
            0,
            None,
        ),
        (
            "next index outside the table",
            vec![desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE | NEXT, 99)],
            0,
            None,
        ),
        (
            "readable after writable",
            vec![
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 512, WRITE | NEXT, 2),
                desc(STATUS, 1, 0, 0),
            ],
            0,
            None,
        ),
        (
            "no writable status byte",
            vec![desc(HDR, 16, NEXT, 1), desc(STATUS, 1, 0, 0)],
            0,
            None,
        ),
        (
            "status outside memory",
            vec![desc(HDR, 16, NEXT, 1), desc(end, 1, WRITE, 0)],
            0,
            None,
        ),
        (
            "header outside memory",
            vec![desc(end - 8, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "short header",
            vec![desc(HDR, 8, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "read into memory that is not there",
            vec![
                desc(HDR, 16, NEXT, 1),
                desc(end - 256, 512, WRITE | NEXT, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
            1,
            Some(VIRTIO_BLK_S_IOERR),
        ),
        (
            "indirect table outside memory",
            vec![desc(end + 0x1000, 48, VRING_DESC_F_INDIRECT, 0)],
            0,
            None,
        ),
        (
            "indirect table of odd length",
            vec![desc(0x18_0000, 47, VRING_DESC_F_INDIRECT, 0)],
            0,
            None,
        ),
    ];
    for (what, descs, used_len, status) in cases {
        rig.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&mut t, &rig, &vq, &descs).1, used_len, "{what}");
        if let Some(status) = status {
            assert_eq!(rig.status(), status as u8, "{what}");
        }
        assert_eq!(
            t.status() & VIRTIO_CONFIG_S_NEEDS_RESET,
            0,
            "{what}: the device keeps working"
        );
    }
    let counters = stats.snapshot();
    assert_eq!(counters.invalid_chains, 7);
    assert_eq!(counters.io_errors, 3);
    // And a good request still works afterwards.
    rig.header(VIRTIO_BLK_T_IN, 3);
    assert_eq!(run(&mut t, &rig, &vq, &standard(512, WRITE)).1, 513);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn a_locked_image_cannot_be_attached_twice_for_writing() {
    let rig = Rig::new();
    let _first = Block::new(rig.image.path(), false).unwrap();
    let err = Block::new(rig.image.path(), false).unwrap_err();
    assert!(err.to_string().contains("in use by another VM"), "{err}");
    assert!(Block::new(rig.image.path(), true).is_err());
    let missing = Block::new("/nonexistent/kumo-disk.img", true).unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/kumo-disk.img"));
}

#[test]
fn read_only_images_can_be_shared_between_readers() {
    let rig = Rig::new();
    let _first = Block::new(rig.image.path(), true).unwrap();
    assert!(Block::new(rig.image.path(), true).is_ok());
    assert!(Block::new(rig.image.path(), false).is_err());
}

fn segment() -> impl Strategy<Value = Segment> {
    (
        prop_oneof![
            0u64..(MEM_SIZE as u64 + 0x1000),
            Just(HDR),
            Just(DATA),
            Just(u64::MAX - 4)
        ],
        prop_oneof![
            0u32..2048,
            Just(16u32),
            Just(512u32),
            Just(1u32),
            any::<u32>()
        ],
    )
        .prop_map(|(addr, len)| Segment {
            addr: GuestAddress(addr),
            len,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the layout and header, the parser never panics, and what it lets through is
    /// inside the disk, whole sectors, in guest memory, and never a write to a read-only disk.
    #[test]
    fn request_parser_only_accepts_safe_requests(
        readable in proptest::collection::vec(segment(), 0..4),
        writable in proptest::collection::vec(segment(), 1..4),
        request_type in prop_oneof![0u32..16, Just(VIRTIO_BLK_T_OUT), any::<u32>()],
        sector in prop_oneof![0u64..80, any::<u64>()],
        read_only in any::<bool>(),
    ) {
        let mem = guest_memory();
        mem.write_obj(request_type, GuestAddress(HDR)).unwrap();
        mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        let layout = ChainLayout { readable, writable };
        prop_assume!(layout.writable_len() >= 1);
        match parse_request(&mem, &layout, DISK_SECTORS, read_only) {
            request @ (Request::Read { .. } | Request::Write { .. }) => {
                let (Request::Read { offset, len, data } | Request::Write { offset, len, data }) =
                    &request
                else {
                    unreachable!()
                };
                prop_assert!(len % SECTOR_SIZE == 0);
                prop_assert!(offset % SECTOR_SIZE == 0);
                prop_assert!(offset + len <= DISK_SECTORS * SECTOR_SIZE);
                prop_assert!(super::chain::in_memory(&mem, data));
                prop_assert_eq!(super::chain::total_len(data), *len);
                let is_read = matches!(request, Request::Read { .. });
                if is_read {
                    prop_assert_eq!(layout.readable_len(), 16, "read with device-readable data");
                } else {
                    prop_assert_eq!(layout.writable_len(), 1, "write with device-writable data");
                }
                prop_assert!(is_read || !read_only, "write accepted on a read-only disk");
            }
            Request::GetId { len, data } => {
                prop_assert!(len > 0);
                prop_assert!(super::chain::in_memory(&mem, &data));
            }
            Request::Flush => {}
            Request::Fail(code) => prop_assert!(
                code == VIRTIO_BLK_S_IOERR as u8 || code == VIRTIO_BLK_S_UNSUPP as u8
            ),
        }
    }

    /// Random bytes where the descriptor table and available ring are: the device returns or
    /// refuses every chain, never panics or hangs, and never writes outside the disk.
    #[test]
    fn garbage_rings_never_break_the_device(
        table in proptest::collection::vec(any::<u8>(), 16 * 16),
        ring in proptest::collection::vec(0u16..20, 16),
        avail_idx in 0u16..40,
        headers in proptest::collection::vec(any::<u8>(), 64),
    ) {
        let rig = Rig::new();
        let (mut t, vq, _) = rig.start(false);
        rig.mem.write_slice(&table, vq.desc_table_addr()).unwrap();
        for (i, head) in ring.iter().enumerate() {
            vq.avail().ring().ref_at(i).unwrap().store(*head);
        }
        // Headers and buffers the descriptors may point at.
        rig.mem.write_slice(&headers, GuestAddress(0)).unwrap();
        vq.avail().idx().store(avail_idx);
        t.process_queue_event(0);
        t.process_queue_event(0);
        prop_assert_eq!(rig.disk().len() as u64, DISK_SECTORS * SECTOR_SIZE);
    }
}
