//! The image catalog: AMIs (a raw ext4 root disk plus the id of the kernel it boots) and kernels,
//! kept under `$KUMO_HOME/images/`:
//!
//! ```text
//! images/
//!   amis/ami-<17 hex>/image.json      the record (DescribeImages fields and kumo's own)
//!   amis/ami-<17 hex>/root.ext4       the root disk (raw ext4, whole disk, no partition table)
//!   amis/ami-<17 hex>/packages.txt    (debian-12) the Debian packages and versions it holds
//!   kernels/aki-<17 hex>/kernel.json  the record
//!   kernels/aki-<17 hex>/vmlinux      (or bzImage); built kernels also keep `config`
//!   logs/<name>.log                   the output of the last build of <name>
//!   .staging/                         work in progress (same file system as the catalog)
//!   .lock                             held by whoever writes the catalog
//! ```
//!
//! Writers hold `.lock`, build or copy into a fresh directory under `.staging/`, write the record
//! last, fsync, and `rename` the directory into `amis/` or `kernels/`: a directory there is always
//! complete, so readers (DescribeImages, `kumo images path`) need no lock, and a failed or
//! interrupted write leaves nothing behind in the catalog (leftovers in `.staging/` are removed the
//! next time the lock is taken).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ids;
use super::recipes::{Builtin, DEFAULT_KERNEL_PARAMS};
use super::validate::{self, KernelFormat, ValidationError};

/// The architecture of every image kumo runs.
pub const ARCHITECTURE: &str = "x86_64";
/// Where the root disk appears in the guest: the first virtio-blk device.
pub const ROOT_DEVICE_NAME: &str = "/dev/vda";
/// File name of an AMI's root disk inside its directory.
pub const ROOT_DISK_FILE: &str = "root.ext4";
const IMAGE_RECORD: &str = "image.json";
const KERNEL_RECORD: &str = "kernel.json";

/// An AMI: what DescribeImages reports, plus where kumo finds its disk and how it boots it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Image {
    pub image_id: String,
    pub name: String,
    pub description: String,
    /// Always "x86_64".
    pub architecture: String,
    /// Always "/dev/vda".
    pub root_device_name: String,
    pub kernel_id: String,
    /// When this image entered the catalog (ISO 8601, UTC, milliseconds, as EC2 prints it).
    pub creation_date: String,
    /// Always "available": the catalog holds only complete images.
    pub state: String,
    /// Size of the root disk in bytes.
    pub root_disk_size: u64,
    pub root_disk_sha256: String,
    /// The kernel command line the image expects.
    pub kernel_params: String,
    pub origin: Origin,
}

/// A kernel the catalog's AMIs boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Kernel {
    pub kernel_id: String,
    /// "kernel" for kumo's own build; otherwise the file name it was registered from.
    pub name: String,
    pub description: String,
    pub format: KernelFormat,
    /// `uname -r` of a kernel kumo built; unknown for registered ones.
    pub release: Option<String>,
    pub creation_date: String,
    pub size: u64,
    pub sha256: String,
    pub origin: Origin,
}

/// Where an image or kernel came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum Origin {
    /// Built by `kumo images build` from the recipe with this inputs hash; `inputs` names what
    /// went into it (tool versions, source package, agent hash...), to explain a rebuild.
    #[serde(rename_all = "PascalCase")]
    Built {
        inputs_hash: String,
        #[serde(default)]
        inputs: Vec<String>,
    },
    /// Registered by a user (RegisterImage) from this file.
    #[serde(rename_all = "PascalCase")]
    Registered { from: PathBuf },
}

/// What RegisterImage asks for: a user's own ext4 root disk, optionally with their own kernel.
#[derive(Debug, Clone, Default)]
pub struct RegisterImage {
    pub name: String,
    pub description: Option<String>,
    pub root_disk: PathBuf,
    pub kernel: KernelChoice,
    /// Defaults to [`DEFAULT_KERNEL_PARAMS`].
    pub kernel_params: Option<String>,
    /// Defaults to x86_64, the only one accepted.
    pub architecture: Option<String>,
    /// Run `e2fsck -fn` on the root disk (slower on large disks; catches corruption the
    /// superblock check cannot).
    pub fsck: bool,
}

/// Which kernel a registered image boots.
#[derive(Debug, Clone, Default)]
pub enum KernelChoice {
    /// The kernel kumo built (`kumo images build kernel`).
    #[default]
    Builtin,
    /// A kernel already in the catalog.
    Id(String),
    /// The user's own kernel file (ELF vmlinux or bzImage), copied into the catalog.
    File(PathBuf),
}

/// What `kumo images path` resolves a name or id to.
#[derive(Debug, Clone)]
pub enum Entry {
    Image(Image),
    Kernel(Kernel),
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("no image or kernel {key:?} in the catalog ({root}): {hint}")]
    NotFound {
        key: String,
        root: PathBuf,
        hint: String,
    },
    #[error(
        "an image named {name:?} is already registered as {existing}: choose another name, or \
         deregister it first (`kumo images deregister {existing}`)"
    )]
    DuplicateName { name: String, existing: String },
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("architecture {0:?} is not supported: kumo runs x86_64 guests only")]
    Architecture(String),
    #[error("invalid kernel id {0:?}: expected aki- and 17 lowercase hex digits")]
    InvalidKernelId(String),
    #[error(
        "no kernel in the catalog for {name} to boot: build kumo's (`kumo images build kernel`) or \
         pass your own (--kernel FILE)"
    )]
    NoKernel { name: String },
    #[error(
        "not enough space for {path}: {detail}; free some space on that file system, or point \
         KUMO_HOME at a larger one"
    )]
    DiskFull { path: PathBuf, detail: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("catalog record {path} is corrupt ({reason}): deregister it or delete its directory")]
    Corrupt { path: PathBuf, reason: String },
}

impl CatalogError {
    /// An I/O error while doing `action` on `path`; a full disk becomes [`CatalogError::DiskFull`].
    pub fn io<'a>(
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> CatalogError + 'a {
        move |source| {
            if is_disk_full(&source) {
                CatalogError::DiskFull {
                    path: path.to_owned(),
                    detail: source.to_string(),
                }
            } else {
                CatalogError::Io {
                    action,
                    path: path.to_owned(),
                    source,
                }
            }
        }
    }
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
    )
}

/// The current time as EC2 prints CreationDate: `2024-05-01T12:34:56.789Z`.
pub fn now_iso8601() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The catalog at one root directory (normally `$KUMO_HOME/images`).
#[derive(Debug, Clone)]
pub struct Catalog {
    root: PathBuf,
}

/// Held while writing the catalog; released on drop.
#[derive(Debug)]
pub struct CatalogLock {
    _file: File,
}

/// A directory under `.staging/` that is removed on drop unless installed.
pub type Staging = tempfile::TempDir;

impl Catalog {
    /// Opens (creating if needed) the catalog at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Catalog, CatalogError> {
        let catalog = Catalog { root: root.into() };
        for dir in [
            catalog.root.clone(),
            catalog.amis_dir(),
            catalog.kernels_dir(),
            catalog.staging_dir(),
            catalog.logs_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(CatalogError::io("create", &dir))?;
        }
        Ok(catalog)
    }

    /// The catalog in kumo's data directory: `$KUMO_HOME/images`.
    pub fn open_default() -> Result<Catalog, CatalogError> {
        Catalog::open(crate::paths::kumo_home().join("images"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn amis_dir(&self) -> PathBuf {
        self.root.join("amis")
    }

    fn kernels_dir(&self) -> PathBuf {
        self.root.join("kernels")
    }

    /// Where writers stage their work (on the catalog's file system).
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join(".staging")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Where an image's root disk lives.
    pub fn root_disk_path(&self, image: &Image) -> PathBuf {
        self.amis_dir().join(&image.image_id).join(ROOT_DISK_FILE)
    }

    /// Where a kernel's file lives.
    pub fn kernel_path(&self, kernel: &Kernel) -> PathBuf {
        self.kernels_dir()
            .join(&kernel.kernel_id)
            .join(kernel.format.file_name())
    }

    /// Takes the writer's lock, waiting for another writer (a long build) if need be, then
    /// clears what interrupted writers left in `.staging/`.
    pub fn lock(&self, on_wait: impl FnOnce()) -> Result<CatalogLock, CatalogError> {
        let path = self.root.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(CatalogError::io("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                file.lock().map_err(CatalogError::io("lock", &path))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(CatalogError::io("lock", &path)(e)),
        }
        let staging = self.staging_dir();
        if let Ok(entries) = fs::read_dir(&staging) {
            for entry in entries.flatten() {
                let p = entry.path();
                tracing::debug!(path = %p.display(), "removing an interrupted write's leftovers");
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
        Ok(CatalogLock { _file: file })
    }

    /// A fresh staging directory on the catalog's file system, removed on drop.
    pub fn stage(&self, _lock: &CatalogLock, label: &str) -> Result<Staging, CatalogError> {
        let dir = self.staging_dir();
        tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(&dir)
            .map_err(CatalogError::io("create a staging directory in", &dir))
    }

    /// Every image, sorted by name.
    pub fn images(&self) -> Result<Vec<Image>, CatalogError> {
        let mut images: Vec<Image> = self.read_records(&self.amis_dir(), IMAGE_RECORD)?;
        images.sort_by(|a, b| a.name.cmp(&b.name).then(a.image_id.cmp(&b.image_id)));
        Ok(images)
    }

    /// Every kernel, sorted by id.
    pub fn kernels(&self) -> Result<Vec<Kernel>, CatalogError> {
        let mut kernels: Vec<Kernel> = self.read_records(&self.kernels_dir(), KERNEL_RECORD)?;
        kernels.sort_by(|a, b| a.kernel_id.cmp(&b.kernel_id));
        Ok(kernels)
    }

    fn read_records<T: for<'de> Deserialize<'de>>(
        &self,
        dir: &Path,
        record: &str,
    ) -> Result<Vec<T>, CatalogError> {
        let entries = fs::read_dir(dir).map_err(CatalogError::io("list", dir))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(CatalogError::io("list", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(ids::is_valid(name, ids::IMAGE_PREFIX) || ids::is_valid(name, ids::KERNEL_PREFIX))
            {
                continue;
            }
            let path = entry.path().join(record);
            match read_json(&path) {
                Ok(v) => out.push(v),
                Err(e) => tracing::warn!("skipping {}: {e}", path.display()),
            }
        }
        Ok(out)
    }

    /// The image with this id or name.
    pub fn image(&self, key: &str) -> Result<Image, CatalogError> {
        let images = self.images()?;
        images
            .into_iter()
            .find(|i| i.image_id == key || i.name == key)
            .ok_or_else(|| self.not_found(key))
    }

    /// The kernel with this id.
    pub fn kernel(&self, id: &str) -> Result<Kernel, CatalogError> {
        let path = self.kernels_dir().join(id).join(KERNEL_RECORD);
        if !ids::is_valid(id, ids::KERNEL_PREFIX) || !path.exists() {
            return Err(self.not_found(id));
        }
        read_json(&path)
    }

    /// The kernel kumo built most recently (`kumo images build kernel`), if any.
    pub fn builtin_kernel(&self) -> Result<Option<Kernel>, CatalogError> {
        Ok(self
            .kernels()?
            .into_iter()
            .filter(|k| {
                k.name == Builtin::Kernel.name() && matches!(k.origin, Origin::Built { .. })
            })
            .max_by(|a, b| a.creation_date.cmp(&b.creation_date)))
    }

    /// Resolves what `kumo images path` is given: `kernel` (kumo's kernel), an `aki-` id, or an
    /// image's name or `ami-` id.
    pub fn resolve(&self, key: &str) -> Result<Entry, CatalogError> {
        if key == Builtin::Kernel.name() {
            return self
                .builtin_kernel()?
                .map(Entry::Kernel)
                .ok_or_else(|| self.not_found(key));
        }
        if key.starts_with(ids::KERNEL_PREFIX) {
            return self.kernel(key).map(Entry::Kernel);
        }
        self.image(key).map(Entry::Image)
    }

    /// The path of an entry's artefact: a kernel's file or an image's root disk.
    pub fn entry_path(&self, entry: &Entry) -> PathBuf {
        match entry {
            Entry::Image(i) => self.root_disk_path(i),
            Entry::Kernel(k) => self.kernel_path(k),
        }
    }

    fn not_found(&self, key: &str) -> CatalogError {
        let hint = match Builtin::from_name(key) {
            Some(b) => format!("build it with `kumo images build {}`", b.name()),
            None => {
                "see `kumo images list`, or build kumo's images with `kumo images build`".into()
            }
        };
        CatalogError::NotFound {
            key: key.to_owned(),
            root: self.root.clone(),
            hint,
        }
    }

    /// The built image or kernel of `builtin` whose recipe had this inputs hash, if the catalog
    /// still holds it (and its artefact).
    pub fn cached_build(
        &self,
        builtin: Builtin,
        inputs_hash: &str,
    ) -> Result<Option<Entry>, CatalogError> {
        let built_from = |origin: &Origin| matches!(origin, Origin::Built { inputs_hash: h, .. } if h == inputs_hash);
        let entry = if builtin.is_kernel() {
            self.kernels()?
                .into_iter()
                .find(|k| k.name == builtin.name() && built_from(&k.origin))
                .map(Entry::Kernel)
        } else {
            self.images()?
                .into_iter()
                .find(|i| i.name == builtin.name() && built_from(&i.origin))
                .map(Entry::Image)
        };
        Ok(entry.filter(|e| self.entry_path(e).is_file()))
    }

    /// The inputs recorded for the current build of `builtin` (whatever its inputs hash), to
    /// say what changed when it has to be rebuilt.
    pub fn previous_inputs(&self, builtin: Builtin) -> Result<Option<Vec<String>>, CatalogError> {
        let origin = if builtin.is_kernel() {
            self.builtin_kernel()?.map(|k| k.origin)
        } else {
            self.images()?
                .into_iter()
                .find(|i| i.name == builtin.name())
                .map(|i| i.origin)
        };
        Ok(match origin {
            Some(Origin::Built { inputs, .. }) => Some(inputs),
            _ => None,
        })
    }

    /// Moves a staged kernel (its file already at `staging/<format file name>`) into the
    /// catalog under `kernel.kernel_id`. If that id is already there (same bytes), the record is
    /// updated and the staged copy dropped.
    pub fn install_kernel(
        &self,
        _lock: &CatalogLock,
        staging: Staging,
        kernel: &Kernel,
    ) -> Result<(), CatalogError> {
        let dest = self.kernels_dir().join(&kernel.kernel_id);
        install_dir(staging, &dest, KERNEL_RECORD, kernel)
    }

    /// Moves a staged image (its disk already at `staging/root.ext4`) into the catalog. A built
    /// image replaces earlier builds of the same name; kernels no image uses any more go too.
    pub fn install_image(
        &self,
        lock: &CatalogLock,
        staging: Staging,
        image: &Image,
    ) -> Result<(), CatalogError> {
        let dest = self.amis_dir().join(&image.image_id);
        install_dir(staging, &dest, IMAGE_RECORD, image)?;
        if matches!(image.origin, Origin::Built { .. }) {
            for old in self.images()? {
                if old.name == image.name
                    && old.image_id != image.image_id
                    && matches!(old.origin, Origin::Built { .. })
                {
                    self.remove_image_dir(lock, &old.image_id)?;
                }
            }
        }
        self.remove_unused_kernels(lock)
    }

    fn remove_image_dir(&self, lock: &CatalogLock, id: &str) -> Result<(), CatalogError> {
        // Rename out of amis/ first so readers never see a half-deleted image.
        let dir = self.amis_dir().join(id);
        let trash = self.stage(lock, "removed")?;
        let target = trash.path().join(id);
        fs::rename(&dir, &target).map_err(CatalogError::io("remove", &dir))?;
        drop(trash);
        Ok(())
    }

    /// Removes kernels that no image boots, except kumo's newest built kernel.
    pub fn remove_unused_kernels(&self, lock: &CatalogLock) -> Result<(), CatalogError> {
        let used: Vec<String> = self.images()?.into_iter().map(|i| i.kernel_id).collect();
        let keep = self.builtin_kernel()?.map(|k| k.kernel_id);
        for kernel in self.kernels()? {
            if used.contains(&kernel.kernel_id) || keep.as_ref() == Some(&kernel.kernel_id) {
                continue;
            }
            let dir = self.kernels_dir().join(&kernel.kernel_id);
            let trash = self.stage(lock, "removed")?;
            fs::rename(&dir, trash.path().join(&kernel.kernel_id))
                .map_err(CatalogError::io("remove", &dir))?;
        }
        Ok(())
    }

    /// RegisterImage: validates the root disk (and kernel), copies them into the catalog and
    /// returns the new image. Registering the same disk, kernel and name again returns the
    /// existing image; another image under that name is an error.
    pub fn register(&self, req: &RegisterImage) -> Result<Image, CatalogError> {
        validate_name(&req.name)?;
        if let Some(arch) = &req.architecture
            && arch != ARCHITECTURE
        {
            return Err(CatalogError::Architecture(arch.clone()));
        }
        validate::check_root_disk(&req.root_disk)?;
        if req.fsck && !validate::fsck_root_disk(&req.root_disk)? {
            tracing::warn!("e2fsck not found: checked only the superblock of the root disk");
        }
        let kernel_format = match &req.kernel {
            KernelChoice::File(path) => Some(validate::check_kernel(path)?),
            _ => None,
        };

        let lock =
            self.lock(|| tracing::info!("waiting for another writer of the image catalog"))?;

        // The kernel: the user's own (staged, shared with an identical one already here), or one
        // already in the catalog.
        let mut staged_kernel = None;
        let kernel_id = match &req.kernel {
            KernelChoice::Builtin => {
                self.builtin_kernel()?
                    .ok_or_else(|| CatalogError::NoKernel {
                        name: req.name.clone(),
                    })?
                    .kernel_id
            }
            KernelChoice::Id(id) => {
                if !ids::is_valid(id, ids::KERNEL_PREFIX) {
                    return Err(CatalogError::InvalidKernelId(id.clone()));
                }
                self.kernel(id)?.kernel_id
            }
            KernelChoice::File(path) => {
                let format = kernel_format.expect("validated above");
                let staging = self.stage(&lock, "register-kernel")?;
                let (size, sha256) = copy_into(path, &staging.path().join(format.file_name()))?;
                let kernel = Kernel {
                    kernel_id: ids::kernel_id(&sha256),
                    name: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "kernel".into()),
                    description: format!("registered from {}", path.display()),
                    format,
                    release: None,
                    creation_date: now_iso8601(),
                    size,
                    sha256,
                    origin: Origin::Registered {
                        from: absolute(path),
                    },
                };
                let id = kernel.kernel_id.clone();
                if self.kernel(&id).is_err() {
                    staged_kernel = Some((staging, kernel));
                }
                id
            }
        };

        let existing = self.images()?.into_iter().find(|i| i.name == req.name);
        let staging = self.stage(&lock, "register-image")?;
        let disk = staging.path().join(ROOT_DISK_FILE);
        let (size, sha256) = copy_into(&req.root_disk, &disk)?;
        let image_id = ids::image_id(&req.name, &kernel_id, &sha256);
        if let Some(existing) = existing {
            if existing.image_id == image_id {
                return Ok(existing);
            }
            return Err(CatalogError::DuplicateName {
                name: req.name.clone(),
                existing: existing.image_id,
            });
        }
        let image = Image {
            image_id,
            name: req.name.clone(),
            description: req
                .description
                .clone()
                .unwrap_or_else(|| format!("registered from {}", req.root_disk.display())),
            architecture: ARCHITECTURE.into(),
            root_device_name: ROOT_DEVICE_NAME.into(),
            kernel_id,
            creation_date: now_iso8601(),
            state: "available".into(),
            root_disk_size: size,
            root_disk_sha256: sha256,
            kernel_params: req
                .kernel_params
                .clone()
                .unwrap_or_else(|| DEFAULT_KERNEL_PARAMS.into()),
            origin: Origin::Registered {
                from: absolute(&req.root_disk),
            },
        };
        // The kernel goes in first so that an image in the catalog never names a missing kernel;
        // if the image then fails to go in, the kernel no image uses is removed again.
        if let Some((kernel_staging, kernel)) = staged_kernel {
            self.install_kernel(&lock, kernel_staging, &kernel)?;
        }
        if let Err(e) = self.install_image(&lock, staging, &image) {
            let _ = self.remove_unused_kernels(&lock);
            return Err(e);
        }
        Ok(image)
    }

    /// DeregisterImage: removes an image (by id or name) and any kernel no other image uses.
    pub fn deregister(&self, key: &str) -> Result<Image, CatalogError> {
        let lock =
            self.lock(|| tracing::info!("waiting for another writer of the image catalog"))?;
        let image = self.image(key)?;
        self.remove_image_dir(&lock, &image.image_id)?;
        self.remove_unused_kernels(&lock)?;
        Ok(image)
    }
}

/// Checks an image name as EC2 does: 3 to 128 characters of letters, digits and `()[] ./-'@_`.
/// Names of kumo's built-in images and names shaped like ids are reserved.
pub fn validate_name(name: &str) -> Result<(), CatalogError> {
    let invalid = |reason: &str| CatalogError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if !(3..=128).contains(&name.chars().count()) {
        return Err(invalid("it must be 3 to 128 characters long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(*c)))
    {
        return Err(invalid(&format!(
            "{c:?} is not allowed (letters, digits, spaces and ()[]./-'@_ are)"
        )));
    }
    if Builtin::from_name(name).is_some() {
        return Err(invalid("it is the name of one of kumo's built-in images"));
    }
    if name.starts_with(ids::IMAGE_PREFIX) || name.starts_with(ids::KERNEL_PREFIX) {
        return Err(invalid("names may not start with ami- or aki- (ids do)"));
    }
    Ok(())
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, CatalogError> {
    let text = fs::read_to_string(path).map_err(CatalogError::io("read", path))?;
    serde_json::from_str(&text).map_err(|e| CatalogError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Writes `value` as JSON to `path` (a new file) and syncs it.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), CatalogError> {
    let mut text = serde_json::to_string_pretty(value).expect("records serialize");
    text.push('\n');
    let mut file = File::create(path).map_err(CatalogError::io("create", path))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(CatalogError::io("write", path))
}

fn sync_dir(path: &Path) -> Result<(), CatalogError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(CatalogError::io("sync", path))
}

/// Writes the record into `staging`, then renames `staging` to `dest`. If `dest` exists (same
/// content-derived id), only its record is replaced (atomically) and `staging` is dropped.
fn install_dir<T: Serialize>(
    staging: Staging,
    dest: &Path,
    record: &str,
    value: &T,
) -> Result<(), CatalogError> {
    if dest.exists() {
        let tmp = staging.path().join(record);
        write_json(&tmp, value)?;
        let target = dest.join(record);
        fs::rename(&tmp, &target).map_err(CatalogError::io("update", &target))?;
        return sync_dir(dest);
    }
    write_json(&staging.path().join(record), value)?;
    sync_dir(staging.path())?;
    let staged = staging.keep();
    if let Err(e) = fs::rename(&staged, dest) {
        let _ = fs::remove_dir_all(&staged);
        return Err(CatalogError::io("move into place", dest)(e));
    }
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Free bytes for unprivileged writers on the file system holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` points to writable memory
    // large enough for a `statvfs`, which the call fills on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Copies `src` to the new file `dest` (keeping runs of zeros as holes, so sparse disks stay
/// sparse), syncs it, and returns its size and SHA-256. Checks first that the destination's file
/// system has room for the source's allocated blocks; a full disk mid-copy is reported as
/// [`CatalogError::DiskFull`] and the caller's staging directory takes the partial copy away.
pub fn copy_into(src: &Path, dest: &Path) -> Result<(u64, String), CatalogError> {
    let mut input = File::open(src).map_err(CatalogError::io("open", src))?;
    let meta = input.metadata().map_err(CatalogError::io("stat", src))?;
    let needed = meta.blocks().saturating_mul(512).min(meta.len());
    if let Some(dir) = dest.parent()
        && let Ok(free) = free_bytes(dir)
        && free < needed
    {
        return Err(CatalogError::DiskFull {
            path: dest.to_owned(),
            detail: format!(
                "copying {} needs {} MiB, {} MiB are free",
                src.display(),
                needed.div_ceil(1 << 20),
                free >> 20
            ),
        });
    }
    let mut output = File::create_new(dest).map_err(CatalogError::io("create", dest))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CatalogError::io("read", src)(e)),
        };
        let chunk = &buf[..n];
        hasher.update(chunk);
        if chunk.iter().all(|&b| b == 0) {
            output
                .seek(SeekFrom::Current(n as i64))
                .map_err(CatalogError::io("write", dest))?;
        } else {
            output
                .write_all(chunk)
                .map_err(CatalogError::io("write", dest))?;
        }
        size += n as u64;
    }
    output
        .set_len(size)
        .and_then(|()| output.sync_all())
        .map_err(CatalogError::io("write", dest))?;
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::validate::tests::{bzimage, disk_image, elf_kernel};

    struct Fixture {
        _dir: tempfile::TempDir,
        catalog: Catalog,
        inputs: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path().join("images")).unwrap();
        let inputs = dir.path().join("inputs");
        fs::create_dir(&inputs).unwrap();
        Fixture {
            _dir: dir,
            catalog,
            inputs,
        }
    }

    impl Fixture {
        fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.inputs.join(name);
            fs::write(&p, bytes).unwrap();
            p
        }

        fn request(&self, name: &str, disk: &Path, kernel: &Path) -> RegisterImage {
            RegisterImage {
                name: name.into(),
                root_disk: disk.to_owned(),
                kernel: KernelChoice::File(kernel.to_owned()),
                ..Default::default()
            }
        }

        /// Everything under the catalog root except the lock file and empty directories.
        fn files(&self) -> Vec<String> {
            let mut out = Vec::new();
            let mut stack = vec![self.catalog.root().to_owned()];
            while let Some(d) = stack.pop() {
                for e in fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if !p.ends_with(".lock") {
                        out.push(
                            p.strip_prefix(self.catalog.root())
                                .unwrap()
                                .display()
                                .to_string(),
                        );
                    }
                }
            }
            out.sort();
            out
        }
    }

    #[test]
    fn register_copies_validates_and_lists() {
        let f = fixture();
        let disk = f.file("disk.ext4", &disk_image(64));
        let kernel = f.file("vmlinux", &elf_kernel(true));
        let image = f
            .catalog
            .register(&RegisterImage {
                description: Some("my test image".into()),
                ..f.request("my-image", &disk, &kernel)
            })
            .unwrap();
        assert!(ids::is_valid(&image.image_id, ids::IMAGE_PREFIX));
        assert!(ids::is_valid(&image.kernel_id, ids::KERNEL_PREFIX));
        assert_eq!(image.root_disk_size, 64 * 4096);
        assert_eq!(image.root_device_name, "/dev/vda");
        assert_eq!(image.architecture, "x86_64");
        assert_eq!(image.description, "my test image");
        assert_eq!(image.kernel_params, DEFAULT_KERNEL_PARAMS);
        assert!(image.creation_date.ends_with('Z') && image.creation_date.len() == 24);

        // The catalog's copies are byte-identical to the inputs, and ids follow from content.
        let disk_copy = f.catalog.root_disk_path(&image);
        assert_eq!(fs::read(&disk_copy).unwrap(), fs::read(&disk).unwrap());
        assert_eq!(image.root_disk_sha256, ids::sha256_file(&disk).unwrap());
        assert_eq!(
            image.kernel_id,
            ids::kernel_id(&ids::sha256_file(&kernel).unwrap())
        );
        assert_eq!(
            image.image_id,
            ids::image_id("my-image", &image.kernel_id, &image.root_disk_sha256)
        );
        let k = f.catalog.kernel(&image.kernel_id).unwrap();
        assert_eq!(k.format, KernelFormat::Elf { pvh: true });
        assert_eq!(
            fs::read(f.catalog.kernel_path(&k)).unwrap(),
            elf_kernel(true)
        );

        // Found by name and by id; listed.
        assert_eq!(f.catalog.image("my-image").unwrap(), image);
        assert_eq!(f.catalog.image(&image.image_id).unwrap(), image);
        assert_eq!(f.catalog.images().unwrap(), vec![image.clone()]);
        match f.catalog.resolve(&image.kernel_id).unwrap() {
            Entry::Kernel(k2) => assert_eq!(k2, k),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            f.files(),
            vec![
                format!("amis/{}/image.json", image.image_id),
                format!("amis/{}/root.ext4", image.image_id),
                format!("kernels/{}/kernel.json", image.kernel_id),
                format!("kernels/{}/vmlinux", image.kernel_id),
            ]
        );
    }

    #[test]
    fn registering_again_is_idempotent_and_names_are_unique() {
        let f = fixture();
        let disk = f.file("disk.ext4", &disk_image(16));
        let kernel = f.file("bzImage", &bzimage(4096));
        let first = f
            .catalog
            .register(&f.request("img-a", &disk, &kernel))
            .unwrap();
        let again = f
            .catalog
            .register(&f.request("img-a", &disk, &kernel))
            .unwrap();
        assert_eq!(first, again);

        // Same name, different disk: refused, and nothing new is left behind.
        let before = f.files();
        let other = f.file("other.ext4", &disk_image(32));
        let err = f
            .catalog
            .register(&f.request("img-a", &other, &kernel))
            .unwrap_err();
        assert!(
            matches!(&err, CatalogError::DuplicateName { existing, .. } if *existing == first.image_id),
            "{err}"
        );
        assert_eq!(f.files(), before);

        // Same disk and kernel under another name: another image sharing the kernel.
        let second = f
            .catalog
            .register(&f.request("img-b", &disk, &kernel))
            .unwrap();
        assert_ne!(second.image_id, first.image_id);
        assert_eq!(second.kernel_id, first.kernel_id);
        assert_eq!(f.catalog.kernels().unwrap().len(), 1);
        assert_eq!(
            f.catalog.kernel(&first.kernel_id).unwrap().format,
            KernelFormat::BzImage { protocol: 0x020f }
        );

        // Deregistering one keeps the shared kernel; deregistering both removes it.
        f.catalog.deregister("img-a").unwrap();
        assert_eq!(f.catalog.kernels().unwrap().len(), 1);
        f.catalog.deregister(&second.image_id).unwrap();
        assert!(f.catalog.kernels().unwrap().is_empty());
        assert!(f.files().is_empty(), "{:?}", f.files());
    }

    #[test]
    fn bad_input_is_refused_with_the_file_named_and_nothing_left_behind() {
        let f = fixture();
        let good_disk = f.file("disk.ext4", &disk_image(16));
        let good_kernel = f.file("vmlinux", &elf_kernel(true));
        let not_ext4 = f.file("notes.txt", &[b'x'; 8192]);
        let truncated = f.file("cut.ext4", &disk_image(16)[..3 * 4096]);
        let not_kernel = f.file("kernel.txt", b"#!/bin/sh\necho hi\n");
        let missing = f.inputs.join("missing.ext4");

        let cases: Vec<(RegisterImage, &str)> = vec![
            (f.request("a-img", &not_ext4, &good_kernel), "notes.txt"),
            (f.request("a-img", &truncated, &good_kernel), "cut.ext4"),
            (f.request("a-img", &missing, &good_kernel), "missing.ext4"),
            (f.request("a-img", &good_disk, &not_kernel), "kernel.txt"),
            (f.request("x", &good_disk, &good_kernel), "3 to 128"),
            (
                f.request("kumo-minimal", &good_disk, &good_kernel),
                "built-in",
            ),
            (f.request("ami-12345", &good_disk, &good_kernel), "ami-"),
            (f.request("bad/name?", &good_disk, &good_kernel), "'?'"),
            (
                RegisterImage {
                    architecture: Some("arm64".into()),
                    ..f.request("a-img", &good_disk, &good_kernel)
                },
                "x86_64",
            ),
            (
                RegisterImage {
                    kernel: KernelChoice::Builtin,
                    ..f.request("a-img", &good_disk, &good_kernel)
                },
                "kumo images build kernel",
            ),
            (
                RegisterImage {
                    kernel: KernelChoice::Id("aki-nothex".into()),
                    ..f.request("a-img", &good_disk, &good_kernel)
                },
                "aki-nothex",
            ),
            (
                RegisterImage {
                    kernel: KernelChoice::Id("aki-0123456789abcdef0".into()),
                    ..f.request("a-img", &good_disk, &good_kernel)
                },
                "aki-0123456789abcdef0",
            ),
        ];
        for (req, expected) in cases {
            let err = f.catalog.register(&req).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in: {err}");
            assert!(
                f.files().is_empty(),
                "left behind after {err}: {:?}",
                f.files()
            );
        }
        assert!(f.catalog.images().unwrap().is_empty());
    }

    #[test]
    fn a_full_disk_is_reported_and_the_partial_copy_removed() {
        // /dev/full fails every write with ENOSPC: the error must say "space" and name the file.
        let f = fixture();
        let src = f.file("disk.ext4", &disk_image(16));
        let err = copy_into_writer(&src, Path::new("/dev/full")).unwrap_err();
        assert!(matches!(err, CatalogError::DiskFull { .. }), "{err}");
        assert!(err.to_string().contains("/dev/full"), "{err}");
        assert!(err.to_string().contains("KUMO_HOME"), "{err}");

        // And through staging: an error inside a stage leaves nothing in the catalog.
        let lock = f.catalog.lock(|| {}).unwrap();
        let staging = f.catalog.stage(&lock, "t").unwrap();
        fs::write(staging.path().join(ROOT_DISK_FILE), b"partial").unwrap();
        drop(staging);
        drop(lock);
        assert!(f.files().is_empty(), "{:?}", f.files());
    }

    /// `copy_into`'s write path against an existing writable file (such as /dev/full).
    fn copy_into_writer(src: &Path, dest: &Path) -> Result<(), CatalogError> {
        let data = fs::read(src).unwrap();
        let mut out = File::options()
            .write(true)
            .open(dest)
            .map_err(CatalogError::io("open", dest))?;
        out.write_all(&data)
            .and_then(|()| out.sync_all())
            .map_err(CatalogError::io("write", dest))
    }

    #[test]
    fn interrupted_writes_are_cleaned_when_the_lock_is_next_taken() {
        let f = fixture();
        let lock = f.catalog.lock(|| {}).unwrap();
        let staging = f.catalog.stage(&lock, "crashed").unwrap();
        fs::write(staging.path().join("root.ext4"), b"half").unwrap();
        let _kept = staging.keep(); // as if the process died here
        drop(lock);
        assert_eq!(f.files().len(), 1);
        drop(f.catalog.lock(|| {}).unwrap());
        assert!(f.files().is_empty());
    }

    #[test]
    fn copies_keep_zeros_sparse_and_hash_right() {
        let f = fixture();
        let mut data = vec![0u8; 5 << 20];
        data[3 << 20] = 7;
        let src = f.file("sparse.ext4", &data);
        let dest = f.inputs.join("copy");
        let (size, sha) = copy_into(&src, &dest).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(sha, ids::sha256_bytes(&data));
        assert_eq!(fs::read(&dest).unwrap(), data);
        let allocated = fs::metadata(&dest).unwrap().blocks() * 512;
        assert!(allocated < 2 << 20, "copy allocated {allocated} bytes");
        // The destination must be new: never overwrite a file in place.
        assert!(copy_into(&src, &dest).is_err());
    }

    #[test]
    fn not_found_says_how_to_get_the_image() {
        let f = fixture();
        let err = f.catalog.resolve("debian-12").unwrap_err().to_string();
        assert!(err.contains("kumo images build debian-12"), "{err}");
        let err = f.catalog.resolve("kernel").unwrap_err().to_string();
        assert!(err.contains("kumo images build kernel"), "{err}");
        let err = f
            .catalog
            .resolve("ami-0123456789abcdef0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kumo images list"), "{err}");
    }

    #[test]
    fn name_rules_follow_ec2() {
        for ok in ["abc", "My image (v2) [test] 1.0/x-y'z@w_", &"a".repeat(128)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "ab",
            &"a".repeat(129),
            "tab\there",
            "semi;colon",
            "kernel",
            "aki-1",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_round_trip_as_json() {
        let image = Image {
            image_id: "ami-0123456789abcdef0".into(),
            name: "n".into(),
            description: "d".into(),
            architecture: ARCHITECTURE.into(),
            root_device_name: ROOT_DEVICE_NAME.into(),
            kernel_id: "aki-0123456789abcdef0".into(),
            creation_date: now_iso8601(),
            state: "available".into(),
            root_disk_size: 1,
            root_disk_sha256: "00".into(),
            kernel_params: DEFAULT_KERNEL_PARAMS.into(),
            origin: Origin::Built {
                inputs_hash: "ab".into(),
                inputs: vec!["gcc: 12".into()],
            },
        };
        let json = serde_json::to_string(&image).unwrap();
        assert!(
            json.contains("\"ImageId\":\"ami-0123456789abcdef0\""),
            "{json}"
        );
        assert!(
            json.contains(r#""Origin":{"Built":{"InputsHash":"ab","Inputs":["gcc: 12"]}}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Image>(&json).unwrap(), image);
    }
}
