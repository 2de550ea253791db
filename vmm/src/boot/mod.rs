//! Loading a Linux kernel and initramfs into guest memory and preparing what
//! the 64-bit boot protocol expects: boot_params with an e820 map, the command
//! line, an MP table for the vCPUs, page tables and a GDT for long mode.

pub mod long_mode;
pub mod mptable;
pub mod params;

use std::fs::File;
use std::path::Path;

use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, GuestAddress, GuestMemory as _, GuestMemoryRegion, ReadVolatile as _};

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
    InitrdTooLarge { path: String, size: u64 },
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

/// Reads the initramfs into the highest page-aligned spot of low RAM that the
/// kernel can reach (`addr_max` from its setup header, if it has one).
///
/// The file goes straight from the page cache into guest memory: no copy in
/// between (an initramfs can be many MiB, and every copy and every freshly
/// faulted page of a bounce buffer is start-up time).
pub fn load_initrd(
    memory: &GuestMemory,
    path: &Path,
    addr_max: Option<u32>,
) -> Result<LoadedInitrd, BootError> {
    let display = path.display().to_string();
    let read_error = |source| BootError::ReadInitrd {
        path: display.clone(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    let too_large = || BootError::InitrdTooLarge {
        path: display.clone(),
        size: len,
    };
    let size = usize::try_from(len).map_err(|_| too_large())?;
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
    let start = limit.checked_sub(len).ok_or_else(too_large)? & !0xfff;
    if start < HIMEM_START {
        return Err(too_large());
    }
    let address = GuestAddress(start);
    let guest_memory_error = |reason: String| BootError::GuestMemory {
        what: "initramfs",
        reason,
    };
    let mut target = memory
        .get_slice(address, size)
        .map_err(|error| guest_memory_error(error.to_string()))?;
    // A file that shrank since its size was taken fails here (end of file);
    // one that grew is cut at `size`, like a copy taken at that moment.
    file.read_exact_volatile(&mut target)
        .map_err(|error| match error {
            vm_memory::VolatileMemoryError::IOError(source) => read_error(source),
            other => guest_memory_error(other.to_string()),
        })?;
    Ok(LoadedInitrd { address, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    fn initrd_file(contents: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, contents).unwrap();
        file
    }

    #[test]
    fn initrd_lands_page_aligned_at_the_top_of_low_ram() {
        let memory = create_guest_memory(64 << 20).unwrap();
        let contents: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let file = initrd_file(&contents);
        let loaded = load_initrd(&memory, file.path(), None).unwrap();
        assert_eq!(loaded.size, contents.len());
        assert_eq!(loaded.address.raw_value() % 0x1000, 0);
        assert!(loaded.address.raw_value() + contents.len() as u64 <= 64 << 20);
        assert!(loaded.address.raw_value() + contents.len() as u64 > (64 << 20) - 0x1000);
        let mut read_back = vec![0; contents.len()];
        memory.read_slice(&mut read_back, loaded.address).unwrap();
        assert_eq!(read_back, contents);
    }

    #[test]
    fn initrd_respects_the_kernels_address_limit() {
        let memory = create_guest_memory(64 << 20).unwrap();
        let file = initrd_file(&[7; 5000]);
        let limit = (32 << 20) - 1;
        let loaded = load_initrd(&memory, file.path(), Some(limit)).unwrap();
        assert!(loaded.address.raw_value() + 5000 <= u64::from(limit) + 1);
        assert_eq!(memory.read_obj::<u8>(loaded.address).unwrap(), 7);
    }

    #[test]
    fn an_initrd_larger_than_low_ram_is_refused() {
        let memory = create_guest_memory(64 << 20).unwrap();
        let file = initrd_file(&[]);
        file.as_file().set_len(65 << 20).unwrap();
        let error = load_initrd(&memory, file.path(), None).unwrap_err();
        assert!(
            matches!(error, BootError::InitrdTooLarge { size, .. } if size == 65 << 20),
            "{error}"
        );
    }
}
