//! The file behind the disk: inherited from the VMM's parent (`--disk-fd`),
//! checked when the VMM starts, before the jail ([`DiskFile::from_inherited_fd`]),
//! and read and written straight from and into guest memory, one `preadv` or
//! `pwritev` per request.
//!
//! Where the file's file system allows it, aligned requests (all a guest's
//! page cache makes) go through a second, `O_DIRECT` open of the file: the
//! guest already caches what it reads and writes, and a second copy in the
//! host's page cache would cost the host that memory again, and a copy more
//! each way. Anything else (tmpfs before Linux 6.6 has no `O_DIRECT`, or a
//! request not on [`DIRECT_ALIGN`] boundaries) goes through the host's page
//! cache; Linux keeps the two coherent.
//!
//! The disk's size is the file's when the VMM starts; the guest can never
//! grow it (every request is checked against it, `request.rs`).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::{GuestAddress, GuestMemory as _};

use super::request::SECTOR_SIZE;
use crate::inherited_fd::{self, InheritedFdError};
use crate::virtio::GuestMemory;

/// Why `--disk-fd` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Inherited(#[from] InheritedFdError),
    #[error("--disk-fd {fd}: {step}: {source}")]
    Syscall {
        fd: RawFd,
        step: &'static str,
        source: io::Error,
    },
    #[error("--disk-fd {0} is not a regular file")]
    NotAFile(RawFd),
    #[error("--disk-fd {0} is not open for reading and writing (O_RDWR)")]
    NotReadWrite(RawFd),
    #[error("--disk-fd {fd}: the file's {size} bytes are not a non-zero whole number of {SECTOR_SIZE}-byte sectors")]
    Size { fd: RawFd, size: u64 },
}

/// The alignment of buffers, lengths and offsets that `O_DIRECT` takes here:
/// a page, which satisfies every logical block size a host disk has.
pub const DIRECT_ALIGN: usize = 4096;

/// The disk's backing file and its size in sectors.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    /// The same file opened with `O_DIRECT`, where its file system has it.
    direct: Option<File>,
    sectors: u64,
}

impl DiskFile {
    /// Takes over `fd` ([`inherited_fd::take`]), which must be a regular
    /// file, readable and writable, of a non-zero whole number of sectors.
    pub fn from_inherited_fd(fd: RawFd) -> Result<Self, DiskError> {
        let file = File::from(inherited_fd::take("--disk-fd", fd)?);
        let syscall = |step| move |source| DiskError::Syscall { fd, step, source };
        // SAFETY: F_GETFL only reads the status flags of `fd`.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(syscall("F_GETFL")(io::Error::last_os_error()));
        }
        if flags & libc::O_ACCMODE != libc::O_RDWR {
            return Err(DiskError::NotReadWrite(fd));
        }
        let metadata = file.metadata().map_err(syscall("fstat"))?;
        if !metadata.file_type().is_file() {
            return Err(DiskError::NotAFile(fd));
        }
        Self::new(file, fd, metadata.len())
    }

    /// A disk on an open file (tests and fuzzing: a temporary file).
    pub fn from_file(file: File) -> Result<Self, DiskError> {
        let fd = file.as_raw_fd();
        let size = file
            .metadata()
            .map_err(|source| DiskError::Syscall {
                fd,
                step: "fstat",
                source,
            })?
            .len();
        Self::new(file, fd, size)
    }

    fn new(file: File, fd: RawFd, size: u64) -> Result<Self, DiskError> {
        if size == 0 || !size.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::Size { fd, size });
        }
        // A new open file description of the same file (the inherited one
        // may be shared); `/proc/self/fd` reaches it even unlinked. EINVAL
        // is a file system without O_DIRECT: the page cache it is (the VMM
        // logs which at start, `is_direct`).
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(format!("/proc/self/fd/{fd}"))
            .inspect_err(|error| tracing::debug!(%error, "no O_DIRECT open of the disk"))
            .ok();
        Ok(DiskFile {
            file,
            direct,
            sectors: size / SECTOR_SIZE,
        })
    }

    /// Whether aligned requests bypass the host's page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The file to move `iovecs` at `offset` through: the `O_DIRECT` one
    /// when everything is aligned for it.
    fn file_for(&self, iovecs: &[libc::iovec], offset: u64) -> &File {
        let aligned = |value: usize| value.is_multiple_of(DIRECT_ALIGN);
        match &self.direct {
            Some(direct)
                if offset.is_multiple_of(DIRECT_ALIGN as u64)
                    && iovecs
                        .iter()
                        .all(|iov| aligned(iov.iov_base as usize) && aligned(iov.iov_len)) =>
            {
                direct
            }
            _ => &self.file,
        }
    }

    /// The disk's size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Reads the disk from `sector` into the guest buffers `data`, which
    /// [`super::request::parse`] checked (in guest memory, on the disk).
    pub fn read(
        &self,
        mem: &GuestMemory,
        sector: u64,
        data: &[(GuestAddress, u32)],
    ) -> io::Result<()> {
        self.transfer(mem, sector, data, Direction::Read)
    }

    /// Writes the guest buffers `data` to the disk at `sector`.
    pub fn write(
        &self,
        mem: &GuestMemory,
        sector: u64,
        data: &[(GuestAddress, u32)],
    ) -> io::Result<()> {
        self.transfer(mem, sector, data, Direction::Write)
    }

    fn transfer(
        &self,
        mem: &GuestMemory,
        sector: u64,
        data: &[(GuestAddress, u32)],
        direction: Direction,
    ) -> io::Result<()> {
        let mut slices = Vec::with_capacity(data.len());
        for &(addr, len) in data.iter().filter(|(_, len)| *len > 0) {
            let slice = mem
                .get_slice(addr, len as usize)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            slices.push(slice);
        }
        let mut iovecs: Vec<libc::iovec> = slices
            .iter()
            .map(|slice| libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            })
            .collect();
        let mut offset = sector * SECTOR_SIZE;
        let mut start = 0;
        while start < iovecs.len() {
            let pending = &iovecs[start..];
            let count = pending.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
            let offset_arg = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let fd = self.file_for(pending, offset).as_raw_fd();
            // SAFETY: every iovec points into guest memory that `slices`
            // borrows for this whole call (get_slice checked that each range
            // lies in one mapped region), and the kernel reads or writes only
            // within them; `count` iovecs follow `pending`'s start.
            let done = unsafe {
                match direction {
                    Direction::Read => libc::preadv(fd, pending.as_ptr(), count, offset_arg),
                    Direction::Write => libc::pwritev(fd, pending.as_ptr(), count, offset_arg),
                }
            };
            if done < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            if done == 0 {
                // The file shrank under us (someone else truncated it).
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            let mut done = done as usize;
            offset += done as u64;
            // Skip the iovecs done, and shorten the one done in part.
            while start < iovecs.len() && done >= iovecs[start].iov_len {
                done -= iovecs[start].iov_len;
                start += 1;
            }
            if done > 0 {
                let partial = &mut iovecs[start];
                // SAFETY: `done` is less than this iovec's length, so the new
                // base stays inside the same guest buffer.
                partial.iov_base = unsafe { partial.iov_base.cast::<u8>().add(done).cast() };
                partial.iov_len -= done;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}
