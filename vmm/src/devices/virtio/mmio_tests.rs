//! The virtio-mmio register state machine, driven the way a guest driver drives it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use proptest::prelude::*;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_NEXT};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::test_utils::*;
use super::{DeviceError, MmioTransport, Queues, VirtioDevice, chain};
use crate::devices::bus::BusDevice;

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;

/// What the test device saw.
#[derive(Default)]
struct Seen {
    activations: AtomicU32,
    resets: AtomicU32,
    acked: Mutex<u64>,
    config_writes: Mutex<Vec<(u64, Vec<u8>)>>,
}

/// A device with two queues (16 and 256 entries) that returns each chain with its readable
/// length, offers feature bit 3, and fails activation on demand.
struct EchoDevice {
    seen: Arc<Seen>,
    fail_activate: bool,
}

impl VirtioDevice for EchoDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 256]
    }
    fn device_features(&self) -> u64 {
        1 << 3
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::block::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.seen
            .config_writes
            .lock()
            .unwrap()
            .push((offset, data.to_vec()));
    }
    fn activate(&mut self, acked: u64) -> Result<(), DeviceError> {
        *self.seen.acked.lock().unwrap() = acked;
        self.seen.activations.fetch_add(1, Ordering::SeqCst);
        if self.fail_activate {
            return Err(DeviceError::Activate("refused by the test".into()));
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.seen.resets.fetch_add(1, Ordering::SeqCst);
    }
    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut Queues<'_>,
    ) -> Result<bool, DeviceError> {
        while let Some(c) = queues.pop(index)? {
            let (head, layout) = chain::walk(c);
            let len = layout.map_or(0, |l| l.readable_len() as u32);
            queues.add_used(index, head, len)?;
        }
        Ok(false)
    }
}

fn transport(mem: &super::GuestMemory) -> (MmioTransport, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let device = EchoDevice {
        seen: seen.clone(),
        fail_activate: false,
    };
    (
        MmioTransport::new(Box::new(device), mem.clone()).unwrap(),
        seen,
    )
}

#[test]
fn identification_registers() {
    let mem = guest_memory();
    let (mut t, _) = transport(&mem);
    assert_eq!(read_reg(&mut t, 0x00), 0x7472_6976);
    assert_eq!(read_reg(&mut t, 0x04), 2);
    assert_eq!(read_reg(&mut t, 0x08), 42);
    assert_eq!(read_reg(&mut t, 0x0c), u32::from_le_bytes(*b"KUMO"));
    // No shared memory regions: length -1.
    assert_eq!(read_reg(&mut t, 0xb0), u32::MAX);
    assert_eq!(read_reg(&mut t, 0xb4), u32::MAX);
    assert_eq!(read_reg(&mut t, 0xfc), 0);
}

#[test]
fn device_features_are_read_32_bits_at_a_time() {
    let mem = guest_memory();
    let (mut t, _) = transport(&mem);
    write_reg(&mut t, 0x14, 0);
    assert_eq!(
        read_reg(&mut t, 0x10),
        (1 << 3) | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    );
    write_reg(&mut t, 0x14, 1);
    assert_eq!(read_reg(&mut t, 0x10), 1 << (VIRTIO_F_VERSION_1 - 32));
    write_reg(&mut t, 0x14, 7);
    assert_eq!(read_reg(&mut t, 0x10), 0);
}

#[test]
fn negotiation_accepts_a_subset_with_version_1() {
    let mem = guest_memory();
    let (mut t, seen) = transport(&mem);
    assert_eq!(negotiate(&mut t, 1 << 3), ACK | DRIVER | FEATURES_OK);
    driver_ok(&mut t);
    assert_eq!(t.status(), ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    // Activation happens on the event loop, which the queue events wake.
    assert_eq!(seen.activations.load(Ordering::SeqCst), 0);
    assert_eq!(t.queue_events()[1].read().unwrap(), 1);
    t.process_queue_event(0);
    assert_eq!(seen.activations.load(Ordering::SeqCst), 1);
    t.process_queue_event(0);
    assert_eq!(seen.activations.load(Ordering::SeqCst), 1, "only once");
    assert_eq!(
        *seen.acked.lock().unwrap(),
        (1 << 3) | (1 << VIRTIO_F_VERSION_1)
    );
}

#[test]
fn features_ok_is_refused_for_unoffered_features_or_without_version_1() {
    let mem = guest_memory();
    let (mut t, _) = transport(&mem);
    // Bit 4 was not offered.
    assert_eq!(negotiate(&mut t, 1 << 4), ACK | DRIVER);
    // DRIVER_OK without FEATURES_OK is ignored, so the device never runs.
    driver_ok(&mut t);
    assert_eq!(t.status() & DRIVER_OK, 0);

    write_reg(&mut t, 0x70, 0);
    write_reg(&mut t, 0x70, ACK);
    write_reg(&mut t, 0x70, ACK | DRIVER);
    write_reg(&mut t, 0x24, 0);
    write_reg(&mut t, 0x20, 1 << 3);
    write_reg(&mut t, 0x70, ACK | DRIVER | FEATURES_OK);
    assert_eq!(read_reg(&mut t, 0x70), ACK | DRIVER, "no VERSION_1");

    // A feature word past bit 63.
    write_reg(&mut t, 0x70, 0);
    write_reg(&mut t, 0x70, ACK);
    write_reg(&mut t, 0x70, ACK | DRIVER);
    write_reg(&mut t, 0x24, 5);
    write_reg(&mut t, 0x20, 1);
    assert_eq!(negotiate(&mut t, 0) & FEATURES_OK, 0);
}

#[test]
fn status_bits_must_come_in_order_and_never_clear() {
    let mem = guest_memory();
    let (mut t, seen) = transport(&mem);
    write_reg(&mut t, 0x70, DRIVER);
    assert_eq!(t.status(), 0, "DRIVER before ACKNOWLEDGE");
    write_reg(&mut t, 0x70, ACK);
    write_reg(&mut t, 0x70, ACK | DRIVER | DRIVER_OK);
    assert_eq!(t.status(), ACK, "DRIVER_OK before FEATURES_OK");
    negotiate(&mut t, 0);
    write_reg(&mut t, 0x70, ACK);
    assert_eq!(t.status(), ACK | DRIVER | FEATURES_OK, "clearing bits");
    // The driver cannot set NEEDS_RESET itself.
    write_reg(&mut t, 0x70, ACK | DRIVER | FEATURES_OK | NEEDS_RESET);
    assert_eq!(t.status(), ACK | DRIVER | FEATURES_OK);
    // FAILED may be set at any time; the device stays stopped.
    write_reg(
        &mut t,
        0x70,
        ACK | DRIVER | FEATURES_OK | VIRTIO_CONFIG_S_FAILED,
    );
    assert_eq!(seen.activations.load(Ordering::SeqCst), 0);
}

#[test]
fn driver_features_are_only_written_during_negotiation() {
    let mem = guest_memory();
    let (mut t, seen) = transport(&mem);
    // Before DRIVER: ignored.
    write_reg(&mut t, 0x24, 0);
    write_reg(&mut t, 0x20, 1 << 3);
    write_reg(&mut t, 0x70, ACK);
    write_reg(&mut t, 0x70, ACK | DRIVER);
    write_reg(&mut t, 0x24, 1);
    write_reg(&mut t, 0x20, 1);
    write_reg(&mut t, 0x70, ACK | DRIVER | FEATURES_OK);
    // After FEATURES_OK: ignored.
    write_reg(&mut t, 0x24, 0);
    write_reg(&mut t, 0x20, 1 << 3);
    driver_ok(&mut t);
    t.process_queue_event(0);
    assert_eq!(*seen.acked.lock().unwrap(), 1 << VIRTIO_F_VERSION_1);
}

#[test]
fn queue_setup_through_registers_and_processing() {
    let mem = guest_memory();
    let (mut t, _) = transport(&mem);
    negotiate(&mut t, 0);
    write_reg(&mut t, 0x30, 0);
    assert_eq!(read_reg(&mut t, 0x34), 16);
    write_reg(&mut t, 0x30, 1);
    assert_eq!(read_reg(&mut t, 0x34), 256);
    write_reg(&mut t, 0x30, 2);
    assert_eq!(read_reg(&mut t, 0x34), 0, "no queue 2");

    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    setup_queue(&mut t, 0, &vq);
    assert_eq!(read_reg(&mut t, 0x44), 1);
    driver_ok(&mut t);
    assert_eq!(t.status() & NEEDS_RESET, 0);

    vq.add_desc_chains(
        &[
            desc(0x10_0000, 100, VRING_DESC_F_NEXT, 1),
            desc(0x10_1000, 28, 0, 0),
        ],
        0,
    )
    .unwrap();
    // The ioeventfd normally fires; here the guest's MMIO write to QueueNotify does the same.
    write_reg(&mut t, 0x50, 0);
    assert_eq!(
        t.queue_events()[0].read().unwrap(),
        2,
        "activation kick + notify"
    );
    t.queue_events()[0].write(1).unwrap();
    t.process_queue_event(0);
    assert_eq!(used_idx(&mem, &vq), 1);
    assert_eq!(used_entry(&mem, &vq, 0), (0, 128));
    assert_eq!(read_reg(&mut t, 0x60), 1, "used-ring interrupt");
    assert_eq!(t.interrupt_event().read().unwrap(), 1);
    write_reg(&mut t, 0x64, 1);
    assert_eq!(read_reg(&mut t, 0x60), 0, "acknowledged");

    // A notify for a queue that does not exist is ignored.
    write_reg(&mut t, 0x50, 9);
}

#[test]
fn queue_registers_are_ignored_outside_setup() {
    let mem = guest_memory();
    let (mut t, _) = transport(&mem);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    // Before FEATURES_OK.
    setup_queue(&mut t, 0, &vq);
    assert_eq!(read_reg(&mut t, 0x44), 0);
    negotiate(&mut t, 0);
    setup_queue(&mut t, 0, &vq);
    assert_eq!(read_reg(&mut t, 0x44), 1);
    // Changing a ready queue is ignored.
    write_reg(&mut t, 0x38, 4);
    driver_ok(&mut t);
    // After DRIVER_OK setup of the other queue is ignored too.
    let vq1 = MockSplitQueue::create(&mem, GuestAddress(0x8000), 256);
    setup_queue(&mut t, 1, &vq1);
    assert_eq!(read_reg(&mut t, 0x44), 0);
    assert_eq!(t.status() & NEEDS_RESET, 0);
}

fn ready_with(size: u32, desc_addr: u64, avail: u64, used: u64) -> MmioTransport {
    let mem = guest_memory();
    let (mut t, _) = transport(&mem);
    negotiate(&mut t, 0);
    write_reg(&mut t, 0x30, 0);
    write_reg(&mut t, 0x38, size);
    write_reg(&mut t, 0x80, desc_addr as u32);
    write_reg(&mut t, 0x84, (desc_addr >> 32) as u32);
    write_reg(&mut t, 0x90, avail as u32);
    write_reg(&mut t, 0x94, (avail >> 32) as u32);
    write_reg(&mut t, 0xa0, used as u32);
    write_reg(&mut t, 0xa4, (used >> 32) as u32);
    write_reg(&mut t, 0x44, 1);
    t
}

#[test]
fn invalid_queue_configurations_need_a_reset() {
    // A good configuration for reference.
    let mut t = ready_with(16, 0x1000, 0x2000, 0x3000);
    assert_eq!(read_reg(&mut t, 0x44), 1);
    assert_eq!(t.status() & NEEDS_RESET, 0);

    for (what, size, d, a, u) in [
        ("size 0", 0, 0x1000, 0x2000, 0x3000),
        ("size not a power of two", 12, 0x1000, 0x2000, 0x3000),
        ("size above the maximum", 32, 0x1000, 0x2000, 0x3000),
        ("size above 16 bits", 0x1_0010, 0x1000, 0x2000, 0x3000),
        ("misaligned descriptor table", 16, 0x1008, 0x2000, 0x3000),
        ("misaligned available ring", 16, 0x1000, 0x2001, 0x3000),
        ("misaligned used ring", 16, 0x1000, 0x2000, 0x3002),
        (
            "descriptor table outside memory",
            16,
            0x1_0000_0000,
            0x2000,
            0x3000,
        ),
        (
            "used ring past the end of memory",
            16,
            0x1000,
            0x2000,
            (MEM_SIZE - 8) as u64,
        ),
    ] {
        let mut t = ready_with(size, d, a, u);
        assert_eq!(read_reg(&mut t, 0x44), 0, "{what}: queue must not be ready");
        assert_ne!(t.status() & NEEDS_RESET, 0, "{what}: NEEDS_RESET");
        // The driver goes on to DRIVER_OK: the device does not run while it needs a reset.
        driver_ok(&mut t);
        assert_ne!(t.status() & NEEDS_RESET, 0, "{what}");
        // A reset recovers.
        write_reg(&mut t, 0x70, 0);
        assert_eq!(t.status(), 0, "{what}");
    }
}

#[test]
fn reset_returns_every_register_to_its_initial_state() {
    let mem = guest_memory();
    let (mut t, seen) = transport(&mem);
    negotiate(&mut t, 1 << 3);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    setup_queue(&mut t, 0, &vq);
    driver_ok(&mut t);
    vq.add_desc_chains(&[desc(0x10_0000, 8, 0, 0)], 0).unwrap();
    t.process_queue_event(0);
    assert_eq!(read_reg(&mut t, 0x60), 1);

    write_reg(&mut t, 0x70, 0);
    assert_eq!(seen.resets.load(Ordering::SeqCst), 1);
    assert_eq!(read_reg(&mut t, 0x70), 0);
    assert_eq!(read_reg(&mut t, 0x60), 0);
    write_reg(&mut t, 0x30, 0);
    assert_eq!(read_reg(&mut t, 0x44), 0);
    // A device that was reset processes nothing until set up again.
    vq.add_desc_chains(&[desc(0x10_0000, 8, 0, 0)], 1).unwrap();
    t.process_queue_event(0);
    assert_eq!(used_idx(&mem, &vq), 1);

    // And it can be brought up again; the new queue starts from index 0.
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    negotiate(&mut t, 0);
    setup_queue(&mut t, 0, &vq);
    driver_ok(&mut t);
    vq.add_desc_chains(&[desc(0x10_0000, 8, 0, 0)], 0).unwrap();
    t.process_queue_event(0);
    assert_eq!(used_idx(&mem, &vq), 1);
    assert_eq!(seen.activations.load(Ordering::SeqCst), 2);
}

#[test]
fn failed_activation_needs_a_reset_and_raises_a_config_interrupt() {
    let mem = guest_memory();
    let seen = Arc::new(Seen::default());
    let device = EchoDevice {
        seen: seen.clone(),
        fail_activate: true,
    };
    let mut t = MmioTransport::new(Box::new(device), mem.clone()).unwrap();
    negotiate(&mut t, 0);
    driver_ok(&mut t);
    t.process_queue_event(1);
    assert_ne!(t.status() & NEEDS_RESET, 0);
    assert_eq!(read_reg(&mut t, 0x60), 2, "config-change interrupt");
    assert_eq!(seen.activations.load(Ordering::SeqCst), 1);
}

#[test]
fn broken_ring_state_needs_a_reset_and_the_vmm_goes_on() {
    let mem = guest_memory();
    let (mut t, _) = transport(&mem);
    negotiate(&mut t, 0);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    setup_queue(&mut t, 0, &vq);
    driver_ok(&mut t);
    // The driver claims 40 new buffers in a 16-entry ring.
    vq.avail().idx().store(40);
    t.process_queue_event(0);
    assert_ne!(t.status() & NEEDS_RESET, 0);
    assert_eq!(read_reg(&mut t, 0x60) & 2, 2);
    // Nothing is processed any more, however often the guest notifies.
    for _ in 0..3 {
        write_reg(&mut t, 0x50, 0);
        t.process_queue_event(0);
    }
    assert_eq!(used_idx(&mem, &vq), 0);

    // A head index outside the queue also needs a reset.
    let mem = guest_memory();
    let (mut t, _) = transport(&mem);
    negotiate(&mut t, 0);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    setup_queue(&mut t, 0, &vq);
    driver_ok(&mut t);
    vq.avail().ring().ref_at(0).unwrap().store(200);
    vq.avail().idx().store(1);
    t.process_queue_event(0);
    assert_ne!(t.status() & NEEDS_RESET, 0);
}

#[test]
fn non_32_bit_register_accesses_are_ignored() {
    let mem = guest_memory();
    let (mut t, _) = transport(&mem);
    let mut byte = [0xffu8; 1];
    t.read(0x00, &mut byte);
    assert_eq!(byte, [0]);
    let mut word = [0xffu8; 8];
    t.read(0x00, &mut word);
    assert_eq!(word, [0; 8]);
    let mut misaligned = [0xffu8; 4];
    t.read(0x02, &mut misaligned);
    assert_eq!(misaligned, [0; 4]);
    t.write(0x70, &[1]);
    t.write(0x70, &[1, 0]);
    t.write(0x71, &[1, 0, 0, 0]);
    assert_eq!(t.status(), 0);
}

#[test]
fn config_space_takes_any_width() {
    let mem = guest_memory();
    let (mut t, seen) = transport(&mem);
    let mut buf = [0u8; 8];
    t.read(0x100, &mut buf);
    assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8]);
    let mut one = [0u8; 1];
    t.read(0x105, &mut one);
    assert_eq!(one, [6]);
    let mut past = [0xffu8; 4];
    t.read(0x106, &mut past);
    assert_eq!(past, [7, 8, 0, 0]);
    t.read(0xfff, &mut one);
    assert_eq!(one, [0]);
    t.write(0x102, &[9, 9]);
    assert_eq!(*seen.config_writes.lock().unwrap(), vec![(2, vec![9, 9])]);
}

#[test]
fn event_manager_drives_queue_events() {
    let mem = guest_memory();
    let (mut t, _) = transport(&mem);
    negotiate(&mut t, 0);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    setup_queue(&mut t, 0, &vq);
    driver_ok(&mut t);
    let t = Arc::new(Mutex::new(t));
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    manager.add_subscriber(t.clone());
    // The activation kick: nothing queued yet.
    manager.run_with_timeout(100).unwrap();
    assert_eq!(used_idx(&mem, &vq), 0);
    vq.add_desc_chains(&[desc(0x10_0000, 64, 0, 0)], 0).unwrap();
    // What KVM does when the guest writes QueueNotify with an ioeventfd registered.
    t.lock().unwrap().queue_events()[0].write(1).unwrap();
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(used_idx(&mem, &vq), 1);
    assert_eq!(used_entry(&mem, &vq, 0), (0, 64));
    assert_eq!(t.lock().unwrap().interrupt_event().read().unwrap(), 1);
}

/// One guest access to the register block.
#[derive(Debug, Clone)]
enum Access {
    Read(u64, usize),
    Write(u64, Vec<u8>),
    Notify(usize),
}

fn access() -> impl Strategy<Value = Access> {
    let offset = prop_oneof![
        (0u64..0x40).prop_map(|o| o * 4),
        0u64..0x1000,
        Just(0x70u64),
        Just(0x44u64),
        Just(0x38u64),
    ];
    let value = prop_oneof![
        any::<u32>(),
        0u32..16,
        Just(ACK | DRIVER | FEATURES_OK | DRIVER_OK),
        (0u32..0x40).prop_map(|p| p * 0x1000),
    ];
    prop_oneof![
        (offset.clone(), 1usize..9).prop_map(|(o, n)| Access::Read(o, n)),
        (offset.clone(), value).prop_map(|(o, v)| Access::Write(o, v.to_le_bytes().to_vec())),
        (offset, proptest::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(o, bytes)| Access::Write(o, bytes)),
        (0usize..2).prop_map(Access::Notify),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any sequence of register accesses (and notifications processed in between) leaves the
    /// transport consistent: it never panics, the identification registers never change, and
    /// the status only ever holds defined bits.
    #[test]
    fn random_register_traffic_never_breaks_the_transport(
        accesses in proptest::collection::vec(access(), 1..200),
        garbage in proptest::collection::vec(any::<u8>(), 0x3000),
    ) {
        let mem = guest_memory();
        // Whatever the queues point at may hold anything.
        vm_memory::Bytes::write_slice(&mem, &garbage, GuestAddress(0)).unwrap();
        let (mut t, _) = transport(&mem);
        for access in accesses {
            match access {
                Access::Read(offset, len) => {
                    let mut buf = vec![0u8; len];
                    t.read(offset, &mut buf);
                }
                Access::Write(offset, bytes) => t.write(offset, &bytes),
                Access::Notify(queue) => t.process_queue_event(queue),
            }
            prop_assert_eq!(read_reg(&mut t, 0), 0x7472_6976);
            prop_assert_eq!(read_reg(&mut t, 4), 2);
            let defined = ACK | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET
                | VIRTIO_CONFIG_S_FAILED;
            prop_assert_eq!(t.status() & !defined, 0);
            prop_assert!(t.interrupt_status() & !3 == 0);
        }
    }
}

#[test]
fn no_interrupt_flag_suppresses_the_used_ring_interrupt() {
    let mem = guest_memory();
    let (mut t, _) = transport(&mem);
    negotiate(&mut t, 0);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    setup_queue(&mut t, 0, &vq);
    driver_ok(&mut t);
    t.process_queue_event(0);
    let _ = t.interrupt_event().read();
    // VRING_AVAIL_F_NO_INTERRUPT in the available ring's flags.
    vm_memory::Bytes::write_obj(&mem, 1u16, vq.avail_addr()).unwrap();
    vq.add_desc_chains(&[desc(0x10_0000, 8, 0, 0)], 0).unwrap();
    t.process_queue_event(0);
    assert_eq!(used_idx(&mem, &vq), 1, "the buffer is still returned");
    assert_eq!(read_reg(&mut t, 0x60), 0);
    assert!(t.interrupt_event().read().is_err(), "no interrupt");
    vm_memory::Bytes::write_obj(&mem, 0u16, vq.avail_addr()).unwrap();
    vq.add_desc_chains(&[desc(0x10_0000, 8, 0, 0)], 1).unwrap();
    t.process_queue_event(0);
    assert_eq!(read_reg(&mut t, 0x60), 1);
    assert_eq!(t.interrupt_event().read().unwrap(), 1);
}
