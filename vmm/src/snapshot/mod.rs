//! VM snapshots: a paused VM saved to a directory by a template boot, and VMs
//! started from it.
//!
//! A snapshot directory holds two files:
//! - `memory`: guest RAM, sparse ([`memory_file`]), mapped MAP_PRIVATE by
//!   every VM started from it, which so share the pages they do not write;
//! - `state.json`: everything else ([`Snapshot`]): the vCPUs' registers
//!   ([`vcpu_state`]), the in-kernel irqchip, PIT and clock ([`vm_state`]),
//!   the virtio-mmio transports and the serial port, and what the snapshot
//!   fits: the VMM that wrote it, the VM's size and its devices.
//!
//! What is not in it: host resources (the vsock socket, the shares, the
//! tap, the console), which every VM gets from its own command line; device
//! worker state, of which there is none at the snapshot point (no
//! connection, no mounted share, no request in flight).

pub mod memory_file;
pub mod pause;
mod template;
pub mod vcpu_state;
pub mod vm_state;

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::virtio::mmio::TransportState;
pub use template::{vcpu0_cpuid, Template};
pub use vcpu_state::VcpuState;
pub use vm_state::VmState;

/// The layout of `state.json`; a snapshot of another format is not used.
pub const FORMAT: u32 = 1;
/// Guest RAM in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// The rest of the VM in a snapshot directory.
pub const STATE_FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("vCPU {vcpu}: {step} failed: {source}")]
    Vcpu {
        vcpu: u8,
        step: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{step} failed: {source}")]
    Vm {
        step: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("too many MSRs for one KVM call")]
    MsrCount,
    #[error("vCPU {vcpu}: KVM refused the saved value of MSR {index:#x}")]
    MsrRefused { vcpu: u8, index: u32 },
    #[error("cannot write guest memory to the snapshot: {0}")]
    WriteMemory(io::Error),
    #[error("cannot read the snapshot's guest memory: {0}")]
    ReadMemory(io::Error),
    #[error("the snapshot's memory file has {file} bytes; this VM has {expected}")]
    MemorySize { file: u64, expected: u64 },
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error("cannot create {path}: {source}")]
    Create { path: String, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("cannot write the snapshot's state: {0}")]
    WriteState(io::Error),
    #[error("{path} is not a snapshot state this VMM reads: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("the snapshot does not fit this VM: {0}")]
    Mismatch(String),
    #[error("the VMM cannot tell its own identity: {0}")]
    Identity(io::Error),
    #[error("{0} of the VM's vCPUs did not pause")]
    PauseTimeout(usize),
    #[error(transparent)]
    Transport(#[from] crate::virtio::mmio::RestoreError),
    #[error("the serial port's saved state: {0}")]
    Serial(String),
}

/// The serial port's registers and receive FIFO (vm-superio's `SerialState`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SerialRegisters {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

/// Everything of a paused VM but its memory.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    /// The VMM that saved it ([`vmm_identity`]): only the same binary
    /// restores it, since device and vCPU state are its own.
    pub vmm: String,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// vCPU 0's CPUID: a host that would give another does not restore it.
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    /// The virtio device types in attachment order (so MMIO window and IRQ).
    pub devices: Vec<u32>,
    /// The size of the disk, if the VM has one, in sectors: the guest read
    /// it at boot, so a restored VM's disk must have it too.
    pub disk_sectors: Option<u64>,
    pub vm: VmState,
    pub vcpu_states: Vec<VcpuState>,
    pub transports: Vec<TransportState>,
    pub serial: SerialRegisters,
}

/// What identifies this VMM binary: its version and the file it runs from
/// (device, inode, size, modification time), read before any jail.
pub fn vmm_identity() -> Result<String, SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    let exe = std::fs::metadata("/proc/self/exe").map_err(SnapshotError::Identity)?;
    Ok(format!(
        "cocoon-vmm {} {}:{} {} {}.{}",
        crate::VERSION,
        exe.dev(),
        exe.ino(),
        exe.size(),
        exe.mtime(),
        exe.mtime_nsec()
    ))
}

/// Where a template boot saves its VM: the files, created (exclusively) when
/// the VMM starts, so that saving needs no path once the VMM is jailed.
pub struct SnapshotOutput {
    pub dir: PathBuf,
    pub memory: File,
    pub state: File,
}

impl SnapshotOutput {
    pub fn create(dir: &Path) -> Result<Self, SnapshotError> {
        let create = |name: &str| {
            let path = dir.join(name);
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|source| SnapshotError::Create {
                    path: path.display().to_string(),
                    source,
                })
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            memory: create(MEMORY_FILE)?,
            state: create(STATE_FILE)?,
        })
    }

    /// Writes the state file (memory is written by [`memory_file::save`]).
    pub fn write_state(&mut self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        let json = serde_json::to_vec(snapshot)
            .map_err(|e| SnapshotError::WriteState(io::Error::other(e)))?;
        self.state
            .write_all(&json)
            .and_then(|()| self.state.sync_all())
            .map_err(SnapshotError::WriteState)
    }
}

/// A snapshot directory opened for a restore.
pub struct SnapshotInput {
    pub snapshot: Snapshot,
    pub memory: File,
}

impl SnapshotInput {
    /// Reads `dir`'s state and opens its memory, and checks that this VMM
    /// wrote it.
    pub fn open(dir: &Path) -> Result<Self, SnapshotError> {
        let open = |name: &str| {
            let path = dir.join(name);
            File::open(&path).map_err(|source| SnapshotError::Open {
                path: path.display().to_string(),
                source,
            })
        };
        let state_path = dir.join(STATE_FILE);
        let snapshot: Snapshot = serde_json::from_reader(io::BufReader::new(open(STATE_FILE)?))
            .map_err(|source| SnapshotError::Parse {
                path: state_path.display().to_string(),
                source,
            })?;
        if snapshot.format != FORMAT {
            return Err(SnapshotError::Mismatch(format!(
                "format {} (this VMM reads {FORMAT})",
                snapshot.format
            )));
        }
        let ours = vmm_identity()?;
        if snapshot.vmm != ours {
            return Err(SnapshotError::Mismatch(format!(
                "saved by {}, this is {ours}",
                snapshot.vmm
            )));
        }
        Ok(Self {
            snapshot,
            memory: open(MEMORY_FILE)?,
        })
    }
}
