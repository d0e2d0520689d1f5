//! Launching one instance and terminating it: the sequence `RunInstances` and
//! `TerminateInstances` will use, driven today by `kumo run` in the foreground.
//!
//! Launch, in order (each step's undo goes on the [`CleanupStack`] before the next step, and the
//! record lists each host resource before it exists, so nothing outlives a failure or a kill):
//! 1. resolve the image (catalog), the instance type and the backend;
//! 2. make the instance record (`instances/i-.../`), save the user-data;
//! 3. copy the AMI's root disk for this instance;
//! 4. namespace backend: cgroups for the type's memory and vCPUs;
//! 5. the ENI's netdev: a TAP (kvm) or a veth pair and network namespace (namespace);
//! 6. the VPC switch with the instance's port and metadata;
//! 7. the instance's process (kumo-vmm, or the namespace launcher and init).
//!
//! Terminate: ask the guest to power off, wait, force it, then undo everything in reverse and
//! record the instance as `terminated` with the reason.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kumo_net::MacAddr;
use kumo_net::imds::{InstanceMetadata, PublicKey};

use super::backend::kvm::{self, VmmSpec};
use super::backend::namespace::{self, NamespaceSpec};
use super::backend::{AgentKnobs, BackendChoice, BackendKind, HostVirt, InstanceProcess};
use super::cgroup;
use super::cleanup::CleanupStack;
use super::console::{ConsoleFiles, Sink};
use super::disk::{self, CopyKind};
use super::ids;
use super::instance::{HostProcess, HostResources, InstanceDir, InstanceRecord, State};
use super::instance_types::{self, InstanceType};
use super::netdev;
use super::network::{self, InstanceNetworkSpec, VpcIds};
use super::stale;
use crate::images::catalog::{Catalog, CatalogError, Image};
use crate::images::recipes::Builtin;

/// EC2's limit on user-data (before base64).
pub const MAX_USER_DATA: usize = 16 * 1024;

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// Image name or `ami-` id.
    pub image: String,
    pub instance_type: String,
    pub user_data: Option<Vec<u8>>,
    /// Key pair name and public key.
    pub key: Option<PublicKey>,
    pub backend: BackendChoice,
    pub knobs: AgentKnobs,
    /// Run kvm even where Linux cannot boot (KUMO_KVM_ANYWAY=1).
    pub kvm_anyway: bool,
    /// Give the instance a public address the host can reach (internet gateway).
    pub host_access: bool,
}

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("kumo run needs root for namespaces and TAP devices: run it as root (sudo)")]
    NotRoot,
    #[error("image {0} is not built: run `kumo images build {0}`")]
    ImageNotBuilt(String),
    #[error("no image {0:?} in the catalog: `kumo images list` shows the images")]
    NoSuchImage(String),
    #[error(
        "the kernel of {image} ({kernel_id}) is not in the catalog: run `kumo images build kernel`"
    )]
    NoKernel { image: String, kernel_id: String },
    #[error("the image catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    InstanceType(#[from] instance_types::UnknownInstanceType),
    #[error(transparent)]
    Backend(#[from] super::backend::BackendError),
    #[error(
        "user-data is {0} bytes; EC2 accepts at most 16384 (16 KiB): shorten it, or gzip it \
         (kumo-agent, like cloud-init, accepts gzip-compressed user-data)"
    )]
    UserDataTooLarge(usize),
    #[error("instance record: {0}")]
    Record(#[from] super::instance::RecordError),
    #[error("copying the root disk {from} to {to}: {source}")]
    Disk {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the instance's network device: {0}")]
    Netdev(#[from] netdev::NetdevError),
    #[error(
        "no free /30 left in {}: remove some kumo* netdevs",
        netdev::PUBLIC_RANGE
    )]
    NoPublicBlock,
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error(transparent)]
    Kvm(#[from] kvm::KvmError),
    #[error(transparent)]
    Namespace(#[from] namespace::NamespaceError),
}

/// A running instance and everything it holds on the host. Dropping it terminates the instance
/// (forcefully) and removes everything; [`Launched::terminate`] does it gracefully first.
pub struct Launched {
    pub record: InstanceRecord,
    /// What the metadata service serves the instance.
    pub metadata: InstanceMetadata,
    pub disk_copy: CopyKind,
    /// cgroup limits (namespace backend).
    pub limits: Option<cgroup::Limits>,
    /// The namespace's init (namespace backend).
    pub init: Option<HostProcess>,
    // Field order is drop order: the process goes before the things it uses.
    process: Option<Box<dyn InstanceProcess>>,
    cleanup: CleanupStack,
    dir: InstanceDir,
}

impl std::fmt::Debug for Launched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launched")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// How termination went.
#[derive(Debug, Clone)]
pub struct Terminated {
    /// The instance process's exit status.
    pub exit: Option<std::process::ExitStatus>,
    /// Whether it stopped within the grace period, without being forced.
    pub graceful: bool,
    /// Whether it had already stopped by itself before termination began.
    pub had_stopped: bool,
    /// Cleanup steps that failed.
    pub leftovers: Vec<String>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Finds the image: by name or id; a built-in that is missing says how to build it.
pub fn resolve_image(catalog: &Catalog, key: &str) -> Result<Image, LaunchError> {
    match catalog.image(key) {
        Ok(image) => Ok(image),
        Err(CatalogError::NotFound { .. }) => {
            if Builtin::from_name(key).is_some() {
                Err(LaunchError::ImageNotBuilt(key.to_string()))
            } else {
                Err(LaunchError::NoSuchImage(key.to_string()))
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), LaunchError> {
    std::fs::write(path, bytes).map_err(|source| LaunchError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Launches one instance. Console output and agent reports go to `sink` from the moment the
/// instance's process starts.
pub fn launch(
    req: &LaunchRequest,
    home: &Path,
    sink: Sink,
    started: Instant,
) -> Result<Launched, LaunchError> {
    if !is_root() {
        return Err(LaunchError::NotRoot);
    }
    let itype: InstanceType = instance_types::lookup(&req.instance_type)?;
    let catalog = Catalog::open(home.join("images"))?;
    let image = resolve_image(&catalog, &req.image)?;
    let host = HostVirt::detect();
    let backend = super::backend::choose(req.backend, &host, &image.name, req.kvm_anyway)?;
    if let Some(ud) = &req.user_data
        && ud.len() > MAX_USER_DATA
    {
        return Err(LaunchError::UserDataTooLarge(ud.len()));
    }
    // The kvm backend's inputs, checked before anything is created.
    let kvm_inputs = match backend {
        BackendKind::Kvm => {
            kvm::check_size(itype.name, itype.vcpus, itype.memory_mib)?;
            let kernel = catalog.kernel(&image.kernel_id).map_err(|e| match e {
                CatalogError::NotFound { .. } => LaunchError::NoKernel {
                    image: image.name.clone(),
                    kernel_id: image.kernel_id.clone(),
                },
                other => LaunchError::Catalog(other),
            })?;
            Some((kvm::find_vmm()?, catalog.kernel_path(&kernel)))
        }
        BackendKind::Namespace => None,
    };

    // Leftovers of killed runs go first (their netdevs could clash with ours).
    for line in stale::clean_stale(home) {
        tracing::warn!("{line}");
    }

    let instance_id = ids::new_instance_id();
    let dir = InstanceDir::create(home, &instance_id)?;
    let mut cleanup = CleanupStack::new();
    let disk_path = dir.file("root.ext4");
    let mut resources = HostResources {
        disk: Some(disk_path.clone()),
        ..Default::default()
    };
    match backend {
        BackendKind::Kvm => {
            resources.netdevs.push(netdev::tap_name(&instance_id));
            resources.api_socket = Some(dir.file("vmm.sock"));
        }
        BackendKind::Namespace => {
            resources
                .netdevs
                .push(netdev::veth_switch_name(&instance_id));
            resources.netns = Some(netdev::netns_name(&instance_id));
        }
    }
    let mut record = InstanceRecord {
        instance_id: instance_id.clone(),
        reservation_id: String::new(),
        image_id: image.image_id.clone(),
        image_name: image.name.clone(),
        kernel_id: Some(image.kernel_id.clone()),
        instance_type: itype.name.to_string(),
        vcpus: itype.vcpus,
        memory_mib: itype.memory_mib,
        backend,
        state: State::Pending,
        state_reason: None,
        launch_time: crate::images::catalog::now_iso8601(),
        key_name: req.key.as_ref().map(|k| k.name.clone()),
        vpc: VpcIds::new(),
        eni: None,
        owner_pid: std::process::id(),
        resources,
        user_data_exit: None,
    };
    dir.save(&record)?;
    let built = build(
        req,
        &catalog,
        &image,
        itype,
        backend,
        kvm_inputs,
        &dir,
        &mut record,
        &mut cleanup,
        sink,
        started,
    );
    let parts = match built {
        Ok(parts) => parts,
        Err(e) => {
            for failure in cleanup.run() {
                tracing::warn!("cleanup after the failed launch: {failure}");
            }
            record.state = State::Terminated;
            record.state_reason = Some(format!("Server.InternalError: launch failed: {e}"));
            let _ = dir.save(&record);
            return Err(e);
        }
    };
    record.state = State::Running;
    dir.save(&record)?;
    Ok(Launched {
        record,
        metadata: parts.metadata,
        disk_copy: parts.disk_copy,
        limits: parts.limits,
        init: parts.init,
        process: Some(parts.process),
        cleanup,
        dir,
    })
}

/// What [`build`] made.
struct Parts {
    metadata: InstanceMetadata,
    disk_copy: CopyKind,
    limits: Option<cgroup::Limits>,
    init: Option<HostProcess>,
    process: Box<dyn InstanceProcess>,
}

/// Steps 2-7 of a launch; every undo is on `cleanup` when it returns, error or not.
#[allow(clippy::too_many_arguments)]
fn build(
    req: &LaunchRequest,
    catalog: &Catalog,
    image: &Image,
    itype: InstanceType,
    backend: BackendKind,
    kvm_inputs: Option<(PathBuf, PathBuf)>,
    dir: &InstanceDir,
    record: &mut InstanceRecord,
    cleanup: &mut CleanupStack,
    sink: Sink,
    started: Instant,
) -> Result<Parts, LaunchError> {
    let instance_id = record.instance_id.clone();
    let disk_path = dir.file("root.ext4");
    let user_data_file = match &req.user_data {
        Some(ud) => {
            let p = dir.file("user-data");
            write_file(&p, ud)?;
            Some(p)
        }
        None => None,
    };

    // The root disk.
    let src = catalog.root_disk_path(image);
    {
        let disk_path = disk_path.clone();
        cleanup.push(format!("delete {}", disk_path.display()), move || {
            let stuck = disk::release_loops(&disk_path, Duration::from_secs(3));
            let removed = match std::fs::remove_file(&disk_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            };
            if !stuck.is_empty() {
                return Err(format!("loop devices still attached: {stuck:?}"));
            }
            removed
        });
    }
    let disk_copy = disk::copy_disk(&src, &disk_path).map_err(|source| LaunchError::Disk {
        from: src.clone(),
        to: disk_path.clone(),
        source,
    })?;

    // Limits (namespace: the kernel of a VM would do it).
    let limits = match backend {
        BackendKind::Namespace => {
            let limits = cgroup::create(&instance_id, itype.memory_mib, itype.vcpus);
            record.resources.cgroups = limits.dirs.clone();
            dir.save(record)?;
            let dirs = limits.dirs.clone();
            cleanup.push("remove the instance's cgroups", move || {
                cgroup::destroy(&dirs)
            });
            Some(limits)
        }
        BackendKind::Kvm => None,
    };

    // The ENI's netdev.
    let mac = MacAddr::random_local();
    let switch_netdev = record.resources.netdevs[0].clone();
    match backend {
        BackendKind::Kvm => {
            let tap = switch_netdev.clone();
            cleanup.push(format!("delete TAP {tap}"), move || {
                netdev::delete_tap(&tap).map_err(|e| e.to_string())
            });
            netdev::create_tap(&switch_netdev)?;
        }
        BackendKind::Namespace => {
            let ns = netdev::netns_name(&instance_id);
            let veth = switch_netdev.clone();
            let ns2 = ns.clone();
            cleanup.push(format!("delete network namespace {ns}"), move || {
                netdev::delete_netns(&ns2).map_err(|e| e.to_string())
            });
            cleanup.push(format!("delete veth {veth}"), move || {
                netdev::delete_link(&veth).map_err(|e| e.to_string())
            });
            netdev::create_netns(&ns)?;
            netdev::create_veth(
                &switch_netdev,
                &netdev::veth_instance_name(&instance_id),
                &ns,
                mac,
            )?;
        }
    }

    // Host access: the internet gateway's veth pair, the host end in a free /30.
    let gateway = if req.host_access {
        let (host_ip, public_cidr) =
            netdev::pick_public_block(&instance_id).ok_or(LaunchError::NoPublicBlock)?;
        let switch_end = netdev::gateway_switch_name(&instance_id);
        let host_end = netdev::gateway_host_name(&instance_id);
        record.resources.netdevs.push(switch_end.clone());
        dir.save(record)?;
        let name = switch_end.clone();
        cleanup.push(format!("delete veth {name}"), move || {
            netdev::delete_link(&name).map_err(|e| e.to_string())
        });
        netdev::create_gateway_veth(
            &switch_end,
            &host_end,
            &format!("{host_ip}/{}", public_cidr.prefix_len()),
        )?;
        Some(network::HostGateway {
            switch_netdev: switch_end,
            host_ip,
            public_cidr,
        })
    } else {
        None
    };

    // The VPC switch.
    let spec = InstanceNetworkSpec {
        instance_id: instance_id.clone(),
        ami_id: image.image_id.clone(),
        instance_type: itype.name.to_string(),
        user_data_file,
        public_keys: req.key.iter().cloned().collect(),
        netdev: switch_netdev.clone(),
        mac,
        log_dir: dir.path.clone(),
        gateway,
    };
    let config = network::default_vpc_config(&spec, &record.vpc);
    write_file(
        &dir.file("switch.json"),
        serde_json::to_string_pretty(&config)
            .expect("serializable")
            .as_bytes(),
    )?;
    let net = network::start(config)?;
    let metadata = net.metadata.clone();
    record.eni = Some(net.eni.clone());
    record.reservation_id = metadata.reservation_id.clone();
    write_file(
        &dir.file("metadata.json"),
        serde_json::to_string_pretty(&metadata)
            .expect("serializable")
            .as_bytes(),
    )?;
    cleanup.push("stop the VPC switch", move || {
        net.runtime.stop();
        Ok(())
    });
    dir.save(record)?;

    // The instance's process.
    let console_files =
        ConsoleFiles::open(&dir.path, started).map_err(|source| LaunchError::Write {
            path: dir.file("console.log"),
            source,
        })?;
    let mut init = None;
    let process: Box<dyn InstanceProcess> = match backend {
        BackendKind::Kvm => {
            let (vmm, kernel) = kvm_inputs.expect("checked above");
            let spec = VmmSpec {
                kernel,
                disk: disk_path.clone(),
                cmdline: kvm::kernel_cmdline(&image.kernel_params, &req.knobs),
                vcpus: itype.vcpus,
                memory_mib: itype.memory_mib,
                tap: switch_netdev.clone(),
                mac: mac.to_string(),
                api_socket: dir.file("vmm.sock"),
            };
            let vm = kvm::spawn(&vmm, &spec, &console_files, &sink)?;
            record
                .resources
                .processes
                .extend(HostProcess::of(vm.pid(), "kumo-vmm"));
            Box::new(vm)
        }
        BackendKind::Namespace => {
            let root = dir.file("rootfs");
            std::fs::create_dir_all(&root).map_err(|source| LaunchError::Write {
                path: root.clone(),
                source,
            })?;
            let root2 = root.clone();
            cleanup.push(
                format!("remove {}", root.display()),
                move || match std::fs::remove_dir(&root2) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                    _ => Ok(()),
                },
            );
            let spec = NamespaceSpec {
                netns: netdev::netns_name(&instance_id),
                disk: disk_path.clone(),
                root,
                cgroups: record.resources.cgroups.clone(),
                pid_file: dir.file("init.pid"),
                knobs: req.knobs.clone(),
            };
            let ns = namespace::spawn(&spec, &console_files, &sink)?;
            record
                .resources
                .processes
                .extend(HostProcess::of(ns.launcher_pid(), "namespace launcher"));
            init = ns.init().cloned();
            record.resources.processes.extend(init.clone());
            Box::new(ns)
        }
    };
    Ok(Parts {
        metadata,
        disk_copy,
        limits,
        init,
        process,
    })
}

/// How long a guest gets to power off before it is forced.
pub const GRACE: Duration = Duration::from_secs(10);

impl Launched {
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The instance process's exit status, if it has ended by itself.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.process.as_mut().and_then(|p| p.try_wait())
    }

    /// Records the user-data's exit status.
    pub fn set_user_data_exit(&mut self, exit: i32) {
        self.record.user_data_exit = Some(exit);
        let _ = self.dir.save(&self.record);
    }

    /// Stops the instance (gracefully unless `graceful` is false), removes everything it held,
    /// and records it as terminated because of `reason`.
    pub fn terminate(&mut self, graceful: bool, reason: &str) -> Terminated {
        self.record.state = State::ShuttingDown;
        let _ = self.dir.save(&self.record);
        let mut exit = None;
        let mut stopped_gracefully = false;
        let mut had_stopped = false;
        if let Some(mut p) = self.process.take() {
            exit = p.try_wait();
            had_stopped = exit.is_some();
            if exit.is_none() && graceful {
                match p.request_shutdown() {
                    Ok(()) => {
                        // kumo-vmm stops the VM itself after GRACE; allow it a little more.
                        exit = p.wait_timeout(GRACE + Duration::from_secs(2));
                        stopped_gracefully = exit.is_some();
                    }
                    Err(e) => tracing::debug!("graceful shutdown not possible: {e}"),
                }
            } else if exit.is_some() {
                stopped_gracefully = true;
            }
            if exit.is_none() {
                p.force_stop();
                exit = p.try_wait();
            }
        }
        let leftovers = self.cleanup.run();
        self.record.state = State::Terminated;
        self.record.state_reason = Some(reason.to_string());
        let _ = self.dir.save(&self.record);
        Terminated {
            exit,
            graceful: stopped_gracefully,
            had_stopped,
            leftovers,
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if self.record.state != State::Terminated {
            self.terminate(false, "Server.InternalError: kumo stopped unexpectedly");
        }
    }
}
