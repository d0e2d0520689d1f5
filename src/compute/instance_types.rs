//! Instance types: what `--instance-type` (RunInstances' `InstanceType`) gives an instance.
//!
//! The table covers EC2's common x86_64 families: burstable t2, t3 and t3a; general purpose m5 and
//! m6i; compute optimized c5 and c6i; memory optimized r5 (t4g is Graviton, arm64, which kumo
//! does not run). vCPUs and memory are EC2's published figures; a test checks every row against
//! moto's copy of DescribeInstanceTypes (`moto/ec2/resources/instance_types.json.gz`).
//!
//! The kvm backend gives the VM exactly these vCPUs and this memory. The namespace backend has no
//! VM: it limits the instance's processes to the memory and to the vCPUs' worth of CPU time with
//! cgroups (see `cgroup.rs`).

/// One instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct InstanceType {
    /// `t3.micro`.
    pub name: &'static str,
    /// Default vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// A burstable-performance (CPU credits) type.
    pub burstable: bool,
    /// A bare-metal type (no hypervisor on EC2; kumo still runs it as a VM or namespace).
    pub bare_metal: bool,
}

const fn t(name: &'static str, vcpus: u32, memory_gib_x2: u64) -> InstanceType {
    InstanceType {
        name,
        vcpus,
        // Half-GiB steps: t2.nano and t3.nano have 512 MiB.
        memory_mib: memory_gib_x2 * 512,
        burstable: true,
        bare_metal: false,
    }
}

const fn f(name: &'static str, vcpus: u32, memory_gib: u64) -> InstanceType {
    InstanceType {
        name,
        vcpus,
        memory_mib: memory_gib * 1024,
        burstable: false,
        bare_metal: false,
    }
}

const fn metal(name: &'static str, vcpus: u32, memory_gib: u64) -> InstanceType {
    InstanceType {
        bare_metal: true,
        ..f(name, vcpus, memory_gib)
    }
}

/// The default instance type, as `aws ec2 run-instances` users most often pick it.
pub const DEFAULT: &str = "t3.micro";

/// Every instance type kumo knows.
pub const ALL: &[InstanceType] = &[
    // t2: burstable, 1 vCPU for the small sizes.
    t("t2.nano", 1, 1),
    t("t2.micro", 1, 2),
    t("t2.small", 1, 4),
    t("t2.medium", 2, 8),
    t("t2.large", 2, 16),
    t("t2.xlarge", 4, 32),
    t("t2.2xlarge", 8, 64),
    // t3 (Intel) and t3a (AMD): burstable, 2 vCPUs from nano up.
    t("t3.nano", 2, 1),
    t("t3.micro", 2, 2),
    t("t3.small", 2, 4),
    t("t3.medium", 2, 8),
    t("t3.large", 2, 16),
    t("t3.xlarge", 4, 32),
    t("t3.2xlarge", 8, 64),
    t("t3a.nano", 2, 1),
    t("t3a.micro", 2, 2),
    t("t3a.small", 2, 4),
    t("t3a.medium", 2, 8),
    t("t3a.large", 2, 16),
    t("t3a.xlarge", 4, 32),
    t("t3a.2xlarge", 8, 64),
    // m5, m6i: 4 GiB per vCPU.
    f("m5.large", 2, 8),
    f("m5.xlarge", 4, 16),
    f("m5.2xlarge", 8, 32),
    f("m5.4xlarge", 16, 64),
    f("m5.8xlarge", 32, 128),
    f("m5.12xlarge", 48, 192),
    f("m5.16xlarge", 64, 256),
    f("m5.24xlarge", 96, 384),
    metal("m5.metal", 96, 384),
    f("m6i.large", 2, 8),
    f("m6i.xlarge", 4, 16),
    f("m6i.2xlarge", 8, 32),
    f("m6i.4xlarge", 16, 64),
    f("m6i.8xlarge", 32, 128),
    f("m6i.12xlarge", 48, 192),
    f("m6i.16xlarge", 64, 256),
    f("m6i.24xlarge", 96, 384),
    f("m6i.32xlarge", 128, 512),
    metal("m6i.metal", 128, 512),
    // c5, c6i: 2 GiB per vCPU.
    f("c5.large", 2, 4),
    f("c5.xlarge", 4, 8),
    f("c5.2xlarge", 8, 16),
    f("c5.4xlarge", 16, 32),
    f("c5.9xlarge", 36, 72),
    f("c5.12xlarge", 48, 96),
    f("c5.18xlarge", 72, 144),
    f("c5.24xlarge", 96, 192),
    metal("c5.metal", 96, 192),
    f("c6i.large", 2, 4),
    f("c6i.xlarge", 4, 8),
    f("c6i.2xlarge", 8, 16),
    f("c6i.4xlarge", 16, 32),
    f("c6i.8xlarge", 32, 64),
    f("c6i.12xlarge", 48, 96),
    f("c6i.16xlarge", 64, 128),
    f("c6i.24xlarge", 96, 192),
    f("c6i.32xlarge", 128, 256),
    metal("c6i.metal", 128, 256),
    // r5: 8 GiB per vCPU.
    f("r5.large", 2, 16),
    f("r5.xlarge", 4, 32),
    f("r5.2xlarge", 8, 64),
    f("r5.4xlarge", 16, 128),
    f("r5.8xlarge", 32, 256),
    f("r5.12xlarge", 48, 384),
    f("r5.16xlarge", 64, 512),
    f("r5.24xlarge", 96, 768),
    metal("r5.metal", 96, 768),
];

/// The families the table covers.
pub const FAMILIES: &[&str] = &["t2", "t3", "t3a", "m5", "m6i", "c5", "c6i", "r5"];

/// An instance type kumo does not know.
#[derive(Debug, thiserror::Error)]
#[error("{}", unknown_message(.0))]
pub struct UnknownInstanceType(pub String);

fn unknown_message(name: &str) -> String {
    let family = name.split('.').next().unwrap_or(name);
    let hint = if family.ends_with('g') || family.contains("gd") {
        " (Graviton types are arm64; kumo runs x86_64 guests only)".to_string()
    } else {
        String::new()
    };
    let sizes: Vec<&str> = ALL
        .iter()
        .filter(|t| t.name.split('.').next() == Some(family))
        .map(|t| t.name)
        .collect();
    if sizes.is_empty() {
        format!(
            "unknown instance type {name:?}{hint}: kumo knows the {} families, e.g. t3.micro",
            FAMILIES.join(", ")
        )
    } else {
        format!(
            "unknown instance type {name:?}: the {family} family has {}",
            sizes.join(", ")
        )
    }
}

/// Looks up an instance type by name (`t3.micro`).
pub fn lookup(name: &str) -> Result<InstanceType, UnknownInstanceType> {
    ALL.iter()
        .find(|t| t.name == name)
        .copied()
        .ok_or_else(|| UnknownInstanceType(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::process::Command;

    #[test]
    fn names_are_unique_and_in_known_families() {
        let mut seen = std::collections::HashSet::new();
        for t in ALL {
            assert!(seen.insert(t.name), "{} twice", t.name);
            let (family, size) = t.name.split_once('.').expect("family.size");
            assert!(FAMILIES.contains(&family), "{}", t.name);
            assert!(!size.is_empty());
            assert!(t.vcpus >= 1 && t.memory_mib >= 512, "{}", t.name);
            assert_eq!(t.burstable, family.starts_with('t'), "{}", t.name);
            assert_eq!(t.bare_metal, size == "metal", "{}", t.name);
        }
    }

    #[test]
    fn common_types_have_ec2s_figures() {
        let micro = lookup("t3.micro").unwrap();
        assert_eq!((micro.vcpus, micro.memory_mib), (2, 1024));
        let nano = lookup("t2.nano").unwrap();
        assert_eq!((nano.vcpus, nano.memory_mib), (1, 512));
        let m5 = lookup("m5.large").unwrap();
        assert_eq!((m5.vcpus, m5.memory_mib), (2, 8192));
        let r5 = lookup("r5.xlarge").unwrap();
        assert_eq!((r5.vcpus, r5.memory_mib), (4, 32768));
        assert_eq!(lookup(DEFAULT).unwrap().name, "t3.micro");
    }

    #[test]
    fn unknown_types_say_what_exists() {
        let e = lookup("t3.huge").unwrap_err().to_string();
        assert!(e.contains("t3.micro") && e.contains("t3 family"), "{e}");
        let e = lookup("t4g.micro").unwrap_err().to_string();
        assert!(e.contains("arm64"), "{e}");
        let e = lookup("x1e.xlarge").unwrap_err().to_string();
        assert!(e.contains("families"), "{e}");
        assert!(lookup("").is_err());
    }

    /// The table against moto's DescribeInstanceTypes data, from the moto package when Python
    /// has it (scripts/pip/compute.txt installs it); skipped otherwise.
    #[test]
    fn table_matches_moto() {
        const SCRIPT: &str = "import gzip, json, os, moto.ec2\n\
            p = os.path.join(os.path.dirname(moto.ec2.__file__), 'resources', 'instance_types.json.gz')\n\
            d = json.loads(gzip.open(p).read())\n\
            print(json.dumps({k: [v['VCpuInfo']['DefaultVCpus'], v['MemoryInfo']['SizeInMiB'], \
            v.get('BurstablePerformanceSupported', False), v.get('BareMetal', False), \
            v['ProcessorInfo']['SupportedArchitectures']] for k, v in d.items()}))\n";
        let python = std::env::var("KUMO_PYTHON").unwrap_or_else(|_| "python3".into());
        let out = Command::new(&python).args(["-c", SCRIPT]).output();
        let out = match out {
            Ok(o) if o.status.success() => o.stdout,
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                        .to_string(),
                    Err(e) => e.to_string(),
                };
                kumo_testkit::skip(
                    "compute instance_types::table_matches_moto",
                    &format!(
                        "moto's instance_types.json.gz is not available ({why}); pip install moto"
                    ),
                );
                return;
            }
        };
        type Row = (u32, u64, bool, bool, Vec<String>);
        let moto: BTreeMap<String, Row> = serde_json::from_slice(&out).unwrap();
        assert!(moto.len() > 500, "moto lists {} types", moto.len());
        for t in ALL {
            let (vcpus, mem, burst, metal, arch) = moto
                .get(t.name)
                .unwrap_or_else(|| panic!("{} is not in moto's list", t.name));
            assert_eq!(
                (t.vcpus, t.memory_mib, t.burstable, t.bare_metal),
                (*vcpus, *mem, *burst, *metal),
                "{}",
                t.name
            );
            assert!(arch.iter().any(|a| a == "x86_64"), "{}", t.name);
        }
        // Every size of the covered families is in the table.
        for name in moto.keys() {
            let family = name.split('.').next().unwrap_or("");
            if FAMILIES.contains(&family) {
                assert!(lookup(name).is_ok(), "{name} is missing from the table");
            }
        }
    }
}
