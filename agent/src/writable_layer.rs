//! Containers' writable layers on the sandbox's scratch disk: the root file
//! system the shim shares is then the read-only image, and the container
//! runs on an overlay of it with an upper directory on the disk, so that
//! creating, writing and removing files never leaves the guest.
//!
//! The disk is the VM's virtio-blk device with the serial
//! [`cocoon_protocol::SCRATCH_DISK_SERIAL`], an XFS file system the shim
//! made. It is mounted at [`SCRATCH`] on first use. The guest may have read
//! the disk before the shim's file system was there (a VM restored from a
//! template probed the template's empty disk at boot), so its buffer cache
//! is dropped before the mount.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{AgentError, Result};

/// Where the scratch disk is mounted.
pub const SCRATCH: &str = "/run/cocoon/scratch";
/// Where each container's overlay is mounted: `<ROOTS>/<container id>`.
pub const ROOTS: &str = "/run/cocoon/roots";

// Whether the disk is mounted; the lock also orders first mounts.
static MOUNTED: Mutex<bool> = Mutex::new(false);

/// Mounts an overlay of `lower` (the image, read-only through the share)
/// and a fresh upper directory on the scratch disk for container `id`;
/// returns where the container's root now is.
pub fn stack(id: &str, lower: &Path) -> Result<PathBuf> {
    mount_scratch_disk()?;
    let layer = Path::new(SCRATCH).join(id);
    // A layer left by a create that failed half-way is not this container's.
    remove_dir(&layer)?;
    let (upper, work) = (layer.join("upper"), layer.join("work"));
    for dir in [&upper, &work] {
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError::internal(&format!("creating {}", dir.display()), e))?;
    }
    let root = Path::new(ROOTS).join(id);
    std::fs::create_dir_all(&root)
        .map_err(|e| AgentError::internal(&format!("creating {}", root.display()), e))?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    if has_separator(lower) || has_separator(&layer) {
        return Err(AgentError::InvalidArgument(format!(
            "the root file system path {} cannot be an overlay layer (',' or ':' in it)",
            lower.display()
        )));
    }
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| {
        let _ = remove_dir(&layer);
        AgentError::FailedPrecondition(format!(
            "stacking the writable layer on {}: {e}",
            lower.display()
        ))
    })?;
    Ok(root)
}

/// Unmounts container `id`'s overlay and deletes its writable layer, if it
/// has them. Never fails: it runs on error and removal paths.
pub fn remove(id: &str) {
    let root = Path::new(ROOTS).join(id);
    if root.exists() {
        if let Err(error) = umount2(&root, MntFlags::MNT_DETACH) {
            if error != nix::errno::Errno::EINVAL {
                tracing::warn!(container = id, %error, "unmounting the container's root");
            }
        }
        let _ = std::fs::remove_dir(&root);
    }
    if let Err(error) = remove_dir(&Path::new(SCRATCH).join(id)) {
        tracing::warn!(container = id, %error, "removing the writable layer");
    }
}

fn has_separator(path: &Path) -> bool {
    path.to_string_lossy().contains([',', ':'])
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AgentError::internal(
            &format!("removing {}", dir.display()),
            e,
        )),
        _ => Ok(()),
    }
}

fn mount_scratch_disk() -> Result<()> {
    let mut mounted = MOUNTED.lock().unwrap_or_else(|e| e.into_inner());
    if *mounted {
        return Ok(());
    }
    let device = find_disk()?;
    drop_cached_blocks(&device)?;
    read_ahead_more(&device);
    std::fs::create_dir_all(SCRATCH)
        .map_err(|e| AgentError::internal("creating the scratch mount point", e))?;
    mount(
        Some(device.as_path()),
        SCRATCH,
        Some("xfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
        // Two in-memory log buffers instead of eight: 192 KiB less of
        // every pod's memory (docs/performance.md); a writable layer's
        // log traffic is small.
        Some("logbufs=2"),
    )
    .map_err(|e| {
        AgentError::FailedPrecondition(format!(
            "mounting the scratch disk {}: {e}",
            device.display()
        ))
    })?;
    *mounted = true;
    Ok(())
}

/// The block device whose serial is the scratch disk's.
fn find_disk() -> Result<PathBuf> {
    let blocks = std::fs::read_dir("/sys/block")
        .map_err(|e| AgentError::internal("listing /sys/block", e))?;
    for entry in blocks.flatten() {
        let serial = std::fs::read(entry.path().join("serial")).unwrap_or_default();
        if serial.trim_ascii_end() == cocoon_protocol::SCRATCH_DISK_SERIAL.as_bytes() {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    Err(AgentError::FailedPrecondition(
        "this VM has no scratch disk for writable layers".into(),
    ))
}

/// Every request to the disk is a VM exit: reading ahead 1 MiB (the most
/// one request carries, SEG_MAX pages) instead of the default 128 KiB cuts
/// a sequential read's exits eightfold.
fn read_ahead_more(device: &Path) {
    let Some(name) = device.file_name() else {
        return;
    };
    let setting = Path::new("/sys/block")
        .join(name)
        .join("queue/read_ahead_kb");
    if let Err(e) = std::fs::write(&setting, "1024") {
        tracing::warn!("setting {}: {e}", setting.display());
    }
}

/// BLKFLSBUF: drops the device's clean cached blocks, which may be from
/// before the file system was written (see the module's comment).
fn drop_cached_blocks(device: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let disk = std::fs::File::open(device)
        .map_err(|e| AgentError::internal(&format!("opening {}", device.display()), e))?;
    nix::ioctl_none!(blkflsbuf, 0x12, 97);
    // SAFETY: BLKFLSBUF takes no argument and only drops the block device's
    // cached pages; `disk` is an open block device for the call.
    unsafe { blkflsbuf(disk.as_raw_fd()) }
        .map(drop)
        .map_err(|e| AgentError::internal("dropping the scratch disk's cached blocks", e))
}
