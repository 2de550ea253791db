//! The jail's file system view: a private mount namespace whose root (after
//! pivot_root) is a small read-only tmpfs holding only the shares.
//!
//! Layout of the tmpfs, mounted on the jail directory DIR (canonical):
//!
//! ```text
//! /                 tmpfs, mode 0700, nosuid nodev noexec, read-only once entered
//! /shares/0, 1, ... recursive binds of each --share directory, flags as on the host
//! /<DIR>            a symlink to "/" (DIR without its leading slash)
//! ```
//!
//! The symlink makes `DIR/shares/N` lead to the same bind before the pivot
//! (through the host's DIR, where the tmpfs is mounted) and after it
//! (through the symlink): the file server opens its root through that path
//! while the VM is built, and names it again whenever the guest resets the
//! device or sends FUSE_DESTROY.
//!
//! The file server's /proc/self/fd comes from a proc instance of the VMM's
//! own, with nothing but process directories ([`mount_private_proc`]).
//!
//! Propagation: every mount is made a slave first, so mounts the host makes
//! later under a share (the shim mounts each container's root file system
//! after the VM started, in a shared mount) reach the jail's bind, and
//! nothing the VMM mounts or unmounts reaches the host.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::JailError;

/// Where the shares are bound in the jail.
pub const SHARES_DIR: &str = "shares";
/// Where the old root is put by pivot_root, then detached and removed.
const OLD_ROOT: &str = "old-root";
/// The tmpfs holds a few directories and one symlink, never file data: 1 MiB
/// and 1024 inodes are plenty and keep the VMM from filling anything.
const TMPFS_OPTIONS: &str = "mode=0700,size=1m,nr_inodes=1024";

/// Unshares the mount namespace, mounts the jail's tmpfs on `dir` and binds
/// `shares` into it. Returns the canonical jail directory and the path of
/// each share in the jail.
pub(super) fn prepare(
    dir: &Path,
    shares: &[PathBuf],
) -> Result<(PathBuf, Vec<PathBuf>), JailError> {
    let root = std::fs::canonicalize(dir)
        .map_err(JailError::step(format!("jail directory {}", dir.display())))?;
    if root == Path::new("/") || !root.is_dir() {
        return Err(JailError::Step {
            step: format!("jail directory {}", root.display()),
            source: io::Error::other("not a directory other than /"),
        });
    }
    let sources = shares
        .iter()
        .map(|share| {
            std::fs::canonicalize(share).map_err(JailError::step(format!(
                "shared directory {}",
                share.display()
            )))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // SAFETY: unshare only changes this process's namespace membership; the
    // caller checked that it has one thread, so no other thread is left behind.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(JailError::step("unsharing the mount namespace")(
            io::Error::last_os_error(),
        ));
    }
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_SLAVE,
        None,
    )
    .map_err(JailError::step("making every mount a slave"))?;
    mount_private_proc()?;
    mount(
        Some(c"cocoon-jail"),
        &root,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&cstring(Path::new(TMPFS_OPTIONS))?),
    )
    .map_err(JailError::step(format!(
        "mounting the jail's tmpfs on {}",
        root.display()
    )))?;

    let mirror = root.join(root.strip_prefix("/").unwrap_or(&root));
    if let Some(parent) = mirror.parent() {
        make_dirs(parent)?;
    }
    std::os::unix::fs::symlink("/", &mirror).map_err(JailError::step(format!(
        "creating the jail's link {}",
        mirror.display()
    )))?;

    // fuse-backend-rs names files as /proc/self/fd/N for xattrs (which the
    // guest kernel reads on every exec: security.capability), so the jail
    // gets the same private proc.
    let proc_dir = root.join("proc");
    make_dirs(&proc_dir)?;
    mount(Some(c"/proc"), &proc_dir, None, libc::MS_BIND, None)
        .map_err(JailError::step("binding the private proc into the jail"))?;

    let shares_dir = root.join(SHARES_DIR);
    make_dirs(&shares_dir)?;
    let mut targets = Vec::with_capacity(sources.len());
    for (index, source) in sources.iter().enumerate() {
        let target = shares_dir.join(index.to_string());
        make_dirs(&target)?;
        // A bind keeps the source mount's flags (the shim's share is
        // read-only); MS_REC brings the mounts already under it.
        mount(
            Some(&cstring(source)?),
            &target,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )
        .map_err(JailError::step(format!(
            "binding {} into the jail",
            source.display()
        )))?;
        targets.push(target);
    }
    Ok((root, targets))
}

/// A fresh proc over /proc, for this namespace only: the file server keeps
/// /proc/self/fd open for the VM's whole life, and from the host's proc
/// `..` leads to /proc/sys, writable by uid 0 without any capability
/// (kernel/core_pattern is a way out). This one has process directories
/// only (subset=pid), and only those the VMM may ptrace (hidepid): itself.
fn mount_private_proc() -> Result<(), JailError> {
    mount(
        Some(c"proc"),
        Path::new("/proc"),
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(c"subset=pid,hidepid=ptraceable"),
    )
    .map_err(JailError::step(
        "mounting a proc with only process directories on /proc (Linux 5.8 or later)",
    ))
}

/// pivot_root into `root` (prepared by [`prepare`]), the old root detached
/// and its mount point removed, the new root read-only.
pub(super) fn enter(root: &Path) -> Result<(), JailError> {
    std::env::set_current_dir(root)
        .map_err(JailError::step(format!("entering {}", root.display())))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(OLD_ROOT)
        .map_err(JailError::step("creating the old root's mount point"))?;
    let old_root = cstring(Path::new(OLD_ROOT))?;
    // SAFETY: pivot_root takes two NUL-terminated paths and touches no memory
    // of ours; "." is the jail's tmpfs, a mount point in our own namespace.
    if unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), old_root.as_ptr()) } != 0 {
        return Err(JailError::step(format!(
            "pivot_root into {}",
            root.display()
        ))(io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(JailError::step("chdir / in the jail"))?;
    let old_root = cstring(&Path::new("/").join(OLD_ROOT))?;
    // SAFETY: umount2 takes a NUL-terminated path and flags only.
    if unsafe { libc::umount2(old_root.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(JailError::step("detaching the old root")(
            io::Error::last_os_error(),
        ));
    }
    std::fs::remove_dir(Path::new("/").join(OLD_ROOT))
        .map_err(JailError::step("removing the old root's mount point"))?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
    )
    .map_err(JailError::step("remounting the jail's root read-only"))
}

fn make_dirs(path: &Path) -> Result<(), JailError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(JailError::step(format!("creating {}", path.display())))
}

fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::Step {
        step: format!("path {}", path.display()),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

fn mount(
    source: Option<&CStr>,
    target: &Path,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let target = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a NUL-terminated string that outlives
    // the call; mount(2) reads them and writes no memory of ours.
    let result = unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
