//! Image and kernel ids: EC2's form (`ami-` / `aki-` and 17 lowercase hex digits), derived from
//! content so that the same image always gets the same id.
//!
//! - A kernel's id (`aki-`) comes from the SHA-256 of its file alone, so identical kernels share an
//!   id however they got into the catalog.
//! - An image's id (`ami-`) comes from its name, its kernel's id and the SHA-256 of its root disk:
//!   an AMI is a root disk plus the kernel it boots, and names are unique in the catalog, so two
//!   registrations of the same disk under different names are two images, as on EC2.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Prefix of machine image (AMI) ids.
pub const IMAGE_PREFIX: &str = "ami-";
/// Prefix of kernel image (AKI) ids.
pub const KERNEL_PREFIX: &str = "aki-";
/// Number of hex digits after the prefix, as in EC2's long ids.
pub const ID_HEX_DIGITS: usize = 17;

/// The id of a kernel whose file has SHA-256 `kernel_sha256` (lowercase hex).
pub fn kernel_id(kernel_sha256: &str) -> String {
    derive(KERNEL_PREFIX, &["kumo-aki-v1", kernel_sha256])
}

/// The id of the image `name` that boots kernel `kernel_id` from a root disk with SHA-256
/// `root_disk_sha256` (lowercase hex).
pub fn image_id(name: &str, kernel_id: &str, root_disk_sha256: &str) -> String {
    derive(
        IMAGE_PREFIX,
        &["kumo-ami-v1", name, kernel_id, root_disk_sha256],
    )
}

/// Whether `id` is `prefix` followed by exactly 17 lowercase hex digits.
pub fn is_valid(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|hex| {
        hex.len() == ID_HEX_DIGITS
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// SHA-256 of everything `reader` yields, as lowercase hex.
pub fn sha256_reader(mut reader: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// SHA-256 of the file at `path`, as lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    sha256_reader(File::open(path)?)
}

/// SHA-256 of `bytes`, as lowercase hex.
#[cfg(test)]
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `prefix` + the first 17 hex digits of SHA-256 over `parts`, each followed by a NUL so that
/// ("ab", "c") and ("a", "bc") differ.
fn derive(prefix: &str, parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hex::encode(hasher.finalize());
    format!("{prefix}{}", &digest[..ID_HEX_DIGITS])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DISK: &str = "5c1df16b17458da621ad16628f026f45523c453f6ef1f611e2c03e192f91df93";

    #[test]
    fn ids_have_ec2_shape() {
        let aki = kernel_id(DISK);
        let ami = image_id("kumo-minimal", &aki, DISK);
        assert!(is_valid(&aki, KERNEL_PREFIX), "{aki}");
        assert!(is_valid(&ami, IMAGE_PREFIX), "{ami}");
        assert_eq!(aki.len(), 4 + 17);
        assert!(!is_valid(&aki, IMAGE_PREFIX));
    }

    #[test]
    fn ids_are_stable() {
        // Pinned: a change here renames every image users have; bump the "-v1" tags on purpose only.
        assert_eq!(kernel_id(DISK), "aki-8a9031ab33df9eee5");
        assert_eq!(
            image_id("kumo-minimal", "aki-8a9031ab33df9eee5", DISK),
            "ami-4e362f065c2ec8022"
        );
    }

    #[test]
    fn ids_depend_on_every_input() {
        let aki = kernel_id(DISK);
        let base = image_id("a", &aki, DISK);
        assert_ne!(base, image_id("b", &aki, DISK));
        assert_ne!(base, image_id("a", &kernel_id("00"), DISK));
        assert_ne!(base, image_id("a", &aki, &DISK.replace('5', "6")));
        // Part boundaries matter.
        assert_ne!(image_id("ab", "c", "d"), image_id("a", "bc", "d"));
    }

    #[test]
    fn validity_rejects_near_misses() {
        for bad in [
            "ami-",
            "ami-0123456789abcdef",
            "ami-0123456789abcdef01",
            "ami-0123456789ABCDEF0",
            "ami-0123456789abcdeg0",
            "AMI-0123456789abcdef0",
            " ami-0123456789abcdef0",
        ] {
            assert!(!is_valid(bad, IMAGE_PREFIX), "{bad:?}");
        }
        assert!(is_valid("ami-0123456789abcdef0", IMAGE_PREFIX));
    }

    #[test]
    fn file_hash_matches_bytes_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256_bytes(&data));
    }

    proptest! {
        #[test]
        fn derived_ids_are_always_valid(name in ".*", disk in "[0-9a-f]{64}") {
            let aki = kernel_id(&disk);
            prop_assert!(is_valid(&aki, KERNEL_PREFIX));
            prop_assert!(is_valid(&image_id(&name, &aki, &disk), IMAGE_PREFIX));
        }

        #[test]
        fn is_valid_never_panics(s in ".*") {
            let _ = is_valid(&s, IMAGE_PREFIX);
        }
    }
}
