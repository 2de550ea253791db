//! Guest RAM: anonymous private mappings, split around the 32-bit MMIO gap,
//! aligned to 2 MiB and backed by transparent huge pages where the host
//! allows, while the guest boots.
//!
//! The alignment matters as much as the huge pages: KVM maps guest memory
//! with 2 MiB second-level pages only where the host address and the guest
//! address agree modulo 2 MiB. Every 4 KiB page the guest touches otherwise
//! costs a second-level page fault, and with nested virtualization those
//! faults dominate boot. Once the guest runs, what matters is what stays
//! resident: see [`prefer_small_pages`].

use std::io;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemory as _, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Guest RAM as the VM, the boot code and every device see it.
pub type GuestMemory = GuestMemoryMmap<()>;

pub(crate) const HUGE_PAGE: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("mmap of {size} bytes failed: {source}")]
    Map { size: usize, source: io::Error },
    #[error("guest memory region: {0}")]
    Region(String),
}

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

/// Maps `size` bytes (a multiple of the page size) of anonymous memory at a
/// 2 MiB-aligned address, advised for huge pages.
pub(crate) fn map_aligned(size: usize) -> Result<*mut u8, MemoryError> {
    let len = size + HUGE_PAGE;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a fresh anonymous mapping; the result is checked below.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(MemoryError::Map {
            size,
            source: io::Error::last_os_error(),
        });
    }
    let start = raw as usize;
    let aligned = (start + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
    let head = aligned - start;
    let tail = len - head - size;
    // SAFETY: both ranges lie inside the mapping made above and outside the
    // aligned part that we keep; nothing else refers to them.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
    }
    // SAFETY: the aligned range is our live mapping; MADV_HUGEPAGE only
    // changes how the kernel backs it.
    if unsafe { libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE) } != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "no transparent huge pages for guest RAM");
    }
    Ok(aligned as *mut u8)
}

/// Backs the guest RAM the guest has touched so far with small pages from
/// now on (huge pages already there stay until something is dropped from
/// them); RAM it has never touched keeps huge pages.
///
/// Where the guest has been (its kernel, boot-time allocations), it keeps
/// a few pages here and there: under huge pages each would keep 2 MiB
/// resident, free page reports smaller than 2 MiB could not return
/// anything, and khugepaged would collapse the sparse ranges back into huge
/// pages. Where it has not been is where a workload grows (page cache, a
/// heap): there, one nested page fault per 2 MiB instead of per 4 KiB is
/// what makes writing fresh memory fast (3x for a 256 MiB file written in a
/// container; docs/performance.md). Called when the guest first reports
/// free pages: it has booted.
pub fn prefer_small_pages(memory: &GuestMemory) {
    for region in memory.iter() {
        let (host, len) = (region.as_ptr(), region.len() as usize);
        for (start, end) in touched_chunks(host, len) {
            // SAFETY: [host + start, host + end) lies inside one of our guest
            // RAM mappings, alive as long as the process; MADV_NOHUGEPAGE
            // only changes how the kernel backs it and never its contents.
            if unsafe { libc::madvise(host.add(start).cast(), end - start, libc::MADV_NOHUGEPAGE) }
                != 0
            {
                tracing::debug!(error = %io::Error::last_os_error(), "guest RAM keeps huge pages");
            }
        }
    }
}

/// The runs of 2 MiB chunks of the mapping `[host, host + len)` with at
/// least one page resident, as (start, end) offsets. Where residency cannot
/// be read, the whole mapping counts as touched (small pages, as before).
fn touched_chunks(host: *mut u8, len: usize) -> Vec<(usize, usize)> {
    let page = 4096;
    let mut resident = vec![0u8; len.div_ceil(page)];
    // SAFETY: `host` is page-aligned and [host, host + len) is one of our
    // mappings; mincore writes one byte per page into `resident`, which has
    // room for every page of it.
    if unsafe { libc::mincore(host.cast(), len, resident.as_mut_ptr()) } != 0 {
        return vec![(0, len)];
    }
    let pages_per_chunk = HUGE_PAGE / page;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (index, chunk) in resident.chunks(pages_per_chunk).enumerate() {
        if chunk.iter().all(|&flags| flags & 1 == 0) {
            continue;
        }
        let start = index * HUGE_PAGE;
        add_to_runs(&mut runs, start, (start + HUGE_PAGE).min(len));
    }
    runs
}

/// Appends `[start, end)` to `runs` (in ascending order), extending the last
/// run where the two meet.
pub(crate) fn add_to_runs<T: PartialEq>(runs: &mut Vec<(T, T)>, start: T, end: T) {
    match runs.last_mut() {
        Some(last) if last.1 == start => last.1 = end,
        _ => runs.push((start, end)),
    }
}

/// Maps `size` bytes of guest RAM. The mappings live as long as the process
/// (a VMM runs one VM): vm-memory does not unmap memory it did not map.
pub fn create_guest_memory(size: u64) -> Result<GuestMemory, MemoryError> {
    let mut regions = Vec::new();
    for (address, len) in ram_ranges(size) {
        let pointer = map_aligned(len)?;
        // SAFETY: `pointer` is a private anonymous read-write mapping of
        // exactly `len` bytes that nothing else uses and that is never unmapped.
        let builder = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(pointer) };
        let region = builder
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|error| MemoryError::Region(error.to_string()))?;
        let region = GuestRegionMmap::new(region, address)
            .ok_or_else(|| MemoryError::Region(format!("region at {address:?} overflows")))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|error| MemoryError::Region(error.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::Bytes;

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

    #[test]
    fn guest_memory_is_huge_page_aligned_and_usable() {
        let memory = create_guest_memory(64 << 20).unwrap();
        for region in memory.iter() {
            assert_eq!(region.as_ptr() as usize % HUGE_PAGE, 0);
        }
        memory
            .write_obj(0x1234_5678u32, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(
            memory.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(),
            0x1234_5678
        );
    }

    #[test]
    fn touched_guest_memory_gets_small_pages_the_rest_keeps_huge_ones() {
        use vm_memory::{Bytes, GuestAddress};
        const MIB: usize = 1 << 20;
        let memory = create_guest_memory(8 << 20).unwrap();
        let start = memory.iter().next().unwrap().as_ptr() as usize;
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists();
        if thp {
            assert!(vm_flags(start).contains(&"hg".to_string()));
        }
        memory.write_obj(1u8, GuestAddress(0x1000)).unwrap();
        memory
            .write_obj(1u8, GuestAddress((7 * MIB) as u64))
            .unwrap();
        let host = memory.iter().next().unwrap().as_ptr();
        assert_eq!(
            touched_chunks(host, 8 * MIB),
            [(0, 2 * MIB), (6 * MIB, 8 * MIB)]
        );

        prefer_small_pages(&memory);
        for touched in [start, start + 6 * MIB] {
            let flags = vm_flags(touched);
            assert!(flags.contains(&"nh".to_string()), "{flags:?}");
            assert!(!flags.contains(&"hg".to_string()), "{flags:?}");
        }
        let untouched = vm_flags(start + 2 * MIB);
        assert!(!untouched.contains(&"nh".to_string()), "{untouched:?}");
        if thp {
            assert!(untouched.contains(&"hg".to_string()), "{untouched:?}");
        }
    }

    /// The VmFlags of this process's mapping that holds `address`.
    pub(crate) fn vm_flags(address: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let holds = |line: &str| {
            let Some((range, _)) = line.split_once(' ') else {
                return false;
            };
            let Some((start, end)) = range.split_once('-') else {
                return false;
            };
            match (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                (Ok(start), Ok(end)) => (start..end).contains(&address),
                _ => false,
            }
        };
        let mut lines = smaps.lines().skip_while(|line| !holds(line));
        assert!(lines.next().is_some(), "no mapping holds {address:#x}");
        lines
            .find_map(|line| line.strip_prefix("VmFlags:"))
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect()
    }
}
