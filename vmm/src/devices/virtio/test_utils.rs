//! Helpers for the virtio unit tests: guest memory, a register-level driver for the transport,
//! and descriptor builders on top of `virtio_queue::mock`.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_F_VERSION_1,
};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::{GuestMemory, MmioTransport};
use crate::devices::bus::BusDevice;

pub const MEM_SIZE: usize = 0x20_0000;

/// 2 MiB of guest memory at address 0.
pub fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// A descriptor; `next` is only meaningful with VRING_DESC_F_NEXT in `flags`.
pub fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// Reads a register of the transport as a 32-bit guest access.
pub fn read_reg(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// Writes a register of the transport as a 32-bit guest access.
pub fn write_reg(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Runs the driver side of initialisation up to FEATURES_OK, accepting `features` (plus
/// VERSION_1). Returns the status read back.
pub fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    let features = features | (1 << VIRTIO_F_VERSION_1);
    write_reg(t, 0x70, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write_reg(
        t,
        0x70,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    write_reg(t, 0x24, 0);
    write_reg(t, 0x20, features as u32);
    write_reg(t, 0x24, 1);
    write_reg(t, 0x20, (features >> 32) as u32);
    write_reg(
        t,
        0x70,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    read_reg(t, 0x70)
}

/// Configures queue `index` through the registers to use the rings of `vq`, and makes it ready.
pub fn setup_queue(t: &mut MmioTransport, index: u32, vq: &MockSplitQueue<'_, GuestMemory>) {
    let size = vq.desc_table().total_size() / 16;
    write_reg(t, 0x30, index);
    write_reg(t, 0x38, size as u32);
    for (low, addr) in [
        (0x80, vq.desc_table_addr()),
        (0x90, vq.avail_addr()),
        (0xa0, vq.used_addr()),
    ] {
        write_reg(t, low, addr.0 as u32);
        write_reg(t, low + 4, (addr.0 >> 32) as u32);
    }
    write_reg(t, 0x44, 1);
}

/// Sets DRIVER_OK.
pub fn driver_ok(t: &mut MmioTransport) {
    write_reg(
        t,
        0x70,
        VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_DRIVER_OK,
    );
}

/// The used-ring entry `n` of `vq`: (descriptor head id, length).
pub fn used_entry(mem: &GuestMemory, vq: &MockSplitQueue<'_, GuestMemory>, n: u16) -> (u32, u32) {
    let size = vq.desc_table().total_size() / 16;
    let addr = vq.used_addr().0 + 4 + 8 * (u64::from(n) % size);
    let id: u32 = mem.read_obj(GuestAddress(addr)).unwrap();
    let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
    (id, len)
}

/// The used ring's index.
pub fn used_idx(mem: &GuestMemory, vq: &MockSplitQueue<'_, GuestMemory>) -> u16 {
    mem.read_obj(GuestAddress(vq.used_addr().0 + 2)).unwrap()
}

/// True if the test may run as root; otherwise reports `SKIPPED: <name>: <reason>` on stderr
/// and in `$KUMO_SKIP_LOG` (the project's convention, kept by kumo-testkit) and returns false.
pub fn require_root(test_name: &str) -> bool {
    if kumo_testkit::is_root() {
        return true;
    }
    kumo_testkit::skip(
        test_name,
        "needs root (CAP_NET_ADMIN) to create a TAP device",
    );
    false
}
