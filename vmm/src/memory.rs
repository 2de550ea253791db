//! Guest RAM: anonymous private mappings from vm-memory, split around the
//! 32-bit MMIO gap.

use vm_memory::{GuestAddress, GuestMemory as _, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

pub type GuestMemory = GuestMemoryMmap<()>;

/// The RAM ranges of a VM with `size` bytes of memory.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

/// Maps `size` bytes of guest RAM, backed by transparent huge pages where
/// the host allows: every 4 KiB page the guest touches first costs a
/// second-level page fault, and with nested paging (and far more under
/// nested virtualization) those faults dominate boot.
pub fn create_guest_memory(size: u64) -> Result<GuestMemory, vm_memory::mmap::FromRangesError> {
    let memory = GuestMemoryMmap::from_ranges(&ram_ranges(size))?;
    for region in memory.iter() {
        // SAFETY: the range is exactly a live mapping owned by `memory`;
        // MADV_HUGEPAGE only changes how the kernel backs it.
        let result = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            )
        };
        if result != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "no transparent huge pages for guest RAM");
        }
    }
    Ok(memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_vm_is_one_range() {
        assert_eq!(ram_ranges(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
    }

    #[test]
    fn large_vm_skips_the_mmio_gap() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(ranges[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(ranges[1].1 as u64 + MMIO_GAP_START, 4 << 30);
    }
}
