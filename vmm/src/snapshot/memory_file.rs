//! Guest RAM in a file: saved sparsely (pages that are all zeros stay
//! holes), and mapped back MAP_PRIVATE, so that every VM started from one
//! file shares the pages it has not written through the host's page cache,
//! and a write copies only the page written.
//!
//! The file holds the RAM ranges one after the other, in guest address
//! order ([`crate::memory::ram_ranges`]).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestMemory as _, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};

use super::SnapshotError;
use crate::memory::{ram_ranges, GuestMemory, MemoryError};

// Zero pages are found (and skipped) at this granularity.
const PAGE: usize = 4096;

/// Writes guest RAM to `file` (empty): every page with a nonzero byte, at
/// its offset; the rest are holes. Returns the bytes written.
pub fn save(memory: &GuestMemory, file: &File) -> Result<u64, SnapshotError> {
    let total: u64 = memory.iter().map(|region| region.len()).sum();
    file.set_len(total).map_err(SnapshotError::WriteMemory)?;
    let mut written = 0;
    let mut offset = 0u64;
    for region in memory.iter() {
        // SAFETY: the region is a live mapping of `len` bytes owned by
        // `memory`; every vCPU and device worker is paused, so nothing
        // writes it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len() as usize) };
        let mut page = 0;
        while page < bytes.len() {
            // One write for each run of nonzero pages.
            let start = page;
            while page < bytes.len() && !is_zero(&bytes[page..(page + PAGE).min(bytes.len())]) {
                page += PAGE;
            }
            if page > start {
                let end = page.min(bytes.len());
                file.write_all_at(&bytes[start..end], offset + start as u64)
                    .map_err(SnapshotError::WriteMemory)?;
                written += (end - start) as u64;
            } else {
                page += PAGE;
            }
        }
        offset += region.len();
    }
    file.sync_all().map_err(SnapshotError::WriteMemory)?;
    Ok(written)
}

fn is_zero(bytes: &[u8]) -> bool {
    let (head, words, tail) =
        // SAFETY: any bit pattern is a valid u64; align_to only reinterprets.
        unsafe { bytes.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Guest RAM of `size` bytes mapped privately from `file`, as [`save`] wrote it.
pub fn map(file: &File, size: u64) -> Result<GuestMemory, SnapshotError> {
    let length = file.metadata().map_err(SnapshotError::ReadMemory)?.len();
    if length != size {
        return Err(SnapshotError::MemorySize {
            file: length,
            expected: size,
        });
    }
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (address, len) in ram_ranges(size) {
        let pointer = map_private(file, offset, len)?;
        // SAFETY: `pointer` is a private read-write mapping of exactly `len`
        // bytes of `file` that nothing else uses and that is never unmapped.
        let builder = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(pointer) };
        let region = builder
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE)
            .build()
            .map_err(|error| region_error(error.to_string()))?;
        let region = GuestRegionMmap::new(region, address)
            .ok_or_else(|| region_error(format!("region at {address:?} overflows")))?;
        regions.push(region);
        offset += len as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|error| region_error(error.to_string()))
}

fn region_error(message: String) -> SnapshotError {
    SnapshotError::Memory(MemoryError::Region(message))
}

fn map_private(file: &File, offset: u64, len: usize) -> Result<*mut u8, SnapshotError> {
    let offset = libc::off_t::try_from(offset).map_err(|_| region_error("offset".into()))?;
    // SAFETY: a new mapping of our own file; the result is checked below.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            offset,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(SnapshotError::Memory(MemoryError::Map {
            size: len,
            source: io::Error::last_os_error(),
        }));
    }
    Ok(raw.cast())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn saved_memory_maps_back_sparse_and_private() {
        let memory = crate::memory::create_guest_memory(64 << 20).unwrap();
        memory
            .write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .unwrap();
        memory
            .write_obj(0x1234_5678u32, GuestAddress((64 << 20) - 4))
            .unwrap();
        let file = tempfile::tempfile().unwrap();
        assert_eq!(save(&memory, &file).unwrap(), 2 * PAGE as u64);

        let restored = map(&file, 64 << 20).unwrap();
        assert_eq!(
            restored.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            restored
                .read_obj::<u32>(GuestAddress((64 << 20) - 4))
                .unwrap(),
            0x1234_5678
        );
        assert_eq!(restored.read_obj::<u64>(GuestAddress(0x8000)).unwrap(), 0);
        // A write stays in this mapping: the file (and every other VM
        // mapping it) keeps the saved bytes.
        restored.write_obj(7u32, GuestAddress(0x1000)).unwrap();
        let mut saved = [0u8; 4];
        file.read_exact_at(&mut saved, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(saved), 0xdead_beef);
    }

    #[test]
    fn a_file_of_another_size_is_refused() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(32 << 20).unwrap();
        assert!(matches!(
            map(&file, 64 << 20),
            Err(SnapshotError::MemorySize { .. })
        ));
    }
}
