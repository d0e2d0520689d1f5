//! The Intel MultiProcessor Specification 1.4 table, so SMP guests find every vCPU and the
//! I/O APIC without ACPI: a floating pointer, a configuration table header, one processor entry
//! per vCPU (APIC id = vCPU index, vCPU 0 the BSP), the ISA bus, the I/O APIC, an I/O interrupt
//! entry per I/O APIC pin (ISA IRQ n -> pin n, as KVM's default routing does) and the two local
//! interrupt entries (LINT0 ExtINT, LINT1 NMI). Built as bytes by a pure function; the builder
//! writes them at [`super::layout::MPTABLE_START`].

use super::layout::{APIC_START, EBDA_END, IOAPIC_PINS, IOAPIC_START, MPTABLE_START};

/// Most vCPUs kumo-vmm supports (the table fits the EBDA with room to spare).
pub const MAX_SUPPORTED_CPUS: u8 = 32;

const MPC_SPEC: u8 = 4; // version 1.4
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// Errors building the table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit the MP table (1-{MAX_SUPPORTED_CPUS})")]
    TooManyCpus(u8),
    #[error("the MP table ({0} bytes) does not fit the EBDA")]
    TooBig(usize),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP table for `num_cpus` vCPUs, to be written at `MPTABLE_START`.
pub fn mptable_bytes(num_cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > MAX_SUPPORTED_CPUS {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus; // the first id after the CPUs
    let config_addr = MPTABLE_START as u32 + 16;

    // Entries after the 44-byte header.
    let mut entries = Vec::new();
    for cpu in 0..num_cpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(cpu); // local APIC id
        entries.push(APIC_VERSION);
        entries.push(1 | if cpu == 0 { 2 } else { 0 }); // enabled, BSP
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for pin in 0..IOAPIC_PINS as u8 {
        // type, interrupt type, flags (conforming polarity/trigger), source bus, source IRQ,
        // destination I/O APIC, destination pin
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            pin,
            ioapic_id,
            pin,
        ]);
    }
    // LINT0 = ExtINT and LINT1 = NMI on every local APIC (destination 0xff = all).
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = num_cpus as u16 + 1 + 1 + IOAPIC_PINS as u16 + 2;

    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(MPC_SPEC);
    header.push(0); // checksum, filled below
    header.extend_from_slice(b"KUMO    "); // OEM id, 8 bytes
    header.extend_from_slice(b"KUMO-VMM    "); // product id, 12 bytes
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    header.push(0); // extended table checksum
    header.push(0); // reserved
    debug_assert_eq!(header.len(), 44);
    let mut config = header;
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&config_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(MPC_SPEC);
    fp.push(0); // checksum
    fp.extend_from_slice(&[0; 5]); // feature bytes: a configuration table is present
    fp[10] = checksum(&fp);

    let mut all = fp;
    all.extend_from_slice(&config);
    if MPTABLE_START + all.len() as u64 > EBDA_END {
        return Err(MpTableError::TooBig(all.len()));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    /// Reads back what a guest OS would: (cpu apic ids, bsp, ioapic (id, addr), io ints, local ints).
    fn parse(t: &[u8]) -> (Vec<u8>, u8, (u8, u32), usize, usize) {
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[0..16]), 0, "floating pointer checksum");
        let cfg = (u32::from_le_bytes(t[4..8].try_into().unwrap()) - MPTABLE_START as u32) as usize;
        assert_eq!(cfg, 16);
        let c = &t[cfg..];
        assert_eq!(&c[0..4], b"PCMP");
        let len = u16::from_le_bytes([c[4], c[5]]) as usize;
        assert_eq!(sum(&c[..len]), 0, "configuration table checksum");
        assert_eq!(
            u32::from_le_bytes(c[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        let count = u16::from_le_bytes([c[34], c[35]]);
        let (mut cpus, mut bsp, mut ioapic, mut io, mut local) = (vec![], 0xff, (0, 0), 0, 0);
        let mut e = 44;
        for _ in 0..count {
            match c[e] {
                0 => {
                    assert_eq!(c[e + 3] & 1, 1);
                    cpus.push(c[e + 1]);
                    if c[e + 3] & 2 != 0 {
                        bsp = c[e + 1];
                    }
                    e += 20;
                }
                1 => e += 8,
                2 => {
                    ioapic = (
                        c[e + 1],
                        u32::from_le_bytes(c[e + 4..e + 8].try_into().unwrap()),
                    );
                    e += 8;
                }
                3 => {
                    assert_eq!(c[e + 5], c[e + 7], "ISA irq n goes to pin n");
                    io += 1;
                    e += 8;
                }
                4 => {
                    local += 1;
                    e += 8;
                }
                x => panic!("unknown entry type {x}"),
            }
        }
        assert_eq!(e, len);
        (cpus, bsp, ioapic, io, local)
    }

    #[test]
    fn one_cpu() {
        let (cpus, bsp, ioapic, io, local) = parse(&mptable_bytes(1).unwrap());
        assert_eq!(
            (cpus, bsp, ioapic, io, local),
            (vec![0], 0, (1, 0xfec0_0000), 24, 2)
        );
    }

    #[test]
    fn every_vcpu_is_listed() {
        for n in [2u8, 3, 8, 32] {
            let t = mptable_bytes(n).unwrap();
            assert!(t.len() <= 0x400);
            let (cpus, bsp, ioapic, _, _) = parse(&t);
            assert_eq!(cpus, (0..n).collect::<Vec<_>>());
            assert_eq!(bsp, 0);
            assert_eq!(ioapic.0, n);
        }
    }

    #[test]
    fn rejects_bad_counts() {
        assert_eq!(mptable_bytes(0), Err(MpTableError::TooManyCpus(0)));
        assert_eq!(mptable_bytes(33), Err(MpTableError::TooManyCpus(33)));
    }
}
