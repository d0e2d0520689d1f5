//! Emulated devices: the MMIO/PIO buses, legacy PC devices and virtio-mmio devices.
//!
//! Devices never import the builder; the builder wires them to KVM and the buses.

pub mod bus;
pub mod legacy;
pub mod virtio;
