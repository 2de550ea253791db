//! Loading a Linux kernel and initramfs into guest memory and preparing what
//! the 64-bit boot protocol expects: boot_params with an e820 map, the command
//! line, an MP table for the vCPUs, page tables and a GDT for long mode.

pub mod long_mode;
pub mod mptable;
pub mod params;

use std::fs::File;
use std::path::Path;

use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, GuestAddress, GuestMemory as _, GuestMemoryRegion};

use crate::layout::{HIMEM_START, MMIO_GAP_START};
use crate::memory::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot load kernel {path} (neither a bootable ELF vmlinux nor a bzImage): {source}")]
    LoadKernel {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("cannot read initramfs {path}: {source}")]
    ReadInitrd {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "initramfs {path} ({size} bytes) does not fit in guest memory below the kernel's limit"
    )]
    InitrdTooLarge { path: String, size: usize },
    #[error("writing {what} into guest memory failed: {reason}")]
    GuestMemory { what: &'static str, reason: String },
    #[error("kernel command line is invalid: {0}")]
    Cmdline(String),
    #[error("{0}")]
    MpTable(#[from] mptable::MpTableError),
}

/// Where the kernel ended up and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// 64-bit entry point (startup_64).
    pub entry: GuestAddress,
    pub result: KernelLoaderResult,
}

/// Loads `path` as an ELF vmlinux or, failing that, as a bzImage.
pub fn load_kernel(memory: &GuestMemory, path: &Path) -> Result<LoadedKernel, BootError> {
    let display = path.display().to_string();
    let open = || {
        File::open(path).map_err(|source| BootError::OpenKernel {
            path: display.clone(),
            source,
        })
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match Elf::load(memory, None, &mut open()?, himem) {
        Ok(result) => Ok(LoadedKernel {
            entry: result.kernel_load,
            result,
        }),
        Err(linux_loader::loader::Error::Elf(
            linux_loader::loader::elf::Error::InvalidElfMagicNumber,
        )) => {
            let result = BzImage::load(memory, None, &mut open()?, himem).map_err(|source| {
                BootError::LoadKernel {
                    path: display.clone(),
                    source,
                }
            })?;
            // The 64-bit entry of a bzImage is 0x200 past its protected-mode start.
            let entry = result.kernel_load.unchecked_add(0x200);
            Ok(LoadedKernel { entry, result })
        }
        Err(source) => Err(BootError::LoadKernel {
            path: display,
            source,
        }),
    }
}

/// An initramfs placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedInitrd {
    pub address: GuestAddress,
    pub size: usize,
}

/// Copies the initramfs to the highest page-aligned spot of low RAM that the
/// kernel can reach (`addr_max` from its setup header, if it has one).
pub fn load_initrd(
    memory: &GuestMemory,
    path: &Path,
    addr_max: Option<u32>,
) -> Result<LoadedInitrd, BootError> {
    let display = path.display().to_string();
    let image = std::fs::read(path).map_err(|source| BootError::ReadInitrd {
        path: display.clone(),
        source,
    })?;
    let too_large = || BootError::InitrdTooLarge {
        path: display.clone(),
        size: image.len(),
    };
    let low_ram_end = memory
        .iter()
        .map(|region| region.start_addr().raw_value() + region.len())
        .filter(|end| *end <= MMIO_GAP_START)
        .max()
        .unwrap_or(0);
    let limit = match addr_max {
        Some(max) if max != 0 => low_ram_end.min(u64::from(max) + 1),
        _ => low_ram_end,
    };
    let start = limit
        .checked_sub(image.len() as u64)
        .ok_or_else(too_large)?
        & !0xfff;
    if start < HIMEM_START {
        return Err(too_large());
    }
    let address = GuestAddress(start);
    vm_memory::Bytes::write_slice(memory, &image, address).map_err(|error| {
        BootError::GuestMemory {
            what: "initramfs",
            reason: error.to_string(),
        }
    })?;
    Ok(LoadedInitrd {
        address,
        size: image.len(),
    })
}
