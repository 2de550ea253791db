//! How a shared host directory is served: fuse-backend-rs's `PassthroughFs`
//! (reading directories in whole batches: `whole_batches`) mounted at the
//! root of its `Vfs`, the settings we run them with, and the
//! process-wide side effects PassthroughFs needs kept in check (umask, open
//! file limit).
//!
//! The `Vfs` layer is what Dragonball uses too: PassthroughFs on its own
//! grants the guest none of the transfer features (BIG_WRITES, MAX_PAGES,
//! ASYNC_READ, ...) at INIT, which would cap every WRITE at 4 KiB; the Vfs
//! negotiates them, and gives every inode a unique st_ino even when the share
//! spans several host file systems (bind-mounted volumes).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::filesystem::{FileSystem, FsOptions};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::{Vfs, VfsOptions};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use tracing::{debug, error, warn};

use super::error::FsError;
use super::whole_batches::WholeBatches;

/// The file system behind every share.
pub type Passthrough = PassthroughFs<()>;
/// The FUSE server that decodes requests and calls the [`Vfs`] holding the
/// [`Passthrough`]. The `Arc` lets the device reach the file system directly
/// (for a reset) while the worker threads share the server.
pub type FsServer = Server<Arc<Vfs>>;

/// How much of a share the guest may cache without asking the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caching {
    /// For what the host may change while the VM runs (volumes, and a root
    /// file system the container writes in through the share): the guest
    /// revalidates file data at each open (close-to-open consistency) and
    /// entries and attributes after [`COHERENT_TIMEOUT`].
    Coherent,
    /// For what nobody changes while the VM runs (a container's image
    /// layers): the guest keeps file data, directory listings, entries and
    /// attributes for as long as it likes, and opens and closes files
    /// without a round trip (no OPEN, FLUSH or RELEASE).
    Immutable,
}

/// How long the guest may cache directory entries and attributes of a
/// [`Caching::Coherent`] share without asking. The guest is the only writer
/// of its containers' files, but the host side (the shim, kubelet refreshing
/// ConfigMap/Secret volumes) can change volumes under the share; 5 s bounds
/// how stale the guest's view of those gets while still sparing
/// metadata-heavy workloads (package installs, builds) most LOOKUP/GETATTR
/// round trips.
pub const COHERENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The same for a [`Caching::Immutable`] share: a day, as good as forever
/// for data that never changes (the guest still drops entries under memory
/// pressure and looks them up again).
pub const IMMUTABLE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// A ready-to-serve FUSE server for `root`, as the device uses it. Fuzz targets
/// build theirs here too.
pub fn new_server(root: impl AsRef<Path>, caching: Caching) -> Result<FsServer, FsError> {
    Ok(Server::new(open(root.as_ref(), caching)?))
}

/// Validates `root`, creates the PassthroughFs for it, imports the root inode
/// and mounts it as the root of a fresh Vfs, so that a missing or unusable
/// share fails the VM build instead of the guest's mount.
pub(super) fn open(root: &Path, caching: Caching) -> Result<Arc<Vfs>, FsError> {
    let canonical = std::fs::canonicalize(root).map_err(|source| FsError::Root {
        path: root.to_owned(),
        source,
    })?;
    let metadata = std::fs::metadata(&canonical).map_err(|source| FsError::Root {
        path: root.to_owned(),
        source,
    })?;
    if !metadata.is_dir() {
        return Err(FsError::NotADirectory(canonical));
    }
    let Some(root_dir) = canonical.to_str().map(str::to_owned) else {
        return Err(FsError::NonUtf8Root(canonical));
    };
    let failed = |source| FsError::Passthrough {
        path: canonical.clone(),
        source,
    };
    let fs = Passthrough::new(config(root_dir, caching)).map_err(failed)?;
    with_umask_preserved(|| fs.import()).map_err(failed)?;
    let vfs = Vfs::new(vfs_options(caching));
    vfs.mount(Box::new(WholeBatches::new(fs)), "/")
        .map_err(|e| failed(io::Error::other(e.to_string())))?;
    raise_nofile_limit();
    debug!(root = %canonical.display(), "virtio-fs: share ready");
    Ok(Arc::new(vfs))
}

/// The PassthroughFs settings, and why.
pub(super) fn config(root_dir: String, caching: Caching) -> Config {
    let (cache_policy, timeout) = match caching {
        // Auto = close-to-open consistency: the guest caches file data while
        // a file is open and revalidates on open. Always would skip that and
        // never see host-side changes to volumes; Never would forfeit the
        // page cache for the rootfs and make every read a round trip.
        Caching::Coherent => (CachePolicy::Auto, COHERENT_TIMEOUT),
        // Always = KEEP_CACHE on every open and CACHE_DIR on every opendir:
        // what the guest read once stays in its page cache.
        Caching::Immutable => (CachePolicy::Always, IMMUTABLE_TIMEOUT),
    };
    Config {
        root_dir,
        cache_policy,
        entry_timeout: timeout,
        attr_timeout: timeout,
        // Writeback caching needs exclusive access and read access to every file
        // (the guest may read a file it opened write-only); neither holds for
        // volumes, and data loss on a VM crash would be silent.
        writeback: false,
        // Containers use xattrs (security.capability on binaries, overlay and
        // SELinux labels, user.* from applications).
        xattr: true,
        // We import in `open` (so a bad root fails early) and the Vfs does the
        // INIT negotiation; PassthroughFs re-imports on DESTROY by itself.
        do_import: false,
        // Under a Vfs these two are what the Vfs negotiates (vfs_options);
        // PassthroughFs only checks that no_open comes with CachePolicy::Always.
        no_open: caching == Caching::Immutable,
        no_opendir: false,
        // The guest kernel clears setuid/setgid bits and security.capability
        // itself without it; with it, the server would have to on every write.
        killpriv_v2: false,
        // O_PATH fds per inode: no CAP_DAC_READ_SEARCH needed (file handles
        // need it for open_by_handle_at). Costs one fd per inode the guest
        // holds; see raise_nofile_limit.
        inode_file_handles: false,
        // The shim bind-mounts volumes (possibly the same one twice) under the
        // share; telling mounts apart keeps two bind mounts of one directory
        // from aliasing in the guest's dentry cache.
        enable_mntid: true,
        // No DAX window.
        dax_file_size: None,
        ..Config::default()
    }
}

/// What the Vfs may grant at INIT (only what the guest also offers is granted).
pub(super) fn vfs_options(caching: Caching) -> VfsOptions {
    // Files of an immutable share need no OPEN: the guest then reads with
    // handle 0, PassthroughFs opens the inode for each READ (once per range,
    // the page cache keeps the rest), and FLUSH and RELEASE go away too.
    // ATOMIC_O_TRUNC, which needs OPEN, is withdrawn by the Vfs then.
    let no_open = caching == Caching::Immutable;
    let zero_message_open = if no_open {
        FsOptions::ZERO_MESSAGE_OPEN
    } else {
        FsOptions::empty()
    };
    VfsOptions {
        out_opts: zero_message_open
            | FsOptions::ASYNC_READ
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::BIG_WRITES
            | FsOptions::ASYNC_DIO
            // Drop cached pages when a file's mtime/size changed behind the
            // guest's back (host-side edits of volumes).
            | FsOptions::AUTO_INVAL_DATA
            // Requests of up to 256 pages (1 MiB): fuse-backend-rs's limit.
            | FsOptions::MAX_PAGES
            | FsOptions::ATOMIC_O_TRUNC
            | FsOptions::CACHE_SYMLINKS
            | FsOptions::DO_READDIRPLUS
            | FsOptions::READDIRPLUS_AUTO,
        // Not granted, whatever the guest offers: WRITEBACK_CACHE (see
        // config), ZERO_MESSAGE_OPENDIR (a directory stream per handle keeps
        // readdir offsets stable) and HANDLE_KILLPRIV_V2 (off in config),
        // PERFILE_DAX (no DAX window), EXPLICIT_INVAL_DATA (we cannot send
        // invalidations: no notification queue), HAS_IOCTL_DIR
        // (PassthroughFs has no ioctls).
        no_open,
        no_opendir: false,
        no_writeback: true,
        killpriv_v2: false,
        ..VfsOptions::default()
    }
}

/// Forgets every inode and handle the guest held, as FUSE_DESTROY would, and
/// lets the next INIT start over: used when the device is reset, so a rebooted
/// guest starts from a clean slate and the host fds of the old one are closed.
pub(super) fn forget_all(vfs: &Vfs) {
    // PassthroughFs re-imports its root here, which clears the umask.
    with_umask_preserved(|| vfs.destroy());
}

/// `PassthroughFs::import` clears the umask so that the modes the guest asks
/// for are applied exactly. Worker threads get a private umask for that
/// ([`enter_worker_thread`]); on a VMM thread we put the old mask back so the
/// rest of the process keeps creating files with its usual permissions.
fn with_umask_preserved<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps the process's file mode creation mask and cannot fail.
    let old = unsafe { libc::umask(0) };
    let result = f();
    // SAFETY: as above; restores the mask read just before.
    unsafe { libc::umask(old) };
    result
}

/// Prepares a worker thread to serve requests: a private fs context
/// (CLONE_FS: umask, cwd, root) with umask 0, so that files are created with
/// exactly the mode the guest asked for without clearing the umask of the
/// whole VMM.
pub(crate) fn enter_worker_thread() {
    // SAFETY: unshare(CLONE_FS) only detaches this thread's fs context (umask,
    // cwd, root) from the other threads; it touches no memory of ours.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        // Files would be created with the process umask applied (and INIT's
        // import would clear it process-wide); serving on is still better than
        // a guest that cannot mount its root file system.
        error!(
            error = %io::Error::last_os_error(),
            "virtio-fs: cannot unshare the worker's fs context; umask is process-wide"
        );
    }
    // SAFETY: see with_umask_preserved; only this thread's mask after unshare.
    unsafe { libc::umask(0) };
}

/// PassthroughFs holds an O_PATH fd for every inode the guest has looked up
/// (until it forgets it), so a container image walk needs many more fds than
/// the usual soft limit of 1024. Raise the soft limit to the hard limit, as
/// virtiofsd does; never lower anything.
fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        warn!(error = %io::Error::last_os_error(), "virtio-fs: cannot read RLIMIT_NOFILE");
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        warn!(error = %io::Error::last_os_error(), "virtio-fs: cannot raise RLIMIT_NOFILE");
    } else {
        debug!(
            from = limit.rlim_cur,
            to = limit.rlim_max,
            "virtio-fs: raised RLIMIT_NOFILE"
        );
    }
}
