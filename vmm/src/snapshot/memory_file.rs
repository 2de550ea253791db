//! Guest RAM in a file: saved sparsely (pages that are all zeros stay
//! holes), and mapped back MAP_PRIVATE, so that every VM started from one
//! file shares the pages it has not written through the host's page cache,
//! and a write copies only the page written.
//!
//! Only the 2 MiB chunks of guest RAM that hold saved pages are mapped from
//! the file; the empty ones (most of a freshly booted guest's RAM) are
//! anonymous memory, as in a booted VM. A hole mapped from the file would
//! cost twice on the guest's first write there: the host fills the hole in
//! the shared file (which then grows by every page any VM ever wrote, up to
//! the whole RAM, for as long as the template lives) and copies that page
//! of zeros into the VM.
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
use crate::memory::{add_to_runs, map_aligned, ram_ranges, GuestMemory, MemoryError, HUGE_PAGE};

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

/// Guest RAM of `size` bytes as [`save`] wrote it to `file`: the chunks
/// with saved pages mapped privately from it, the rest anonymous.
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
        let pointer = map_aligned(len).map_err(SnapshotError::Memory)?;
        for (start, end) in saved_chunks(file, offset, len as u64)? {
            // SAFETY: [start, end) lies within the `len` bytes at `pointer`,
            // which map_aligned just mapped and nothing uses yet.
            let at = unsafe { pointer.add(start as usize) };
            map_private_over(file, offset + start, at, (end - start) as usize)?;
        }
        // SAFETY: `pointer` is a private read-write mapping of exactly `len`
        // bytes (anonymous, and privately of `file` where it has saved
        // pages) that nothing else uses and that is never unmapped.
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

/// The runs of 2 MiB chunks of `file`'s `[offset, offset + len)` that hold
/// data, relative to `offset`, each as (start, end). A file system that
/// cannot tell holes (SEEK_DATA answers the offset it was given) makes it
/// one run of everything: mapped from the file, as before.
fn saved_chunks(file: &File, offset: u64, len: u64) -> Result<Vec<(u64, u64)>, SnapshotError> {
    let chunk = HUGE_PAGE as u64;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut at = 0;
    while at < len {
        let Some(data) = next_data(file, offset + at)? else {
            break;
        };
        let data = data - offset;
        if data >= len {
            break;
        }
        let start = data / chunk * chunk;
        let end = (start + chunk).min(len);
        add_to_runs(&mut runs, start, end);
        at = end;
    }
    Ok(runs)
}

/// Where the first byte of data at or after `offset` is; `None` past the
/// last.
fn next_data(file: &File, offset: u64) -> Result<Option<u64>, SnapshotError> {
    let offset = libc::off_t::try_from(offset).map_err(|_| region_error("offset".into()))?;
    // SAFETY: lseek on our own open file changes only its offset, which
    // nothing else relies on (every read and write here is positioned).
    let found = unsafe { libc::lseek(file.as_raw_fd(), offset, libc::SEEK_DATA) };
    if found >= 0 {
        return Ok(u64::try_from(found).ok());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(SnapshotError::ReadMemory(error))
    }
}

fn region_error(message: String) -> SnapshotError {
    SnapshotError::Memory(MemoryError::Region(message))
}

/// Maps `len` bytes of `file` from `offset` privately at `at`, over what
/// was there.
fn map_private_over(
    file: &File,
    offset: u64,
    at: *mut u8,
    len: usize,
) -> Result<(), SnapshotError> {
    let offset = libc::off_t::try_from(offset).map_err(|_| region_error("offset".into()))?;
    // SAFETY: MAP_FIXED replaces [at, at + len), which the caller owns (part
    // of guest RAM being built, not yet in use by anything); the result is
    // checked below.
    let raw = unsafe {
        libc::mmap(
            at.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_FIXED,
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
    Ok(())
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

    /// A file on tmpfs, where a page faulted in through a private mapping of
    /// a hole would be allocated in the file (as in a template directory
    /// under /run).
    fn memfd() -> File {
        // SAFETY: a new memfd with a constant name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"memory".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `fd` is ours alone, just created.
        unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    }

    fn allocated(file: &File) -> u64 {
        std::os::unix::fs::MetadataExt::blocks(&file.metadata().unwrap()) * 512
    }

    #[test]
    fn only_chunks_with_saved_pages_come_from_the_file() {
        const MIB: u64 = 1 << 20;
        let memory = crate::memory::create_guest_memory(64 * MIB).unwrap();
        for at in [0x1000, 2 * MIB + 0x3000, 10 * MIB + 0x5000] {
            memory.write_obj(0xabu8, GuestAddress(at)).unwrap();
        }
        let file = memfd();
        save(&memory, &file).unwrap();
        assert_eq!(
            saved_chunks(&file, 0, 64 * MIB).unwrap(),
            [(0, 4 * MIB), (10 * MIB, 12 * MIB)]
        );
        // Relative to a range's start, and clipped to its end.
        assert_eq!(
            saved_chunks(&file, 2 * MIB, 8 * MIB).unwrap(),
            [(0, 2 * MIB)]
        );
        assert_eq!(
            saved_chunks(&file, 8 * MIB, 3 * MIB).unwrap(),
            [(2 * MIB, 3 * MIB)]
        );
        assert!(saved_chunks(&file, 12 * MIB, 52 * MIB).unwrap().is_empty());

        let restored = map(&file, 64 * MIB).unwrap();
        assert_eq!(
            restored
                .read_obj::<u8>(GuestAddress(10 * MIB + 0x5000))
                .unwrap(),
            0xab
        );
        let before = allocated(&file);
        // The guest writing where the snapshot had nothing leaves the file
        // as it was.
        for at in (20 * MIB..28 * MIB).step_by(PAGE) {
            restored.write_obj(1u8, GuestAddress(at)).unwrap();
        }
        assert_eq!(allocated(&file), before);
        assert_eq!(restored.read_obj::<u8>(GuestAddress(20 * MIB)).unwrap(), 1);
        assert_eq!(restored.read_obj::<u8>(GuestAddress(30 * MIB)).unwrap(), 0);
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
