//! The built-in images and their recipes: the shell scripts and files under `images/` in the
//! repository, compiled into the `kumo` binary so that `kumo images build` works from anywhere.
//!
//! Each recipe's *inputs hash* covers every byte of its recipe files plus the identity of what
//! it takes from the host (the linux-source package, the compiler, busybox, kumo-agent, the
//! Debian mirror, e2fsprogs) and, for an AMI, the id of the kernel it boots. The catalog keeps
//! one build per inputs hash: same inputs, no rebuild.

use sha2::{Digest, Sha256};

/// A file of a recipe, embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct RecipeFile {
    /// Path relative to `images/` in the repository (and to the recipe directory at build time).
    pub path: &'static str,
    pub contents: &'static [u8],
}

macro_rules! recipe_file {
    ($path:literal) => {
        RecipeFile {
            path: $path,
            contents: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/images/", $path)),
        }
    };
}

/// Helpers every recipe sources.
const COMMON: &[RecipeFile] = &[recipe_file!("lib/common.sh")];

const KERNEL_FILES: &[RecipeFile] = &[
    recipe_file!("kernel/build.sh"),
    recipe_file!("kernel/kumo.config"),
];

const KUMO_MINIMAL_FILES: &[RecipeFile] = &[
    recipe_file!("kumo-minimal/build.sh"),
    recipe_file!("kumo-minimal/rootfs/etc/fstab"),
    recipe_file!("kumo-minimal/rootfs/etc/group"),
    recipe_file!("kumo-minimal/rootfs/etc/hostname"),
    recipe_file!("kumo-minimal/rootfs/etc/init.d/rcS"),
    recipe_file!("kumo-minimal/rootfs/etc/inittab"),
    recipe_file!("kumo-minimal/rootfs/etc/passwd"),
    recipe_file!("kumo-minimal/rootfs/etc/shadow"),
    recipe_file!("kumo-minimal/rootfs/usr/share/udhcpc/default.script"),
];

const DEBIAN_12_FILES: &[RecipeFile] = &[
    recipe_file!("debian-12/build.sh"),
    recipe_file!("debian-12/rootfs/etc/cloud/cloud.cfg.d/99-kumo.cfg"),
    recipe_file!("debian-12/rootfs/etc/cloud/ds-identify.cfg"),
    recipe_file!("debian-12/rootfs/etc/ssh/sshd_config.d/50-kumo.conf"),
    recipe_file!("debian-12/rootfs/etc/systemd/network/80-kumo-first-nic.network"),
    recipe_file!("debian-12/rootfs/etc/systemd/system/ssh.service.d/50-kumo-host-keys.conf"),
];

/// The images kumo knows how to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Builtin {
    /// The micro-VM kernel (`vmlinux`), from Debian's linux-source-6.1.
    Kernel,
    /// busybox + kumo-agent as init; a few MiB.
    KumoMinimal,
    /// Debian 12 minbase with systemd, cloud-init and openssh-server.
    Debian12,
}

/// The time every timestamp in a built artefact is clamped to (2025-01-01T00:00:00Z).
pub const SOURCE_DATE_EPOCH: u64 = 1_735_689_600;

/// The kernel command line kumo's images expect (root on the first virtio-blk disk, serial
/// console, reboot through the keyboard controller, panic reboots so the VMM sees it).
pub const DEFAULT_KERNEL_PARAMS: &str = "console=ttyS0 reboot=k panic=1 root=/dev/vda rw";

impl Builtin {
    /// All of them, in build order (the kernel first: the AMIs name it).
    pub const ALL: [Builtin; 3] = [Builtin::Kernel, Builtin::KumoMinimal, Builtin::Debian12];

    /// The name users type (`kumo images build NAME`) and the catalog records.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Kernel => "kernel",
            Builtin::KumoMinimal => "kumo-minimal",
            Builtin::Debian12 => "debian-12",
        }
    }

    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Whether this builds a kernel (as opposed to an AMI's root disk).
    pub fn is_kernel(self) -> bool {
        self == Builtin::Kernel
    }

    pub fn description(self) -> &'static str {
        match self {
            Builtin::Kernel => "Linux 6.1 micro-VM kernel (PVH vmlinux, virtio-mmio, no modules)",
            Builtin::KumoMinimal => "kumo-minimal: busybox and kumo-agent as init",
            Builtin::Debian12 => {
                "Debian 12 (bookworm) minbase with systemd, cloud-init (Ec2 datasource) and openssh-server"
            }
        }
    }

    /// The recipe's own files (its script first), without the shared helpers.
    pub fn files(self) -> &'static [RecipeFile] {
        match self {
            Builtin::Kernel => KERNEL_FILES,
            Builtin::KumoMinimal => KUMO_MINIMAL_FILES,
            Builtin::Debian12 => DEBIAN_12_FILES,
        }
    }

    /// Every file the recipe needs at build time: the shared helpers and its own files.
    pub fn all_files(self) -> impl Iterator<Item = &'static RecipeFile> {
        COMMON.iter().chain(self.files())
    }

    /// The script that builds it, relative to the recipe directory.
    pub fn script(self) -> &'static str {
        self.files()[0].path
    }

    /// Roughly the most disk space a build uses at once (sources, objects, the unpacked root file
    /// system and the image), checked before it starts.
    pub fn space_needed(self) -> u64 {
        match self {
            Builtin::Kernel => 3 << 30,
            Builtin::KumoMinimal => 64 << 20,
            Builtin::Debian12 => 2 << 30,
        }
    }

    /// The artefact the recipe writes into its output directory.
    pub fn artefact(self) -> &'static str {
        if self.is_kernel() {
            "vmlinux"
        } else {
            "root.ext4"
        }
    }
}

/// Accumulates a recipe's inputs into its inputs hash.
#[derive(Debug, Default)]
pub struct InputsHasher {
    hasher: Sha256,
    described: Vec<String>,
}

impl InputsHasher {
    pub fn new(builtin: Builtin) -> Self {
        let mut h = InputsHasher::default();
        h.value("recipe-format", "kumo-recipe-v1");
        h.value("image", builtin.name());
        h.value("source-date-epoch", &SOURCE_DATE_EPOCH.to_string());
        let mut files = Sha256::new();
        for file in builtin.all_files() {
            files.update(b"file\0");
            files.update(file.path.as_bytes());
            files.update(b"\0");
            files.update((file.contents.len() as u64).to_le_bytes());
            files.update(file.contents);
        }
        h.value("recipe-files", &hex::encode(files.finalize()));
        h
    }

    /// Adds a named input (a package version, a binary's hash, a kernel id...).
    pub fn value(&mut self, label: &str, value: &str) {
        self.hasher.update(b"value\0");
        self.hasher.update(label.as_bytes());
        self.hasher.update(b"\0");
        self.hasher.update((value.len() as u64).to_le_bytes());
        self.hasher.update(value.as_bytes());
        self.described.push(format!("{label}: {value}"));
    }

    /// The named inputs added so far, for logs.
    pub fn described(&self) -> &[String] {
        &self.described
    }

    pub fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_has_its_script_first_and_files_are_unique() {
        for b in Builtin::ALL {
            assert!(b.script().ends_with("/build.sh"), "{}", b.script());
            assert_eq!(Builtin::from_name(b.name()), Some(b));
            let mut paths: Vec<_> = b.all_files().map(|f| f.path).collect();
            let n = paths.len();
            paths.sort_unstable();
            paths.dedup();
            assert_eq!(paths.len(), n);
            assert!(b.all_files().all(|f| !f.contents.is_empty()));
        }
        assert_eq!(Builtin::from_name("debian-11"), None);
    }

    #[test]
    fn every_recipe_file_in_the_repository_is_embedded() {
        // A file added under images/<recipe>/ but not listed here would silently be missing at
        // build time (and from the inputs hash).
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("images");
        for b in Builtin::ALL {
            let dir = root.join(b.script().split('/').next().unwrap());
            let mut on_disk = Vec::new();
            let mut stack = vec![dir.clone()];
            while let Some(d) = stack.pop() {
                for entry in std::fs::read_dir(&d).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                    } else {
                        on_disk.push(
                            path.strip_prefix(&root)
                                .unwrap()
                                .to_str()
                                .unwrap()
                                .to_owned(),
                        );
                    }
                }
            }
            on_disk.sort();
            let mut embedded: Vec<String> = b.files().iter().map(|f| f.path.to_owned()).collect();
            embedded.sort();
            assert_eq!(on_disk, embedded, "recipe files of {}", b.name());
        }
    }

    #[test]
    fn inputs_hash_depends_on_values_and_recipe() {
        let hash = |b: Builtin, values: &[(&str, &str)]| {
            let mut h = InputsHasher::new(b);
            for (l, v) in values {
                h.value(l, v);
            }
            h.finish()
        };
        let a = hash(Builtin::KumoMinimal, &[("agent", "x")]);
        assert_eq!(a, hash(Builtin::KumoMinimal, &[("agent", "x")]));
        assert_ne!(a, hash(Builtin::KumoMinimal, &[("agent", "y")]));
        assert_ne!(a, hash(Builtin::Debian12, &[("agent", "x")]));
        assert_ne!(
            hash(Builtin::Kernel, &[("a", "bc")]),
            hash(Builtin::Kernel, &[("ab", "c")])
        );
    }
}
