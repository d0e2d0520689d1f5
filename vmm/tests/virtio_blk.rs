//! virtio-blk under KVM: the `virtio_blk` guest (vmm/guests/src/bin/virtio_blk.rs) drives the
//! device through its registers, virtqueue and interrupt; the host file must hold what it wrote.

mod common;

use common::*;
use std::io::Write;

const SECTOR: usize = 512;
const PATTERN_SECTOR: usize = 3;

/// The guest's pattern (see `pattern()` in the guest).
fn pattern() -> Vec<u8> {
    (0..SECTOR)
        .map(|i| {
            if i < 16 {
                b"KUMO-BLK-PATTERN"[i]
            } else {
                ((i * 7 + 0x5a) & 0xff) as u8
            }
        })
        .collect()
}

/// A 1 MiB disk image whose sectors hold their own number in every byte (sector 3 too, so a
/// write that never happened is visible).
fn disk_image(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("disk.img");
    let mut file = std::fs::File::create(&path).unwrap();
    for sector in 0..2048usize {
        file.write_all(&[sector as u8; SECTOR]).unwrap();
    }
    path
}

fn expected_image(with_pattern: bool) -> Vec<u8> {
    let mut image: Vec<u8> = (0..2048usize)
        .flat_map(|s| std::iter::repeat_n(s as u8, SECTOR))
        .collect();
    if with_pattern {
        image[PATTERN_SECTOR * SECTOR..(PATTERN_SECTOR + 1) * SECTOR].copy_from_slice(&pattern());
    }
    image
}

#[test]
fn guest_writes_a_pattern_and_the_host_file_holds_it() {
    if !kvm_available("virtio_blk::guest_writes_a_pattern_and_the_host_file_holds_it") {
        return;
    }
    let dir = tempdir();
    let disk = disk_image(&dir);
    let run = Vmm::new(&build_guest("virtio_blk"))
        .args(["--memory-mib", "64", "--disk", disk.to_str().unwrap()])
        .run();
    run.assert_success();
    for line in [
        "virtio-blk: capacity 0x800 sectors, read-only false",
        "virtio-blk: wrote the pattern to sector 3",
        "virtio-blk: read the pattern back from sector 3",
        "virtio-blk: serial \"kumo",
        "virtio-blk: bad requests failed one by one",
        "virtio-blk: bad register writes needed a reset, which recovered the device",
        "virtio-blk: PASS",
    ] {
        assert!(run.serial.contains(line), "missing {line:?}:\n{run}");
    }
    assert!(!run.serial.contains("FAIL"), "{run}");
    let image = std::fs::read(&disk).unwrap();
    assert!(
        image == expected_image(true),
        "the image must hold the pattern in sector 3 and nothing else changed"
    );
}

#[test]
fn a_read_only_disk_fails_the_guest_write_with_ioerr() {
    if !kvm_available("virtio_blk::a_read_only_disk_fails_the_guest_write_with_ioerr") {
        return;
    }
    let dir = tempdir();
    let disk = disk_image(&dir);
    let arg = format!("{},ro", disk.display());
    let run = Vmm::new(&build_guest("virtio_blk"))
        .args(["--memory-mib", "64", "--disk", &arg])
        .run();
    run.assert_success();
    for line in [
        "virtio-blk: capacity 0x800 sectors, read-only true",
        "virtio-blk: write to the read-only disk failed with IOERR as it must",
        "virtio-blk: PASS",
    ] {
        assert!(run.serial.contains(line), "missing {line:?}:\n{run}");
    }
    assert!(
        std::fs::read(&disk).unwrap() == expected_image(false),
        "image changed"
    );
}

#[test]
fn a_disk_in_use_by_another_vm_is_refused() {
    if !kvm_available("virtio_blk::a_disk_in_use_by_another_vm_is_refused") {
        return;
    }
    let dir = tempdir();
    let disk = disk_image(&dir);
    // The first VM holds the image (it idles until killed).
    let first = Vmm::new(&build_guest("idle"))
        .args(["--memory-mib", "32", "--disk", disk.to_str().unwrap()])
        .spawn();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second = Vmm::new(&build_guest("virtio_blk"))
        .args(["--memory-mib", "64", "--disk", disk.to_str().unwrap()])
        .run();
    drop(first);
    assert_ne!(second.code(), Some(0), "{second}");
    assert!(
        second.stderr.contains("in use by another VM"),
        "one clear line about the lock:\n{second}"
    );
}
