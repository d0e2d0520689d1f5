//! Builds a micro-VM from a [`VmConfig`], in boot order, in one function: [`build_microvm`].
//!
//! ```text
//! KVM -> guest memory -> VM (irqchip, PIT, memory slots) -> kernel -> initrd
//!     -> legacy devices (COM1, i8042) -> virtio devices (+ command-line fragments)
//!     -> command line -> boot structures (page tables, GDT, MP table, zero page / PVH info)
//!     -> vCPUs (CPUID, MSRs, registers, LAPIC) -> API socket
//! ```
//!
//! Each stage has its own [`StartMicrovmError`] variant, so a failure names the stage and what
//! the user can do about it. Virtio devices are attached by [`attach_block_device`] and
//! [`attach_net_device`]: a 4 KiB MMIO slot (vm-allocator) and a GSI each, an ioeventfd per
//! queue on QueueNotify, an irqfd on the GSI, the event loop subscription and the
//! `virtio_mmio.device=` command-line fragment.

use crate::api_socket::{ApiServer, ApiSocketError};
use crate::arch::x86_64::boot_params::{self, BootParamsError, ZeroPageInput};
use crate::arch::x86_64::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, I8042_KBD_IRQ, INITRD_ADDR_MAX, IRQ_DEVICE_BASE,
    IRQ_DEVICE_MAX, MPTABLE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, SERIAL_IRQ,
    VIRTIO_MMIO_SIZE, VIRTIO_MMIO_SLOT_SIZE, VIRTIO_MMIO_START, ZERO_PAGE_START, low_ram_end,
};
use crate::arch::x86_64::mptable::{self, MpTableError};
use crate::arch::x86_64::regs::{self, EntryMode, RegsError};
use crate::config::{ConsoleConfig, DiskConfig, NetConfig, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::i8042::{I8042_LEN, I8042_PORT};
use crate::devices::legacy::serial::{COM1_LEN, COM1_PORT};
use crate::devices::legacy::{EventFdTrigger, I8042, SerialDevice, SerialInput};
use crate::devices::virtio::{self, Block, MacAddr, MmioTransport, Net};
use crate::exit::{ExitSignal, ExitTrigger, VmExit};
use crate::vmm::{Subscriber, Vmm};
use crate::vstate::kvm::{KvmContext, KvmError};
use crate::vstate::memory::{MemoryError, create_guest_memory};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};
use event_manager::{EventManager, SubscriberOps};
use kvm_ioctls::IoEventAddress;
use linux_loader::cmdline::Cmdline;
use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
use linux_loader::loader::elf::{Elf, Error as ElfError, PvhBootCapability};
use linux_loader::loader::{BzImage, Error as LoaderError, KernelLoader};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator, RangeInclusive};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Why a micro-VM could not be built. One variant per boot stage.
#[derive(Debug, thiserror::Error)]
pub enum StartMicrovmError {
    #[error("{0}")]
    Kvm(#[from] KvmError),
    #[error("{0} vCPUs requested but this host's KVM allows at most {1}")]
    TooManyVcpus(u8, usize),
    #[error("{0}")]
    GuestMemory(#[from] MemoryError),
    #[error("{0}")]
    Vm(#[from] VmError),
    #[error("kernel {0} not found: check the --kernel path")]
    KernelNotFound(PathBuf),
    #[error("cannot read kernel {0}: {1}")]
    KernelRead(PathBuf, std::io::Error),
    #[error("{0} is not a kernel: expected an x86_64 ELF vmlinux or a bzImage ({1})")]
    NotAKernel(PathBuf, String),
    #[error(
        "guest memory ({have_mib} MiB) is too small for the kernel {path}, which needs {need_mib} MiB: raise --memory-mib"
    )]
    MemoryTooSmallForKernel {
        path: PathBuf,
        have_mib: u64,
        need_mib: u64,
    },
    #[error("cannot load kernel {0}: {1}")]
    KernelLoad(PathBuf, String),
    #[error("initrd {0} not found: check the --initrd path")]
    InitrdNotFound(PathBuf),
    #[error("cannot read initrd {0}: {1}")]
    InitrdRead(PathBuf, std::io::Error),
    #[error(
        "guest memory is too small for the initrd {0} ({1} bytes) after the kernel: raise --memory-mib"
    )]
    MemoryTooSmallForInitrd(PathBuf, u64),
    #[error("cannot open the console {0}: {1}")]
    Console(PathBuf, std::io::Error),
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot register an interrupt with KVM: {0}")]
    Irqfd(kvm_ioctls::Error),
    #[error("cannot register a queue notification with KVM: {0}")]
    Ioeventfd(kvm_ioctls::Error),
    #[error("cannot place a device on the bus: {0}")]
    Bus(#[from] BusError),
    #[error("cannot create the event loop: {0}")]
    EventManager(event_manager::Error),
    #[error("no room for another device: {0}")]
    DeviceResources(String),
    #[error("disk {path}: {reason}")]
    Disk { path: PathBuf, reason: String },
    #[error("network device on TAP {tap}: {reason}")]
    Net { tap: String, reason: String },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("{0}")]
    BootParams(#[from] BootParamsError),
    #[error("{0}")]
    MpTable(#[from] MpTableError),
    #[error("{0}")]
    BootTables(#[from] RegsError),
    #[error("cannot write boot information into guest memory: {0}")]
    GuestWrite(vm_memory::GuestMemoryError),
    #[error("{0}")]
    Vcpu(#[from] VcpuError),
    #[error("{0}")]
    ApiSocket(#[from] ApiSocketError),
}

/// Where the kernel wants to be entered, and what the loader found.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The entry protocol and address (the boot-information address is filled in later).
    pub entry: KernelEntry,
    /// The bzImage setup header, if the kernel is a bzImage.
    pub setup_header: Option<linux_loader::loader::bootparam::setup_header>,
    /// First guest address after the kernel image.
    pub kernel_end: u64,
}

/// The kernel's entry protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEntry {
    /// PVH 32-bit entry from the ELF note.
    Pvh(u64),
    /// Linux 64-bit boot protocol.
    Long64(u64),
}

/// Device resources: MMIO slots and GSIs.
pub struct DeviceResources {
    mmio: AddressAllocator,
    irqs: IdAllocator,
}

impl DeviceResources {
    /// Slots from the virtio-mmio window, GSIs 5-23.
    pub fn new() -> Self {
        Self {
            mmio: AddressAllocator::new(VIRTIO_MMIO_START, VIRTIO_MMIO_SIZE)
                .expect("the virtio-mmio window is a valid range"),
            irqs: IdAllocator::new(IRQ_DEVICE_BASE, IRQ_DEVICE_MAX)
                .expect("the device IRQ range is valid"),
        }
    }

    /// One 4 KiB slot and one GSI.
    pub fn allocate_slot(&mut self) -> Result<(u64, u32), StartMicrovmError> {
        let range: RangeInclusive = self
            .mmio
            .allocate(
                VIRTIO_MMIO_SLOT_SIZE,
                VIRTIO_MMIO_SLOT_SIZE,
                AllocPolicy::FirstMatch,
            )
            .map_err(|e| StartMicrovmError::DeviceResources(format!("MMIO space: {e}")))?;
        let irq = self.irqs.allocate_id().map_err(|e| {
            StartMicrovmError::DeviceResources(format!("interrupt lines (at most 19 devices): {e}"))
        })?;
        Ok((range.start(), irq))
    }
}

impl Default for DeviceResources {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds the micro-VM, ready to run. The boot order, stage by stage.
pub fn build_microvm(config: &VmConfig) -> Result<Vmm, StartMicrovmError> {
    // KVM.
    let kvm = KvmContext::open()?;
    if config.vcpus as usize > kvm.max_vcpus() {
        return Err(StartMicrovmError::TooManyVcpus(
            config.vcpus,
            kvm.max_vcpus(),
        ));
    }

    // Guest memory and the VM (irqchip, PIT, memory slots).
    let mem_size = config.memory_mib << 20;
    let guest_memory = create_guest_memory(mem_size)?;
    let vm = Vm::new(&kvm.kvm)?;
    vm.register_memory(&kvm.kvm, &guest_memory)?;

    // Kernel and initrd.
    let kernel = load_kernel(&guest_memory, &config.kernel, mem_size)?;
    let initrd = match &config.initrd {
        Some(path) => Some(load_initrd(
            &guest_memory,
            path,
            mem_size,
            kernel.kernel_end,
        )?),
        None => None,
    };

    // Legacy devices: COM1 and the i8042.
    let exit = Arc::new(ExitSignal::new().map_err(StartMicrovmError::EventFd)?);
    let mut io_bus = Bus::new();
    let mut mmio_bus = Bus::new();
    let mut event_manager: EventManager<Subscriber> =
        EventManager::new().map_err(StartMicrovmError::EventManager)?;
    let serial = attach_serial(&vm, &mut io_bus, &config.console)?;
    if config.console == ConsoleConfig::Stdio {
        attach_console_input(&mut event_manager, serial.clone());
    }
    let i8042 = attach_i8042(&vm, &mut io_bus, exit.clone())?;

    // Virtio devices, each adding its command-line fragment.
    let mut cmdline = Cmdline::try_from(&config.cmdline, CMDLINE_MAX_SIZE)
        .map_err(|e| StartMicrovmError::Cmdline(e.to_string()))?;
    let mut resources = DeviceResources::new();
    for disk in &config.disks {
        attach_block_device(
            &vm,
            &guest_memory,
            &mut mmio_bus,
            &mut event_manager,
            &mut resources,
            &mut cmdline,
            disk,
        )?;
    }
    for net in &config.nets {
        attach_net_device(
            &vm,
            &guest_memory,
            &mut mmio_bus,
            &mut event_manager,
            &mut resources,
            &mut cmdline,
            net,
        )?;
    }

    // Command line and boot structures.
    let cmdline = cmdline
        .as_cstring()
        .map_err(|e| StartMicrovmError::Cmdline(e.to_string()))?;
    let cmdline_bytes = cmdline.as_bytes_with_nul();
    guest_memory
        .write_slice(cmdline_bytes, GuestAddress(CMDLINE_START))
        .map_err(StartMicrovmError::GuestWrite)?;
    let entry = configure_system(
        &guest_memory,
        config.vcpus,
        mem_size,
        &kernel,
        initrd,
        cmdline_bytes.len(),
    )?;

    // vCPUs.
    let mut vcpus = Vec::with_capacity(config.vcpus as usize);
    for index in 0..config.vcpus {
        let vcpu = Vcpu::new(&vm, index, io_bus.clone(), mmio_bus.clone(), exit.clone())?;
        vcpu.configure(&kvm.supported_cpuid, config.vcpus, entry)?;
        vcpus.push(vcpu);
    }

    // The control API.
    let api = match &config.api_socket {
        Some(path) => Some(ApiServer::bind(path)?),
        None => None,
    };

    Ok(Vmm::new(
        config.clone(),
        kvm,
        vm,
        guest_memory,
        vcpus,
        event_manager,
        exit,
        i8042,
        serial,
        api,
    ))
}

/// The highest guest-physical end of an ELF's loadable segments (None if not an ELF64).
fn elf_extent(file: &mut File) -> Option<u64> {
    let mut ehdr = Elf64_Ehdr::default();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_exact(ehdr.as_mut_slice()).ok()?;
    if ehdr.e_ident[..4] != *b"\x7fELF" || ehdr.e_ident[4] != 2 {
        return None;
    }
    file.seek(SeekFrom::Start(ehdr.e_phoff)).ok()?;
    let mut end = 0u64;
    for _ in 0..ehdr.e_phnum.min(256) {
        let mut ph = Elf64_Phdr::default();
        file.read_exact(ph.as_mut_slice()).ok()?;
        if ph.p_type == PT_LOAD {
            end = end.max(ph.p_paddr.saturating_add(ph.p_memsz));
        }
    }
    Some(end)
}

/// Loads an ELF vmlinux (PVH note preferred, else its 64-bit entry) or a bzImage.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
) -> Result<LoadedKernel, StartMicrovmError> {
    let mut file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => StartMicrovmError::KernelNotFound(path.to_path_buf()),
        _ => StartMicrovmError::KernelRead(path.to_path_buf(), e),
    })?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(StartMicrovmError::NotAKernel(
            path.to_path_buf(),
            "it is a directory".into(),
        ));
    }
    let low_end = low_ram_end(mem_size);
    let too_small = |need: u64| StartMicrovmError::MemoryTooSmallForKernel {
        path: path.to_path_buf(),
        have_mib: mem_size >> 20,
        need_mib: need.div_ceil(1 << 20),
    };
    if let Some(end) = elf_extent(&mut file)
        && end > low_end
    {
        return Err(too_small(end));
    }
    match Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => {
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => KernelEntry::Pvh(addr.0),
                _ => KernelEntry::Long64(r.kernel_load.0),
            };
            Ok(LoadedKernel {
                entry,
                setup_header: None,
                kernel_end: r.kernel_end,
            })
        }
        Err(LoaderError::Elf(ElfError::InvalidElfMagicNumber | ElfError::ReadElfHeader)) => {
            load_bzimage(mem, path, &mut file, low_end).map_err(|e| match e {
                Some(need) => too_small(need),
                None => StartMicrovmError::NotAKernel(
                    path.to_path_buf(),
                    "no ELF or bzImage header".into(),
                ),
            })
        }
        Err(LoaderError::Elf(ElfError::InvalidEntryAddress)) => Err(StartMicrovmError::KernelLoad(
            path.to_path_buf(),
            format!("its entry point is below {HIMEM_START:#x}"),
        )),
        Err(LoaderError::Elf(ElfError::ReadKernelImage)) => Err(StartMicrovmError::KernelLoad(
            path.to_path_buf(),
            "a segment does not fit guest memory (is it linked for the low 4 GiB?)".into(),
        )),
        Err(e) => Err(StartMicrovmError::NotAKernel(
            path.to_path_buf(),
            e.to_string(),
        )),
    }
}

/// Loads a bzImage; `Err(Some(bytes))` if memory is too small, `Err(None)` if not a bzImage.
fn load_bzimage(
    mem: &GuestMemoryMmap,
    _path: &Path,
    file: &mut File,
    low_end: u64,
) -> Result<LoadedKernel, Option<u64>> {
    let r =
        BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(|e| match e {
            LoaderError::Bzimage(
                linux_loader::loader::bzimage::Error::ReadBzImageCompressedKernel,
            ) => Some(
                file.metadata()
                    .map(|m| HIMEM_START + m.len())
                    .unwrap_or(u64::MAX),
            ),
            _ => None,
        })?;
    let hdr = r.setup_header.ok_or(None)?;
    let need = r.kernel_load.0 + (hdr.init_size as u64).max(r.kernel_end - r.kernel_load.0);
    if need > low_end {
        return Err(Some(need));
    }
    // The 64-bit entry of a bzImage is 0x200 past its protected-mode code.
    Ok(LoadedKernel {
        entry: KernelEntry::Long64(r.kernel_load.0 + 0x200),
        setup_header: Some(hdr),
        kernel_end: need,
    })
}

/// Puts the initrd as high as allowed below the MMIO gap and `INITRD_ADDR_MAX`, page-aligned.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
    kernel_end: u64,
) -> Result<(u64, u64), StartMicrovmError> {
    let mut file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => StartMicrovmError::InitrdNotFound(path.to_path_buf()),
        _ => StartMicrovmError::InitrdRead(path.to_path_buf(), e),
    })?;
    let size = file
        .metadata()
        .map_err(|e| StartMicrovmError::InitrdRead(path.to_path_buf(), e))?
        .len();
    let top = low_ram_end(mem_size).min(INITRD_ADDR_MAX + 1);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end.max(HIMEM_START))
        .ok_or_else(|| StartMicrovmError::MemoryTooSmallForInitrd(path.to_path_buf(), size))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| {
            StartMicrovmError::InitrdRead(path.to_path_buf(), std::io::Error::other(e.to_string()))
        })?;
    Ok((addr, size))
}

/// Writes the boot structures for `kernel`'s entry protocol; returns the vCPUs' entry state.
pub fn configure_system(
    mem: &GuestMemoryMmap,
    num_cpus: u8,
    mem_size: u64,
    kernel: &LoadedKernel,
    initrd: Option<(u64, u64)>,
    cmdline_size: usize,
) -> Result<EntryMode, StartMicrovmError> {
    let e820 = boot_params::e820_map(mem_size)?;
    let mp = mptable::mptable_bytes(num_cpus)?;
    mem.write_slice(&mp, GuestAddress(MPTABLE_START))
        .map_err(StartMicrovmError::GuestWrite)?;
    let mode = match kernel.entry {
        KernelEntry::Long64(entry) => {
            let input = ZeroPageInput {
                setup_header: kernel.setup_header,
                cmdline_addr: CMDLINE_START,
                cmdline_size: cmdline_size as u32,
                initrd,
            };
            let zp = boot_params::zero_page(&input, &e820)?;
            mem.write_obj(zp, GuestAddress(ZERO_PAGE_START))
                .map_err(StartMicrovmError::GuestWrite)?;
            EntryMode::Long64 {
                entry,
                zero_page: ZERO_PAGE_START,
            }
        }
        KernelEntry::Pvh(entry) => {
            let (info, memmap, modules) = boot_params::pvh_start_info(
                CMDLINE_START,
                PVH_MEMMAP_START,
                PVH_MODLIST_START,
                initrd,
                &e820,
            );
            mem.write_obj(info, GuestAddress(PVH_INFO_START))
                .map_err(StartMicrovmError::GuestWrite)?;
            for (i, m) in memmap.iter().enumerate() {
                mem.write_obj(
                    *m,
                    GuestAddress(PVH_MEMMAP_START + (i * std::mem::size_of_val(m)) as u64),
                )
                .map_err(StartMicrovmError::GuestWrite)?;
            }
            for (i, m) in modules.iter().enumerate() {
                mem.write_obj(
                    *m,
                    GuestAddress(PVH_MODLIST_START + (i * std::mem::size_of_val(m)) as u64),
                )
                .map_err(StartMicrovmError::GuestWrite)?;
            }
            EntryMode::Pvh {
                entry,
                start_info: PVH_INFO_START,
            }
        }
    };
    regs::write_boot_tables(mem, mode)?;
    Ok(mode)
}

fn irqfd(vm: &Vm, gsi: u32) -> Result<EventFd, StartMicrovmError> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(StartMicrovmError::EventFd)?;
    vm.fd()
        .register_irqfd(&evt, gsi)
        .map_err(StartMicrovmError::Irqfd)?;
    Ok(evt)
}

/// COM1 at 0x3f8, IRQ 4, writing to the configured console.
pub fn attach_serial(
    vm: &Vm,
    io_bus: &mut Bus,
    console: &ConsoleConfig,
) -> Result<Arc<Mutex<SerialDevice>>, StartMicrovmError> {
    let out: Box<dyn Write + Send> = match console {
        ConsoleConfig::Stdio => Box::new(std::io::stdout()),
        ConsoleConfig::None => Box::new(std::io::sink()),
        ConsoleConfig::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| StartMicrovmError::Console(path.clone(), e))?,
        ),
    };
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        EventFdTrigger(irqfd(vm, SERIAL_IRQ)?),
        out,
    )));
    io_bus.insert(serial.clone(), COM1_PORT, COM1_LEN)?;
    Ok(serial)
}

/// stdin feeds COM1's receive FIFO.
fn attach_console_input(em: &mut EventManager<Subscriber>, serial: Arc<Mutex<SerialDevice>>) {
    use std::os::fd::AsFd;
    match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => {
            em.add_subscriber(Arc::new(Mutex::new(SerialInput::new(
                serial,
                File::from(fd),
            ))));
        }
        Err(e) => tracing::warn!("console input unavailable: {e}"),
    }
}

/// The i8042 at 0x60-0x64: its reset line ends the VM; its keyboard raises IRQ 1.
pub fn attach_i8042(
    vm: &Vm,
    io_bus: &mut Bus,
    exit: Arc<ExitSignal>,
) -> Result<Arc<Mutex<I8042<ExitTrigger>>>, StartMicrovmError> {
    let dev = I8042::new(
        ExitTrigger::new(exit, VmExit::ResetI8042),
        EventFdTrigger(irqfd(vm, I8042_KBD_IRQ)?),
    );
    let dev = Arc::new(Mutex::new(dev));
    io_bus.insert(dev.clone(), I8042_PORT, I8042_LEN)?;
    Ok(dev)
}

/// Registers a virtio-mmio transport: slot and GSI, ioeventfds, irqfd, bus, event loop and
/// the command-line fragment.
fn attach_mmio_transport(
    vm: &Vm,
    mmio_bus: &mut Bus,
    em: &mut EventManager<Subscriber>,
    resources: &mut DeviceResources,
    cmdline: &mut Cmdline,
    transport: MmioTransport,
) -> Result<(u64, u32), StartMicrovmError> {
    let (base, gsi) = resources.allocate_slot()?;
    for (index, event) in transport.queue_events().iter().enumerate() {
        vm.fd()
            .register_ioevent(
                event,
                &IoEventAddress::Mmio(base + virtio::QUEUE_NOTIFY_OFFSET),
                index as u32,
            )
            .map_err(StartMicrovmError::Ioeventfd)?;
    }
    vm.fd()
        .register_irqfd(transport.interrupt_event(), gsi)
        .map_err(StartMicrovmError::Irqfd)?;
    let transport = Arc::new(Mutex::new(transport));
    mmio_bus.insert(transport.clone(), base, virtio::MMIO_SLOT_SIZE)?;
    em.add_subscriber(transport);
    cmdline
        .insert_str(virtio::mmio_cmdline_fragment(base, gsi))
        .map_err(|e| {
            StartMicrovmError::Cmdline(format!("no room for a virtio_mmio.device= entry: {e}"))
        })?;
    Ok((base, gsi))
}

/// A virtio-blk disk.
pub fn attach_block_device(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    em: &mut EventManager<Subscriber>,
    resources: &mut DeviceResources,
    cmdline: &mut Cmdline,
    disk: &DiskConfig,
) -> Result<(u64, u32), StartMicrovmError> {
    let err = |reason: String| StartMicrovmError::Disk {
        path: disk.path.clone(),
        reason,
    };
    let block = Block::new(&disk.path, disk.read_only).map_err(|e| err(e.to_string()))?;
    let transport =
        MmioTransport::new(Box::new(block), mem.clone()).map_err(|e| err(e.to_string()))?;
    attach_mmio_transport(vm, mmio_bus, em, resources, cmdline, transport)
}

/// A virtio-net NIC on an existing TAP.
pub fn attach_net_device(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    em: &mut EventManager<Subscriber>,
    resources: &mut DeviceResources,
    cmdline: &mut Cmdline,
    net: &NetConfig,
) -> Result<(u64, u32), StartMicrovmError> {
    let err = |reason: String| StartMicrovmError::Net {
        tap: net.tap.clone(),
        reason,
    };
    let dev = Net::new(&net.tap, MacAddr(net.mac)).map_err(|e| err(e.to_string()))?;
    let transport =
        MmioTransport::new(Box::new(dev), mem.clone()).map_err(|e| err(e.to_string()))?;
    attach_mmio_transport(vm, mmio_bus, em, resources, cmdline, transport)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_irqs() {
        let mut r = DeviceResources::new();
        assert_eq!(r.allocate_slot().unwrap(), (0xd000_0000, 5));
        assert_eq!(r.allocate_slot().unwrap(), (0xd000_1000, 6));
        for _ in 7..=23 {
            r.allocate_slot().unwrap();
        }
        assert!(matches!(
            r.allocate_slot(),
            Err(StartMicrovmError::DeviceResources(_))
        ));
    }

    #[test]
    fn kernel_errors() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_kernel(&mem, &dir.path().join("missing"), 16 << 20),
            Err(StartMicrovmError::KernelNotFound(_))
        ));
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a kernel at all").unwrap();
        assert!(matches!(
            load_kernel(&mem, &junk, 16 << 20),
            Err(StartMicrovmError::NotAKernel(..))
        ));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            load_kernel(&mem, &empty, 16 << 20),
            Err(StartMicrovmError::NotAKernel(..))
        ));
        assert!(matches!(
            load_kernel(&mem, dir.path(), 16 << 20),
            Err(StartMicrovmError::NotAKernel(..))
        ));
    }

    #[test]
    fn bzimage_header_is_recognised() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bzImage");
        let mut img = vec![0u8; 64 * 1024];
        img[0x1f1] = 3; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes()); // protocol 2.15
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img[0x260..0x264].copy_from_slice(&(4u32 << 20).to_le_bytes()); // init_size
        std::fs::write(&p, &img).unwrap();
        let k = load_kernel(&mem, &p, 16 << 20).unwrap();
        assert_eq!(k.entry, KernelEntry::Long64(0x10_0200));
        assert_eq!(k.kernel_end, 0x10_0000 + (4 << 20));
        assert_eq!(k.setup_header.map(|h| h.setup_sects), Some(3));
        // The same kernel needing more memory than the guest has.
        img[0x260..0x264].copy_from_slice(&(32u32 << 20).to_le_bytes());
        std::fs::write(&p, &img).unwrap();
        assert!(matches!(
            load_kernel(&mem, &p, 16 << 20),
            Err(StartMicrovmError::MemoryTooSmallForKernel { need_mib: 33, .. })
        ));
    }

    #[test]
    fn initrd_goes_high_and_checks_room() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("initrd");
        std::fs::write(&p, vec![7u8; 10_000]).unwrap();
        let (addr, size) = load_initrd(&mem, &p, 16 << 20, 2 << 20).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr, ((16 << 20) - 10_000) & !0xfff);
        let b: u8 = mem.read_obj(GuestAddress(addr + 9_999)).unwrap();
        assert_eq!(b, 7);
        assert!(matches!(
            load_initrd(&mem, &p, 16 << 20, 16 << 20),
            Err(StartMicrovmError::MemoryTooSmallForInitrd(..))
        ));
    }
}
