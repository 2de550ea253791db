//! The zero page (`struct boot_params`) of the Linux x86 boot protocol.

use linux_loader::configurator::{linux::LinuxBootConfigurator, BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Address, GuestAddress, GuestMemory as _, GuestMemoryRegion};

use super::{BootError, LoadedInitrd, LoadedKernel};
use crate::layout::{CMDLINE_ADDR, EBDA_START, HIMEM_START, LOW_MEMORY_END, ZERO_PAGE_ADDR};
use crate::memory::GuestMemory;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// Writes boot_params at [`ZERO_PAGE_ADDR`] and the command line at [`CMDLINE_ADDR`].
pub fn write_boot_params(
    memory: &GuestMemory,
    kernel: &LoadedKernel,
    initrd: Option<&LoadedInitrd>,
    cmdline: &str,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(header) = kernel.result.setup_header {
        params.hdr = header;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;

    let mut cmdline_bytes = cmdline.as_bytes().to_vec();
    cmdline_bytes.push(0);
    vm_memory::Bytes::write_slice(memory, &cmdline_bytes, GuestAddress(CMDLINE_ADDR)).map_err(
        |error| BootError::GuestMemory {
            what: "command line",
            reason: error.to_string(),
        },
    )?;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;

    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.address.raw_value() as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }

    let mut entries = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, LOW_MEMORY_END - EBDA_START, E820_RESERVED),
    ];
    for region in memory.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            entries.push((start, end - start, E820_RAM));
        }
    }
    if entries.len() > params.e820_table.len() {
        return Err(BootError::GuestMemory {
            what: "e820 map",
            reason: "too many entries".into(),
        });
    }
    for (slot, (addr, size, type_)) in params.e820_table.iter_mut().zip(&entries) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            type_: *type_,
        };
    }
    params.e820_entries = entries.len() as u8;

    LinuxBootConfigurator::write_bootparams::<GuestMemory>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_ADDR)),
        memory,
    )
    .map_err(|error| BootError::GuestMemory {
        what: "boot_params",
        reason: error.to_string(),
    })
}
