//! Per-vCPU CPUID: what KVM supports (`KVM_GET_SUPPORTED_CPUID`), with this vCPU's APIC id,
//! a topology of `num_cpus` single-thread cores in one package, the hypervisor bit and KVM's
//! signature leaf. A pure function over the entry list.

use kvm_bindings::{CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};

/// Errors building CPUID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuidError {
    #[error("cannot build the CPUID table: {0}")]
    Fam(String),
}

const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// CPU vendor, from leaf 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

/// The vendor named by leaf 0 of `entries`.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    match entries.iter().find(|e| e.function == 0) {
        Some(e) if (e.ebx, e.edx, e.ecx) == vendor_regs(b"GenuineIntel") => Vendor::Intel,
        Some(e) if (e.ebx, e.edx, e.ecx) == vendor_regs(b"AuthenticAMD") => Vendor::Amd,
        _ => Vendor::Other,
    }
}

fn vendor_regs(s: &[u8; 12]) -> (u32, u32, u32) {
    let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    (w(0), w(4), w(8))
}

/// Bits needed to number `n` things (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn topology_leaf(function: u32, apic_id: u32, num_cpus: u32) -> Vec<kvm_cpuid_entry2> {
    let e = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    vec![
        // SMT level: one thread per core.
        e(0, 0, 1, LEVEL_TYPE_SMT),
        // Core level: num_cpus cores per package.
        e(1, bits_for(num_cpus), num_cpus, LEVEL_TYPE_CORE),
        // Invalid level ends the enumeration.
        e(2, 0, 0, 0),
    ]
}

/// Adjusts KVM's supported entries for vCPU `apic_id` of `num_cpus`.
pub fn vcpu_cpuid_entries(
    supported: &[kvm_cpuid_entry2],
    apic_id: u8,
    num_cpus: u8,
) -> Vec<kvm_cpuid_entry2> {
    let (id, n) = (apic_id as u32, num_cpus.max(1) as u32);
    let vendor = vendor(supported);
    let had_1f = supported.iter().any(|e| e.function == 0x1f);
    let had_b = supported.iter().any(|e| e.function == 0xb);
    let mut out: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| e.function != 0xb && e.function != 0x1f)
        .copied()
        .collect();
    for e in out.iter_mut() {
        match e.function {
            0x1 => {
                e.ebx = (id << 24) | (n << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            0x4 if vendor == Vendor::Intel => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & !(0x3f << 26 | 0xfff << 14)) | ((n - 1) << 26) | (sharing << 14);
            }
            KVM_SIGNATURE_LEAF => {
                e.eax = e.eax.max(KVM_FEATURES_LEAF);
                (e.ebx, e.ecx, e.edx) = vendor_regs(b"KVMKVMKVM\0\0\0");
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                e.ecx = (e.ecx & !0xf0ff) | (bits_for(n) << 12) | (n - 1);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                e.eax = id;
                e.ebx &= !0xff00; // one thread per core
                e.ebx = (e.ebx & !0xff) | id;
            }
            _ => {}
        }
    }
    if !out.iter().any(|e| e.function == KVM_SIGNATURE_LEAF) {
        let (ebx, ecx, edx) = vendor_regs(b"KVMKVMKVM\0\0\0");
        out.push(kvm_cpuid_entry2 {
            function: KVM_SIGNATURE_LEAF,
            eax: KVM_FEATURES_LEAF,
            ebx,
            ecx,
            edx,
            ..Default::default()
        });
    }
    if had_b || vendor == Vendor::Intel {
        out.extend(topology_leaf(0xb, id, n));
    }
    if had_1f {
        out.extend(topology_leaf(0x1f, id, n));
    }
    out
}

/// [`vcpu_cpuid_entries`] as a `CpuId` for `KVM_SET_CPUID2`.
pub fn vcpu_cpuid(supported: &CpuId, apic_id: u8, num_cpus: u8) -> Result<CpuId, CpuidError> {
    let entries = vcpu_cpuid_entries(supported.as_slice(), apic_id, num_cpus);
    CpuId::from_entries(&entries).map_err(|e| CpuidError::Fam(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn intel() -> Vec<kvm_cpuid_entry2> {
        let (b, d, c) = vendor_regs(b"GenuineIntel");
        vec![
            leaf(0, 0, 0x1f, b, c, d),
            leaf(1, 0, 0x906ea, 0x0710_0800 | 0x42, 0x7ffa_3203, 0x0f8b_fbff),
            leaf(4, 0, (1 << 5) | 0x121 | (7 << 26) | (1 << 14), 0, 0, 0),
            leaf(4, 3, (3 << 5) | 0x163 | (7 << 26) | (15 << 14), 0, 0, 0),
            leaf(0xb, 0, 1, 2, 0x100, 7),
            leaf(0xb, 1, 4, 16, 0x201, 7),
            leaf(0x1f, 0, 1, 2, 0x100, 7),
            leaf(0x4000_0000, 0, 0x4000_0001, 0, 0, 0),
        ]
    }

    fn get(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn apic_id_and_hypervisor_bit() {
        let v = vcpu_cpuid_entries(&intel(), 3, 4);
        let l1 = get(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xff, 0x42, "brand index kept");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        let single = vcpu_cpuid_entries(&intel(), 0, 1);
        assert_eq!(get(&single, 1, 0).edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_matches_vcpu_count() {
        let v = vcpu_cpuid_entries(&intel(), 2, 3);
        let smt = get(&v, 0xb, 0);
        let core = get(&v, 0xb, 1);
        assert_eq!(
            (smt.eax, smt.ebx, smt.ecx >> 8, smt.edx),
            (0, 1, LEVEL_TYPE_SMT, 2)
        );
        assert_eq!(
            (core.eax, core.ebx, (core.ecx >> 8) & 0xff, core.edx),
            (2, 3, LEVEL_TYPE_CORE, 2)
        );
        assert_eq!(get(&v, 0xb, 2).ecx >> 8, 0);
        assert_eq!(v.iter().filter(|e| e.function == 0xb).count(), 3);
        assert_eq!(get(&v, 0x1f, 1).ebx, 3, "leaf 0x1f mirrors 0xb");
        let l2 = get(&v, 4, 0);
        assert_eq!((l2.eax >> 26, (l2.eax >> 14) & 0xfff), (2, 0));
        let l3 = get(&v, 4, 3);
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (2, 2));
        assert_eq!(l3.eax & 0x3fff, (3 << 5) | 0x163);
    }

    #[test]
    fn kvm_signature_leaf() {
        let v = vcpu_cpuid_entries(&intel(), 0, 1);
        let s = get(&v, 0x4000_0000, 0);
        let mut sig = Vec::new();
        for r in [s.ebx, s.ecx, s.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0");
        assert!(s.eax >= 0x4000_0001);
        // Added when KVM did not report it.
        let without: Vec<_> = intel()
            .into_iter()
            .filter(|e| e.function != 0x4000_0000)
            .collect();
        assert!(
            vcpu_cpuid_entries(&without, 0, 1)
                .iter()
                .any(|e| e.function == 0x4000_0000)
        );
    }

    #[test]
    fn amd_core_count() {
        let (b, d, c) = vendor_regs(b"AuthenticAMD");
        let base = vec![
            leaf(0, 0, 0x10, b, c, d),
            leaf(1, 0, 0, 0, 0, 0),
            leaf(0x8000_0008, 0, 0x3030, 0, 0x700f, 0),
            leaf(0x8000_001e, 0, 9, 0x0101, 0, 0),
        ];
        let v = vcpu_cpuid_entries(&base, 5, 8);
        assert_eq!(vendor(&base), Vendor::Amd);
        assert_eq!(get(&v, 0x8000_0008, 0).ecx & 0xff, 7);
        assert_eq!((get(&v, 0x8000_0008, 0).ecx >> 12) & 0xf, 3);
        assert_eq!(get(&v, 0x8000_001e, 0).eax, 5);
    }

    #[test]
    fn bits() {
        assert_eq!(
            (
                bits_for(1),
                bits_for(2),
                bits_for(3),
                bits_for(4),
                bits_for(5),
                bits_for(32)
            ),
            (0, 1, 2, 2, 3, 5)
        );
    }
}
