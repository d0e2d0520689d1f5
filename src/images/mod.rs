//! Guest images: the micro-VM kernel, kumo's built-in AMIs (`kumo-minimal`, `debian-12`) and the
//! catalog that holds them with the images users register.
//!
//! In kumo an AMI is a raw ext4 root disk plus the kernel it boots, as EC2's paravirtual AMIs
//! were. Everything is built from Debian packages on the host, reproducibly (fixed timestamps,
//! UUIDs and hash seeds), so ids derived from content are stable across rebuilds.
//!
//! - [`recipes`]: the built-in images' recipes (the scripts under `images/`, compiled in) and
//!   their inputs hashes.
//! - [`build`]: runs recipes with progress and logs; caches by inputs hash.
//! - [`catalog`]: records on disk, atomic installs, RegisterImage/DeregisterImage, lookup.
//! - [`validate`]: ext4 superblock and kernel (ELF / bzImage) checks for user input.
//! - [`ids`]: `ami-`/`aki-` ids derived from content.
//!
//! Contract with the other parts (see TEAM.md): `kumo images path NAME` prints the artefact of
//! `kernel` (the ELF vmlinux, PVH entry), `kumo-minimal` or `debian-12` (the raw ext4 root disk),
//! or of any image name / `ami-` / `aki-` id; `kumo images path NAME --kernel` prints the kernel
//! an AMI boots. Images expect the kernel command line in their `KernelParams`
//! ([`recipes::DEFAULT_KERNEL_PARAMS`]) plus the VMM's `virtio_mmio.device=` fragments.
//! The control plane's DescribeImages and RegisterImage use [`catalog::Catalog::images`] and
//! [`catalog::Catalog::register`].

pub mod build;
pub mod catalog;
pub mod ids;
pub mod recipes;
pub mod validate;
