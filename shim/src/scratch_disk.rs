//! A sandbox's scratch disk: a sparse file of `scratch_disk_gib` in
//! `scratch_dir`, XFS, given to cocoon-vmm as a virtio-blk disk
//! (`--disk-fd`). The agent keeps each container's writable layer on it (an
//! overlay over the image shared read-only), so that what a container
//! writes never crosses to the host file by file.
//!
//! The file is unlinked as soon as it is made (O_TMPFILE where the file
//! system has it): it lives exactly as long as the VMM holding it, and
//! nothing is left after a crash. Each disk starts as a copy of a blank
//! image that `mkfs.xfs` formatted once per size and format
//! (`.blank-<bytes>-v<FORMAT>.xfs` in `scratch_dir`), copied extent by
//! extent, so only the file system's few written blocks take space.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::unistd::Whence;

use crate::host_program;
use crate::sandbox::create_private_dir;

/// The descriptor number the VMM finds its disk under.
pub const VMM_DISK_FD: i32 = 4;
/// Serialises the making of blank images between shims.
const LOCK_FILE: &str = ".lock";
/// The blank image's format, in its name: a shim never copies a blank that
/// an older `format_image` made. Count it up whenever that changes.
const FORMAT: u32 = 3;
/// The blank image's name in `scratch_dir` ends so.
const BLANK_SUFFIX: &str = ".xfs";
/// How long mkfs.xfs may take (a sparse image: well under a second).
const MKFS_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a failed mkfs.xfs's output its error quotes.
const MKFS_OUTPUT_QUOTED: usize = 1024;
/// The unit in which the blank image's zeros are found and punched out.
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ScratchDiskError {
    #[error("the scratch disk in {path} (scratch_dir): {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("formatting the scratch disk image {path} failed: {message}")]
    Format { path: String, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ScratchDiskError + '_ {
    move |source| ScratchDiskError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// An open scratch disk, not linked anywhere.
#[derive(Debug)]
pub struct ScratchDisk {
    pub file: File,
}

impl ScratchDisk {
    /// A fresh, formatted disk of `bytes` in `dir`.
    pub async fn formatted(dir: &Path, bytes: u64) -> Result<Self, ScratchDiskError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let blank = blank_image(&dir, bytes)?;
            let disk = Self::zeroed(&dir, bytes)?;
            copy_extents(&blank, &disk.file, &dir)?;
            Ok(disk)
        })
        .await
        .map_err(|e| ScratchDiskError::Io {
            path: String::new(),
            source: std::io::Error::other(e),
        })?
    }

    /// A disk of `bytes` of zeros in `dir` (a template boot's: the guest
    /// only sees its size).
    pub fn zeroed(dir: &Path, bytes: u64) -> Result<Self, ScratchDiskError> {
        create_private_dir(dir).map_err(io_error(dir))?;
        let file = anonymous_file(dir)?;
        file.set_len(bytes).map_err(io_error(dir))?;
        Ok(ScratchDisk { file })
    }
}

/// A new file in `dir` that no path names.
fn anonymous_file(dir: &Path) -> Result<File, ScratchDiskError> {
    let tmpfile = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match tmpfile {
        Ok(file) => Ok(file),
        // A file system without O_TMPFILE (overlayfs before Linux 6.6):
        // a named file, unlinked at once.
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            let path = unique_path(dir, "disk");
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_error(&path))?;
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            Ok(file)
        }
        Err(error) => Err(io_error(dir)(error)),
    }
}

fn unique_path(dir: &Path, what: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    dir.join(format!(".{what}-{}-{nanos}", std::process::id()))
}

/// The blank file system image of `bytes`, made now if there is none.
fn blank_image(dir: &Path, bytes: u64) -> Result<File, ScratchDiskError> {
    create_private_dir(dir).map_err(io_error(dir))?;
    let path = dir.join(format!(".blank-{bytes}-v{FORMAT}{BLANK_SUFFIX}"));
    if let Ok(image) = File::open(&path) {
        return Ok(image);
    }
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::create(&lock_path).map_err(io_error(&lock_path))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io_error(&lock_path)(e.into()))?;
    if let Ok(image) = File::open(&path) {
        return Ok(image);
    }
    let work = unique_path(dir, "blank");
    let made = format_image(&work, bytes)
        .and_then(|()| std::fs::rename(&work, &path).map_err(io_error(&path)));
    let _ = std::fs::remove_file(&work);
    made?;
    remove_older_formats(dir);
    File::open(&path).map_err(io_error(&path))
}

/// Removes the blank images an older `format_image` made: no shim of this
/// version copies them again (a running older shim that still wants one
/// makes it anew). Disks copied from them are unaffected. A `.blank-`
/// work file is only ever a crashed maker's: every maker holds the lock.
fn remove_older_formats(dir: &Path) {
    let current = format!("-v{FORMAT}{BLANK_SUFFIX}");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".blank-") && !name.ends_with(&current) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Formats a new sparse file at `path`: XFS, as mkfs.xfs makes it for the
/// size, without reflink (a writable layer never clones). XFS rather than
/// ext4 because a buffered write costs it less per page: XFS maps a whole
/// write at once, ext4 maps, reserves and journals page by page (256 MiB
/// written in a container took half the time; docs/performance.md).
/// mkfs.xfs leaves its log, 64 MiB at these sizes, as zeros after the
/// first record: unwritten extents, or on tmpfs written zeros, which are
/// punched out here, so that each disk's copy is a few hundred KiB.
fn format_image(path: &Path, bytes: u64) -> Result<(), ScratchDiskError> {
    let file = File::create(path).map_err(io_error(path))?;
    file.set_len(bytes).map_err(io_error(path))?;
    drop(file);
    let mut command = Command::new("mkfs.xfs");
    command
        .args(["-q", "-f", "-K", "-m", "reflink=0", "-L", "cocoon"])
        .arg(path);
    let failed = |message| ScratchDiskError::Format {
        path: path.display().to_string(),
        message,
    };
    // On one of the runtime's blocking threads (see `ScratchDisk::formatted`).
    let finished = tokio::runtime::Handle::current()
        .block_on(host_program::run(
            command,
            Vec::new(),
            MKFS_TIMEOUT,
            MKFS_OUTPUT_QUOTED,
        ))
        .map_err(|e| failed(format!("running mkfs.xfs (xfsprogs): {e}")))?;
    if !finished.status.success() {
        return Err(failed(format!(
            "mkfs.xfs {}: {}",
            finished.status, finished.output_tail
        )));
    }
    let image = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    punch_zeros(&image).map_err(io_error(path))
}

/// Turns every chunk of zeros in `file` into a hole (where mkfs wrote
/// zeros rather than leaving holes, as on tmpfs).
fn punch_zeros(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    for_each_data_chunk(file, |at, chunk| {
        if chunk.iter().all(|&byte| byte == 0) {
            nix::fcntl::fallocate(
                file.as_raw_fd(),
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                at as i64,
                chunk.len() as i64,
            )?;
        }
        Ok(())
    })
}

/// Copies the data extents of `blank` to the same offsets in `disk`
/// (holes stay holes).
fn copy_extents(blank: &File, disk: &File, dir: &Path) -> Result<(), ScratchDiskError> {
    for_each_data_chunk(blank, |at, chunk| disk.write_all_at(chunk, at)).map_err(io_error(dir))
}

/// Calls `each` with every piece of at most [`CHUNK`] bytes of `file`'s
/// data extents (not its holes), and its offset.
fn for_each_data_chunk(
    file: &File,
    mut each: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let size = file.metadata()?.len();
    let mut buffer = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < size {
        let data = match seek(file, offset, Whence::SeekData) {
            Ok(data) => data,
            // No data after `offset`.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) => return Err(e),
        };
        let hole = seek(file, data, Whence::SeekHole)?;
        let mut at = data;
        while at < hole {
            let len = buffer.len().min((hole - at) as usize);
            file.read_exact_at(&mut buffer[..len], at)?;
            each(at, &buffer[..len])?;
            at += len as u64;
        }
        offset = hole;
    }
    Ok(())
}

fn seek(file: &File, offset: u64, whence: Whence) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let offset = i64::try_from(offset)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let at = nix::unistd::lseek(file.as_raw_fd(), offset, whence)?;
    Ok(at as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_disk_is_a_formatted_sparse_copy_of_the_blank_image() {
        let dir = tempfile::tempdir().unwrap();
        // Blanks an older shim made (ext4) are not used, and go.
        std::fs::write(dir.path().join(".blank-268435456.ext4"), b"old").unwrap();
        std::fs::write(dir.path().join(".blank-1073741824-v2.ext4"), b"old").unwrap();
        let bytes = 1 << 30;
        let disk = ScratchDisk::formatted(dir.path(), bytes).await.unwrap();
        let meta = disk.file.metadata().unwrap();
        assert_eq!(meta.len(), bytes);
        // Unlinked: nothing in the directory but the blank image and lock.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".blank-1073741824-v3.xfs", ".lock"]);
        // Sparse: the log's zeros stay holes (unwritten extents in the
        // blank on ext4, punched zeros on tmpfs), about a MiB is allocated.
        use std::os::unix::fs::MetadataExt;
        let allocated = meta.blocks() * 512;
        assert!(allocated < 4 << 20, "{allocated} bytes allocated");
        // An XFS superblock at 0.
        let mut magic = [0u8; 4];
        disk.file.read_exact_at(&mut magic, 0).unwrap();
        assert_eq!(&magic, b"XFSB");
        // The second disk reuses the image and is its own file.
        let again = ScratchDisk::formatted(dir.path(), bytes).await.unwrap();
        again.file.write_all_at(b"x", 0).unwrap();
        let mut first = [0u8; 1];
        disk.file.read_exact_at(&mut first, 0).unwrap();
        assert_eq!(first, *b"X");
    }
}
