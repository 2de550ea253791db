//! A microVM: KVM VM with in-kernel irqchip and PIT, guest RAM, the kernel and
//! initramfs loaded, legacy devices on the buses, one thread per vCPU.
//!
//! Building it ([`Vm::new`]) starts no thread. [`Vm::start_threads`] then
//! creates every thread the VM will ever run on (device workers, parked;
//! vCPUs, held back), each under its seccomp filter, and
//! [`Vm::release_vcpus`] lets the guest run. The caller puts its own steps in
//! between (the jail before the threads, the main thread's filter after).

use std::path::PathBuf;

mod snapshots;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemory as _, GuestMemoryRegion};

use crate::attach::VirtioAttacher;
use crate::boot::{self, long_mode, mptable, params};
use crate::bus::Bus;
use crate::devices::console_log::{ConsoleLog, ConsoleWriter};
use crate::devices::i8042::{ResetController, I8042_PORT, I8042_PORTS};
use crate::devices::irq::IrqLine;
use crate::devices::serial::{SerialConsole, COM1_PORT, COM1_PORTS};
use crate::layout::{self, MAX_VCPUS};
use crate::memory::{self, GuestMemory};
use crate::seccomp::{self, Role, SeccompError};
use crate::snapshot;
use crate::vcpu::{setup, Buses, Vcpu, VcpuStart};
use crate::virtio::balloon::Balloon;
use crate::virtio::block::{Block, DiskFile};
use crate::virtio::fs::{Caching, Fs};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::net::{Net, Tap};
use crate::virtio::rng::Rng;
use crate::virtio::vsock::Vsock;
use crate::virtio::worker_thread::ParkedThreads;
// Re-exported: the binary and embedders know it as `vm::VmEvent`.
pub use crate::vm_event::VmEvent;

/// How a VM starts: booting a kernel, or going on from a snapshot.
pub enum Boot {
    Kernel(KernelBoot),
    /// A snapshot directory a template boot saved (see [`crate::snapshot`]).
    Snapshot(PathBuf),
}

/// A kernel to boot. Paths are checked when the VM is built.
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// A template boot: the VM is saved to this (empty) directory when the
    /// agent reaches the snapshot point, and the VMM then exits.
    pub save_to: Option<PathBuf>,
}

/// A host directory shared with the guest over virtio-fs.
#[derive(Clone, Debug)]
pub struct SharedDir {
    /// What the guest mounts: `mount -t virtiofs TAG DIR`.
    pub tag: String,
    pub dir: PathBuf,
    /// How much of it the guest may cache.
    pub caching: Caching,
}

impl SharedDir {
    pub fn new(tag: impl Into<String>, dir: impl Into<PathBuf>, caching: Caching) -> Self {
        SharedDir {
            tag: tag.into(),
            dir: dir.into(),
            caching,
        }
    }
}

/// What a VM is made of, however it starts.
pub struct VmConfig {
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Where the guest console goes; `None` keeps only the tail in memory.
    pub console: Option<Box<dyn std::io::Write + Send>>,
    /// Host directories shared with the guest over virtio-fs, one device
    /// each, in this order.
    pub shares: Vec<SharedDir>,
    /// virtio-vsock: the guest's CID and the host Unix socket for it.
    pub vsock: Option<VsockConfig>,
    /// virtio-balloon with free page reporting: memory the guest frees is
    /// dropped from the host (the guest kernel needs CONFIG_VIRTIO_BALLOON).
    pub balloon: bool,
    /// virtio-net: the tap (checked already) and the guest's MAC.
    pub net: Option<NetConfig>,
    /// virtio-blk: the scratch disk's file (checked already).
    pub disk: Option<DiskFile>,
}

/// The guest's network interface: a tap checked by [`Tap::from_inherited_fd`]
/// and the MAC the guest gets.
#[derive(Debug)]
pub struct NetConfig {
    pub tap: Tap,
    pub mac: [u8; 6],
}

/// A hybrid vsock device (Firecracker convention): host processes connect to
/// `uds_path` and write `CONNECT <port>`; guest connections to host port P
/// go to `<uds_path>_P`.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open {what} {path}: {source}")]
    Input {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot use /dev/kvm: {0} (is KVM enabled and are you allowed to open /dev/kvm?)")]
    Kvm(kvm_ioctls::Error),
    #[error("KVM lacks {0:?}, which cocoon-vmm needs")]
    MissingCapability(Cap),
    #[error("{step}: {source}")]
    KvmSetup {
        step: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{0} vCPUs requested; between 1 and {MAX_VCPUS} are supported")]
    VcpuCount(u8),
    #[error("{0} MiB of memory requested; at least 64 MiB are needed")]
    MemorySize(u64),
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Memory {
        mib: u64,
        source: crate::memory::MemoryError,
    },
    #[error("kernel command line is {0} bytes; at most {max} fit", max = layout::CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    VcpuSetup(#[from] setup::SetupError),
    #[error("{0}")]
    Bus(#[from] crate::bus::OverlapError),
    #[error(transparent)]
    Attach(#[from] crate::attach::AttachError),
    #[error("cannot set up vsock on {path}: {source}")]
    Vsock {
        path: String,
        source: crate::virtio::vsock::VsockError,
    },
    #[error("cannot share {dir} as {tag}: {source}")]
    Share {
        tag: String,
        dir: String,
        source: crate::virtio::fs::FsError,
    },
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot start the threads of {device}: {source}")]
    DeviceThreads {
        device: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("the VM's threads were already started")]
    AlreadyStarted,
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("this VM was not booted as a template and cannot be saved")]
    NotATemplate,
}

/// A built VM, ready to run.
pub struct Vm {
    _kvm: Kvm,
    _vm: Arc<VmFd>,
    _memory: GuestMemory,
    vcpus: Vec<Vcpu>,
    // Every device's threads, started with the vCPUs.
    device_threads: Vec<ParkedThreads>,
    // One per vCPU thread started and held back; sending lets it run.
    release: Vec<Sender<()>>,
    vcpu_pthreads: Vec<libc::pthread_t>,
    buses: Arc<Buses>,
    events: (Sender<VmEvent>, Receiver<VmEvent>),
    console: ConsoleLog,
    serial: Arc<Mutex<SerialConsole>>,
    // Every virtio transport, in attachment order.
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    memory_mib: u64,
    // A template boot: where it is saved, and its vCPUs' pause request.
    template: Option<snapshot::Template>,
    // A restored VM: the transports' saved state, applied once the devices'
    // threads run.
    saved_transports: Vec<crate::virtio::mmio::TransportState>,
}

fn kvm_step(step: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::KvmSetup { step, source }
}

// Logs how long building the VM has taken so far, step by step.
struct BuildClock(std::time::Instant);

impl BuildClock {
    fn done(&self, step: &str) {
        let after_us = self.0.elapsed().as_micros() as u64;
        tracing::debug!(after_us, "{step}");
    }
}

impl Vm {
    pub fn new(config: VmConfig, boot: Boot) -> Result<Self, VmError> {
        check_config(&config)?;
        match boot {
            Boot::Kernel(kernel) => Self::boot(config, kernel),
            Boot::Snapshot(dir) => Self::restore(config, &dir),
        }
    }

    fn boot(mut config: VmConfig, boot: KernelBoot) -> Result<Self, VmError> {
        check_kernel(&boot)?;
        let clock = BuildClock(std::time::Instant::now());
        clock.done("opening KVM");
        let (kvm, vm) = create_kvm_vm()?;
        clock.done("KVM VM created");
        let memory = create_guest_memory(&vm, config.memory_mib)?;
        clock.done("guest memory mapped");
        let kernel = boot::load_kernel(&memory, &boot.kernel)?;
        let initrd = load_initrd(&memory, boot.initrd.as_deref(), &kernel)?;
        // virtio devices first: their command line entries go to the kernel.
        let mut cmdline = boot.cmdline.clone();
        if boot.save_to.is_some() {
            cmdline = format!("{cmdline} {}", cocoon_protocol::TEMPLATE_ARG);
        }
        let disk_sectors = config.disk.as_ref().map(DiskFile::sectors);
        let devices = attach_virtio_devices(&vm, &memory, &mut config, &cmdline)?;
        clock.done("kernel, initramfs and devices ready");
        params::write_boot_params(&memory, &kernel, initrd.as_ref(), &devices.cmdline)?;
        mptable::write(&memory, config.vcpus).map_err(boot::BootError::from)?;
        long_mode::write_tables(&memory)?;

        let events = channel();
        let console = ConsoleLog::default();
        let (mut pio, serial) =
            legacy_devices(&vm, &events.0, config.console.take(), &console, None)?;
        let template = match &boot.save_to {
            Some(dir) => Some(add_snapshot_point(
                &kvm,
                dir,
                config.vcpus,
                disk_sectors,
                &events.0,
                &mut pio,
            )?),
            None => None,
        };
        let buses = Arc::new(Buses {
            pio,
            mmio: devices.mmio,
        });
        clock.done("boot tables written");
        let vcpus = create_vcpus(&kvm, &vm, config.vcpus, kernel.entry.raw_value())?;
        clock.done("vCPUs configured");
        Ok(Self {
            _kvm: kvm,
            _vm: vm,
            _memory: memory,
            vcpus,
            device_threads: devices.threads,
            release: Vec::new(),
            vcpu_pthreads: Vec::new(),
            buses,
            events,
            console,
            serial,
            transports: devices.transports,
            memory_mib: config.memory_mib,
            template,
            saved_transports: Vec::new(),
        })
    }

    /// The guest console as seen so far.
    pub fn console(&self) -> ConsoleLog {
        self.console.clone()
    }

    /// A handle that can stop the VM from another thread (e.g. a signal handler).
    pub fn stopper(&self) -> Sender<VmEvent> {
        self.events.0.clone()
    }

    /// Creates every thread the VM runs on, each under its seccomp filter:
    /// the device workers (parked until their device is activated) and the
    /// vCPUs (held back until [`release_vcpus`](Self::release_vcpus)).
    /// Returns once all of them have installed their filters. Call it from a
    /// thread without a filter of its own: threads inherit their creator's.
    pub fn start_threads(&mut self) -> Result<(), VmError> {
        if self.vcpus.is_empty() {
            return Err(VmError::AlreadyStarted);
        }
        for threads in &self.device_threads {
            let filter = seccomp::filter(Role::Worker(threads.device_type()))?;
            let setup: crate::virtio::worker_thread::ThreadSetup =
                Arc::new(move || seccomp::install(&filter).map_err(std::io::Error::other));
            threads
                .start(Some(setup))
                .map_err(|source| VmError::DeviceThreads {
                    device: threads.device(),
                    source,
                })?;
        }
        // A restored device starts on threads that run now.
        self.restore_transports()?;
        crate::vcpu::kick::install_kick_handler().map_err(VmError::Thread)?;
        let role = match self.template {
            Some(_) => Role::TemplateVcpu,
            None => Role::Vcpu,
        };
        let filter = seccomp::filter(role)?;
        let pause = self.template.as_ref().map(snapshot::Template::pause);
        let (ready_tx, ready) = channel();
        for vcpu in std::mem::take(&mut self.vcpus) {
            let (release, held) = channel();
            let start = VcpuStart {
                filter: filter.clone(),
                ready: ready_tx.clone(),
                release: held,
                pause: pause.clone(),
            };
            let thread = vcpu
                .spawn(self.buses.clone(), self.events.0.clone(), start)
                .map_err(VmError::Thread)?;
            self.vcpu_pthreads
                .push(std::os::unix::thread::JoinHandleExt::as_pthread_t(&thread));
            self.release.push(release);
        }
        drop(ready_tx);
        // One answer per vCPU; a thread that died before answering ends it.
        for _ in 0..self.release.len() {
            ready.recv().map_err(|_| {
                VmError::Thread(std::io::Error::other("a vCPU thread died at start"))
            })??;
        }
        Ok(())
    }

    /// How many threads the devices run on (all started by `start_threads`).
    pub fn device_thread_count(&self) -> usize {
        self.device_threads.iter().map(ParkedThreads::count).sum()
    }

    /// Lets the vCPUs run the guest. They keep running until the process
    /// ends: the caller exits while `self` (and so guest memory) is alive.
    pub fn release_vcpus(&mut self) {
        for release in std::mem::take(&mut self.release) {
            let _ = release.send(());
        }
    }

    /// Debug builds: the test hook that makes vCPU 0 call a forbidden
    /// syscall (see `vcpu::test_hook`); `None` before the vCPUs started.
    #[cfg(debug_assertions)]
    pub fn forbidden_syscall_trigger(&self) -> Option<impl Fn() + Send + 'static> {
        let vcpu0 = *self.vcpu_pthreads.first()?;
        Some(move || crate::vcpu::test_hook::request_forbidden_syscall(vcpu0))
    }

    /// The next event that ends (or asks to end) the VM; `None` when
    /// `timeout` passed first.
    pub fn next_event(&self, timeout: Option<Duration>) -> Option<VmEvent> {
        match timeout {
            Some(timeout) => self.events.1.recv_timeout(timeout).ok(),
            None => Some(self.events.1.recv().unwrap_or(VmEvent::Stop)),
        }
    }

    /// Asks the guest to shut down in an orderly way: the request goes to the
    /// guest's console input, where cocoon-agent (PID 1) listens for it.
    pub fn request_guest_shutdown(&self) {
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        serial.enqueue_input(cocoon_protocol::GUEST_SHUTDOWN_REQUEST);
    }
}

fn check_config(config: &VmConfig) -> Result<(), VmError> {
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(VmError::VcpuCount(config.vcpus));
    }
    if config.memory_mib < 64 {
        return Err(VmError::MemorySize(config.memory_mib));
    }
    Ok(())
}

// Inputs first: a wrong path is the most common mistake, and it deserves its
// own message before anything touches KVM.
fn check_kernel(boot: &KernelBoot) -> Result<(), VmError> {
    let inputs = [
        ("kernel", Some(&boot.kernel)),
        ("initramfs", boot.initrd.as_ref()),
    ];
    for (what, path) in inputs {
        if let Some(path) = path {
            std::fs::File::open(path).map_err(|source| VmError::Input {
                what,
                path: path.display().to_string(),
                source,
            })?;
        }
    }
    if boot.cmdline.len() >= layout::CMDLINE_MAX_SIZE {
        return Err(VmError::CmdlineTooLong(boot.cmdline.len()));
    }
    Ok(())
}

// The KVM VM with the capabilities we rely on, its in-kernel irqchip and PIT.
fn create_kvm_vm() -> Result<(Kvm, Arc<VmFd>), VmError> {
    let kvm = Kvm::new().map_err(VmError::Kvm)?;
    for cap in [
        Cap::Irqchip,
        Cap::Ioeventfd,
        Cap::Irqfd,
        Cap::UserMemory,
        Cap::Pit2,
        Cap::ExtCpuid,
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCapability(cap));
        }
    }
    let vm = Arc::new(kvm.create_vm().map_err(kvm_step("KVM_CREATE_VM"))?);
    vm.set_tss_address(layout::KVM_TSS_ADDR as usize)
        .map_err(kvm_step("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_step("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_step("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_step("KVM_CREATE_PIT2"))?;
    Ok((kvm, vm))
}

// Guest RAM, each region registered with KVM as a memory slot.
fn create_guest_memory(vm: &VmFd, memory_mib: u64) -> Result<GuestMemory, VmError> {
    let memory =
        memory::create_guest_memory(memory_mib << 20).map_err(|source| VmError::Memory {
            mib: memory_mib,
            source,
        })?;
    register_memory(vm, memory)
}

// Registers each region of `memory` with KVM as a memory slot.
fn register_memory(vm: &VmFd, memory: GuestMemory) -> Result<GuestMemory, VmError> {
    for (slot, region) in memory.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `memory`, which the
        // Vm keeps (and so outlives every vCPU that can access it).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_step("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(memory)
}

fn load_initrd(
    memory: &GuestMemory,
    initrd: Option<&std::path::Path>,
    kernel: &boot::LoadedKernel,
) -> Result<Option<boot::LoadedInitrd>, VmError> {
    let Some(path) = initrd else {
        return Ok(None);
    };
    let addr_max = kernel
        .result
        .setup_header
        .map(|header| header.initrd_addr_max);
    Ok(Some(boot::load_initrd(memory, path, addr_max)?))
}

// The virtio devices of a VM, attached.
struct VirtioDevices {
    mmio: Bus,
    // `cmdline` and the entries that tell the guest where the devices are.
    cmdline: String,
    // The devices' threads, not started yet.
    threads: Vec<ParkedThreads>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

// Attaches the configured virtio devices to a fresh MMIO bus, always in the
// same order (a snapshot restores them by position).
fn attach_virtio_devices(
    vm: &Arc<VmFd>,
    memory: &GuestMemory,
    config: &mut VmConfig,
    cmdline: &str,
) -> Result<VirtioDevices, VmError> {
    let mut mmio = Bus::default();
    let mut virtio = VirtioAttacher::new(vm.clone(), memory.clone());
    virtio.attach(Box::new(Rng::new()), &mut mmio)?;
    if let Some(vsock) = &config.vsock {
        let device =
            Vsock::new(vsock.guest_cid, &vsock.uds_path).map_err(|source| VmError::Vsock {
                path: vsock.uds_path.display().to_string(),
                source,
            })?;
        virtio.attach(Box::new(device), &mut mmio)?;
    }
    for share in &config.shares {
        let fs =
            Fs::new(&share.tag, &share.dir, share.caching).map_err(|source| VmError::Share {
                tag: share.tag.clone(),
                dir: share.dir.display().to_string(),
                source,
            })?;
        virtio.attach(Box::new(fs), &mut mmio)?;
    }
    if let Some(net) = config.net.take() {
        virtio.attach(Box::new(Net::new(net.tap, net.mac)), &mut mmio)?;
    }
    if let Some(disk) = config.disk.take() {
        virtio.attach(Box::new(Block::new(disk)), &mut mmio)?;
    }
    // Last, so that the other devices keep their windows and IRQs either way.
    if config.balloon {
        let balloon = Balloon::with_small_pages_switch(memory::prefer_small_pages);
        virtio.attach(Box::new(balloon), &mut mmio)?;
    }
    let cmdline = std::iter::once(cmdline)
        .chain(virtio.cmdline_entries().iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    if cmdline.len() >= layout::CMDLINE_MAX_SIZE {
        return Err(VmError::CmdlineTooLong(cmdline.len()));
    }
    Ok(VirtioDevices {
        mmio,
        cmdline,
        threads: virtio.device_threads(),
        transports: virtio.transports(),
    })
}

// The port I/O bus: the serial console on COM1 (writing to `console_sink` and
// `console`; in the state `saved` of a snapshot, if any) and the i8042 reset
// line (reporting to `events`).
fn legacy_devices(
    vm: &Arc<VmFd>,
    events: &Sender<VmEvent>,
    console_sink: Option<Box<dyn std::io::Write + Send>>,
    console: &ConsoleLog,
    saved: Option<&snapshot::SerialRegisters>,
) -> Result<(Bus, Arc<Mutex<SerialConsole>>), VmError> {
    let serial_irq = IrqLine::new(vm.clone(), layout::SERIAL_IRQ);
    let writer = ConsoleWriter::new(console_sink, console.clone());
    let serial = match saved {
        Some(saved) => SerialConsole::from_saved(serial_irq, writer, saved)
            .map_err(|e| VmError::Snapshot(snapshot::SnapshotError::Serial(e)))?,
        None => SerialConsole::new(serial_irq, writer),
    };
    let serial = Arc::new(Mutex::new(serial));
    let mut pio = Bus::default();
    pio.insert(COM1_PORT, COM1_PORTS, serial.clone())?;
    let reset = ResetController::new(events.clone(), VmEvent::GuestReset);
    pio.insert(I8042_PORT, I8042_PORTS, Arc::new(Mutex::new(reset)))?;
    Ok((pio, serial))
}

// A template boot: where it is saved, and the port at which its agent asks
// to be saved.
fn add_snapshot_point(
    kvm: &Kvm,
    dir: &std::path::Path,
    vcpus: u8,
    disk_sectors: Option<u64>,
    events: &Sender<VmEvent>,
    pio: &mut Bus,
) -> Result<snapshot::Template, VmError> {
    let template = snapshot::Template::new(kvm, dir, vcpus, disk_sectors)?;
    let point = snapshot::pause::SnapshotPoint::new(template.pause(), events.clone());
    pio.insert(
        cocoon_protocol::SNAPSHOT_POINT_PORT.into(),
        1,
        Arc::new(Mutex::new(point)),
    )?;
    Ok(template)
}

// The vCPUs, configured; the boot processor starts at `entry`.
fn create_vcpus(kvm: &Kvm, vm: &VmFd, count: u8, entry: u64) -> Result<Vec<Vcpu>, VmError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_step("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::with_capacity(count as usize);
    for id in 0..count {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm_step("KVM_CREATE_VCPU"))?;
        setup::configure_common(&fd, id, &setup::cpuid_for(&supported, id, count))?;
        if id == 0 {
            setup::configure_boot_processor(&fd, entry)?;
        }
        vcpus.push(Vcpu { id, fd });
    }
    Ok(vcpus)
}
