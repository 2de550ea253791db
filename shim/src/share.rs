//! A sandbox's shares: the directories cocoon-vmm serves to the guest over
//! virtio-fs, and the host-only directory behind them where the shim mounts.
//!
//! - `mounts/` is a tmpfs of its own: capped (`share_size_mib`), 0700,
//!   nosuid, nodev, noexec, and a shared mount, so that what the shim mounts
//!   under it after the VMM started propagates into the VMM's mount
//!   namespace. Container root file systems are mounted at
//!   `mounts/containers/<id>/rootfs`, volumes at
//!   `mounts/containers/<id>/volumes/<n>`, nosuid and nodev. A root file
//!   system whose writable layer goes on the guest's scratch disk is its
//!   image layers alone, read-only, at `mounts/images/<id>@<n>`.
//! - `share/` is a read-only bind of `mounts/`. The VMM serves
//!   `share/containers` under [`SHARE_TAG`] and `share/images` under
//!   [`IMAGES_TAG`], which the guest caches as immutable: nothing changes
//!   an image while its container runs, and a name there is never used
//!   twice (`<n>` counts up), so an entry the guest keeps cached may be
//!   gone but is never wrong.
//!
//! The guest can write inside the container file systems mounted there,
//! never the directories around them: it cannot plant a symlink where the
//! shim mounts or unmounts, and what it writes lands in the container's
//! writable layer, not in /run. Defence in depth on top: the shim opens
//! mount points beneath `mounts/` without following symlinks or crossing
//! mounts (openat2), and unmounts with UMOUNT_NOFOLLOW.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cocoon_protocol::client::GuestRootfs;
use cocoon_protocol::{GUEST_IMAGES_DIR, GUEST_SHARE_DIR};
#[cfg(doc)]
use cocoon_protocol::{IMAGES_TAG, SHARE_TAG};
use containerd_shim::protos::api::Mount;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mkdirat, Mode};

use crate::rootfs::{self, RootfsError};
use crate::volumes::HostVolume;

/// Where the shim mounts; never exposed writable to the guest.
const HOST_ONLY_DIR: &str = "mounts";
/// The read-only view of it that the VMM serves.
const EXPOSED_DIR: &str = "share";
/// Under both: the containers' root file systems and volumes.
const CONTAINERS_DIR: &str = "containers";
/// Under both: image layers, each mounted once under a name never reused.
const IMAGES_DIR: &str = "images";
/// A private mount where root file systems are made ready before they go
/// into the shared tree.
const STAGING_DIR: &str = "staging";

#[derive(Debug, thiserror::Error)]
#[error("setting up the share in {path}: {what}: {source}")]
pub struct ShareError {
    path: String,
    what: &'static str,
    #[source]
    source: std::io::Error,
}

/// The share of the sandbox whose state directory is `dir`.
pub struct Share {
    host_only: PathBuf,
    exposed: PathBuf,
    staging: PathBuf,
}

/// The `<n>` of the next image mount's name (one shim serves one sandbox).
static IMAGE_MOUNTS: AtomicU64 = AtomicU64::new(0);

impl Share {
    /// Mounts the capped host-only tmpfs and its read-only view in `dir`.
    pub fn create(dir: &Path, size_mib: u64) -> Result<Self, ShareError> {
        let share = Share::of(dir);
        let fail = |what, source| ShareError {
            path: dir.display().to_string(),
            what,
            source,
        };
        for path in [&share.host_only, &share.exposed, &share.staging] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(path)
                .map_err(|e| fail("creating the directory", e))?;
        }
        let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let size = format!("size={}m,mode=0700", size_mib.max(1));
        mount(
            Some("cocoon-share"),
            &share.host_only,
            Some("tmpfs"),
            hardened,
            Some(size.as_str()),
        )
        .map_err(|e| fail("mounting its tmpfs", e.into()))?;
        for name in [CONTAINERS_DIR, IMAGES_DIR] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(share.host_only.join(name))
                .map_err(|e| fail("creating the directory", e))?;
        }
        // Shared, so that mounts made here later reach the VMM's namespace
        // (a slave of this peer group) and the read-only view below.
        mount(
            None::<&str>,
            &share.host_only,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(|e| fail("making it a shared mount", e.into()))?;
        mount(
            Some(&share.host_only),
            &share.exposed,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| fail("binding its view", e.into()))?;
        mount(
            None::<&str>,
            &share.exposed,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | hardened,
            None::<&str>,
        )
        .map_err(|e| fail("making its view read-only", e.into()))?;
        for flags in [MsFlags::MS_BIND, MsFlags::MS_PRIVATE] {
            mount(
                Some(&share.staging),
                &share.staging,
                None::<&str>,
                flags,
                None::<&str>,
            )
            .map_err(|e| fail("making the staging directory private", e.into()))?;
        }
        Ok(share)
    }

    /// The share of `dir`, without touching anything.
    pub fn of(dir: &Path) -> Self {
        Share {
            host_only: dir.join(HOST_ONLY_DIR),
            exposed: dir.join(EXPOSED_DIR),
            staging: dir.join(STAGING_DIR),
        }
    }

    /// The directory the VMM serves to the guest under [`SHARE_TAG`].
    pub fn exposed(&self) -> PathBuf {
        self.exposed.join(CONTAINERS_DIR)
    }

    /// The directory the VMM serves to the guest under [`IMAGES_TAG`].
    pub fn exposed_images(&self) -> PathBuf {
        self.exposed.join(IMAGES_DIR)
    }

    fn containers(&self) -> PathBuf {
        self.host_only.join(CONTAINERS_DIR)
    }

    fn images(&self) -> PathBuf {
        self.host_only.join(IMAGES_DIR)
    }

    /// Where the guest sees container `id`'s root file system, when the
    /// container writes in it.
    pub fn guest_rootfs(id: &str) -> String {
        format!("{GUEST_SHARE_DIR}/{id}/rootfs")
    }

    /// Mounts container `id`'s root file system (`mounts`, else the
    /// directory `root`) at `mounts/containers/<id>/rootfs`, nosuid and
    /// nodev, and says where the guest finds it.
    ///
    /// Per-mount flags do not propagate, and a bind mount ignores them when
    /// made: so the file system is mounted and hardened in the private
    /// `staging/` first, then bound into place, and every copy of it (the
    /// read-only view's, the VMM's) carries the flags from its start.
    ///
    /// With `image_only_if_layered`, a root file system that is an overlay
    /// with an upper directory (containerd's overlayfs snapshotter) is
    /// mounted as its layers alone, read-only, at `mounts/images/<id>@<n>`
    /// instead, for the guest to stack its own writable layer on.
    pub async fn mount_rootfs(
        &self,
        id: &str,
        mounts: &[Mount],
        root: &Path,
        image_only_if_layered: bool,
    ) -> Result<GuestRootfs, RootfsError> {
        check_id(id)?;
        let image = image_only_if_layered
            .then(|| rootfs::image_layers(mounts))
            .flatten();
        let Some(image) = image else {
            let target_path = self.containers().join(id).join("rootfs");
            let target = make_dirs_beneath(&self.containers(), &[id, "rootfs"])
                .map_err(|e| failed(&target_path, "creating the mount point", e))?;
            let staged = Staged::point(&self.staging, id, PointKind::Directory)?;
            rootfs::mount_rootfs(mounts, root, &by_fd(&staged.root)).await?;
            bind_into_place(&staged.settle(false)?, &target, &target_path)?;
            return Ok(GuestRootfs::writable(Self::guest_rootfs(id)));
        };
        let name = format!("{id}@{}", IMAGE_MOUNTS.fetch_add(1, Ordering::Relaxed));
        let target_path = self.images().join(&name);
        let images = make_dirs_beneath(&self.images(), &[])
            .map_err(|e| failed(&target_path, "opening the images directory", e))?;
        let target = make_point_beneath(&images, &name, PointKind::Directory)
            .map_err(|e| failed(&target_path, "creating the mount point", e))?;
        let staged = Staged::point(&self.staging, id, PointKind::Directory)?;
        rootfs::mount_rootfs(&[image], root, &by_fd(&staged.root)).await?;
        bind_into_place(&staged.settle(true)?, &target, &target_path)?;
        Ok(GuestRootfs {
            path: format!("{GUEST_IMAGES_DIR}/{name}"),
            writable_layer_on_scratch_disk: true,
        })
    }

    /// Mounts a host path (a directory or a file) at
    /// `mounts/containers/<id>/volumes/<index>`, where the guest sees it as
    /// [`crate::volumes::guest_volume`]: nosuid and nodev always, read-only
    /// if the volume says.
    pub fn mount_volume(&self, id: &str, volume: &HostVolume) -> Result<(), RootfsError> {
        check_id(id)?;
        let kind = PointKind::of_source(&volume.source)?;
        let name = volume.index.to_string();
        let target_path = self.containers().join(id).join("volumes").join(&name);
        let volumes = make_dirs_beneath(&self.containers(), &[id, "volumes"])
            .map_err(|e| failed(&target_path, "creating the volumes directory", e))?;
        let target = make_point_beneath(&volumes, &name, kind)
            .map_err(|e| failed(&target_path, "creating the mount point", e))?;
        // Ids cannot hold '@': no clash with a root file system's staging point.
        let staged = Staged::point(&self.staging, &format!("{id}@{name}"), kind)?;
        let mut flags = MsFlags::MS_BIND;
        if volume.recursive {
            flags |= MsFlags::MS_REC;
        }
        // The source is the host's own path (containerd and kubelet wrote
        // it), followed as runc follows it.
        mount(
            Some(&volume.source),
            &by_fd(&staged.root),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|e| RootfsError::Mount {
            kind: "bind".into(),
            source_path: volume.source.display().to_string(),
            message: e.to_string(),
        })?;
        let staged = staged.settle(volume.readonly)?;
        bind_into_place(&staged, &target, &target_path)
    }

    /// Unmounts everything of container `id` (its root file system or
    /// image layers, and its volumes) and removes their directories.
    pub fn unmount_container(&self, id: &str) {
        if check_id(id).is_err() {
            return;
        }
        let dir = self.containers().join(id);
        let mut points = vec![dir.join("rootfs")];
        if let Ok(volumes) = std::fs::read_dir(dir.join("volumes")) {
            points.extend(volumes.flatten().map(|entry| entry.path()));
        }
        for point in points {
            unmount_all_at(&point);
        }
        remove_unless_mounted(&dir);
        let Ok(images) = std::fs::read_dir(self.images()) else {
            return;
        };
        for entry in images.flatten() {
            let name = entry.file_name();
            let of_id = (name.to_str())
                .and_then(|name| name.rsplit_once('@'))
                .is_some_and(|(owner, _)| owner == id);
            if of_id {
                unmount_all_at(&entry.path());
                remove_unless_mounted(&entry.path());
            }
        }
    }

    /// Unmounts the share of `dir` (the view, then everything under the
    /// host-only directory, then its tmpfs). Safe to call on a share that
    /// is not mounted.
    pub fn unmount_all(dir: &Path) {
        let share = Share::of(dir);
        for path in [&share.exposed, &share.host_only, &share.staging] {
            if let Some(path) = path.to_str() {
                let flags = libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW;
                let _ = containerd_shim::mount::umount_recursive(Some(path), flags);
            }
        }
    }
}

/// Container ids name a directory: containerd allows letters, digits, `.`,
/// `_` and `-`, starting with a letter or digit; nothing else gets near a
/// path.
fn check_id(id: &str) -> Result<(), RootfsError> {
    let mut chars = id.chars();
    let valid = id.len() <= 76
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(RootfsError::BadId(id.into()))
    }
}

/// Unmounts every mount stacked at `point` (several layers of the same
/// target come off one by one), never following a symlink.
fn unmount_all_at(point: &Path) {
    while umount2(point, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).is_ok() {}
}

/// Removes the directory `path`, unless something is still mounted there.
fn remove_unless_mounted(path: &Path) {
    if crate::sandbox::has_mounts_under(path) {
        tracing::error!(
            "{} still has mounts under it; leaving it in place",
            path.display()
        );
        return;
    }
    let _ = std::fs::remove_dir_all(path);
}

fn failed(path: &Path, step: &str, error: nix::Error) -> RootfsError {
    RootfsError::Create {
        path: path.display().to_string(),
        source: std::io::Error::other(format!("{step}: {error}")),
    }
}

/// Binds a staged, hardened mount at `target` (opened at `target_path`).
fn bind_into_place(
    staged: &Staged,
    target: &OwnedFd,
    target_path: &Path,
) -> Result<(), RootfsError> {
    mount(
        Some(&by_fd(&staged.root)),
        &by_fd(target),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| failed(target_path, "binding the staged mount into the share", e))
}

/// What a mount point is: a bind mount's target must be of its source's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PointKind {
    Directory,
    File,
}

impl PointKind {
    /// Directories and regular files can be shared with the guest; a
    /// socket, pipe or device node means nothing inside another kernel.
    fn of_source(source: &Path) -> Result<Self, RootfsError> {
        let refuse = |message: String| RootfsError::Mount {
            kind: "bind".into(),
            source_path: source.display().to_string(),
            message,
        };
        let metadata = std::fs::metadata(source).map_err(|e| refuse(e.to_string()))?;
        if metadata.is_dir() {
            Ok(PointKind::Directory)
        } else if metadata.is_file() {
            Ok(PointKind::File)
        } else {
            Err(refuse(
                "only directories and regular files can be shared with a VM \
                 (a socket, pipe or device node on the host means nothing in the guest)"
                    .into(),
            ))
        }
    }
}

/// A mount in the staging directory, hardened before it is bound into the
/// share; unmounted from there when dropped (a bind of it elsewhere stays).
struct Staged {
    dir: PathBuf,
    name: String,
    kind: PointKind,
    /// The mount point, then (after [`Staged::settle`]) the mount's root.
    root: OwnedFd,
}

impl Staged {
    /// An empty mount point `name` in `staging`, for the caller to mount on.
    fn point(staging: &Path, name: &str, kind: PointKind) -> Result<Self, RootfsError> {
        let path = staging.join(name);
        let base = open_beneath(None, staging, ResolveFlag::RESOLVE_NO_MAGICLINKS)
            .map_err(|e| failed(staging, "opening the staging directory", e))?;
        let root = make_point_beneath(&base, name, kind)
            .map_err(|e| failed(&path, "creating the staging point", e))?;
        Ok(Staged {
            dir: path,
            name: name.into(),
            kind,
            root,
        })
    }

    /// Once mounted on: opens the new mount's root and makes it nosuid and
    /// nodev (and read-only if asked).
    fn settle(mut self, readonly: bool) -> Result<Self, RootfsError> {
        let staging = self.dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        let base = open_beneath(None, &staging, ResolveFlag::RESOLVE_NO_MAGICLINKS)
            .map_err(|e| failed(&staging, "opening the staging directory", e))?;
        let resolve = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS;
        // Opened again, it is the new mount's root.
        self.root = open_path_beneath(Some(&base), Path::new(&self.name), resolve, self.kind)
            .map_err(|e| failed(&self.dir, "opening the staged mount", e))?;
        rootfs::harden(&by_fd(&self.root), readonly)?;
        Ok(self)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        while umount2(&self.dir, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).is_ok() {}
        let _ = match self.kind {
            PointKind::Directory => std::fs::remove_dir(&self.dir),
            PointKind::File => std::fs::remove_file(&self.dir),
        };
    }
}

/// Creates (if missing) and opens the mount point `name` in the directory
/// `dir`, never following a symlink.
fn make_point_beneath(dir: &OwnedFd, name: &str, kind: PointKind) -> nix::Result<OwnedFd> {
    let strict = ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_XDEV;
    match kind {
        PointKind::Directory => {
            ignore_exists(mkdirat(
                Some(dir.as_raw_fd()),
                name,
                Mode::from_bits_truncate(0o700),
            ))?;
        }
        PointKind::File => {
            let how = OpenHow::new()
                .flags(OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
                .mode(Mode::from_bits_truncate(0o600))
                .resolve(strict);
            let fd = openat2(dir.as_raw_fd(), name, how)?;
            // SAFETY: openat2 just returned this descriptor, which nothing else owns.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    open_path_beneath(Some(dir), Path::new(name), strict, kind)
}

/// Creates each of `names` below the last (starting at `base`) and opens
/// the last, never following a symlink or crossing a mount below `base`.
fn make_dirs_beneath(base: &Path, names: &[&str]) -> nix::Result<OwnedFd> {
    let strict = ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_XDEV;
    let mode = Mode::from_bits_truncate(0o700);
    // `base` itself is the shim's own path.
    let mut dir = open_beneath(None, base, ResolveFlag::RESOLVE_NO_MAGICLINKS)?;
    for name in names {
        ignore_exists(mkdirat(Some(dir.as_raw_fd()), *name, mode))?;
        dir = open_beneath(Some(&dir), Path::new(name), strict)?;
    }
    Ok(dir)
}

// The path of an open directory, for mount(2).
fn by_fd(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

// A directory opened O_PATH at `path` beneath `base` (absolute `path` when
// `base` is None), resolved as `resolve` says.
fn open_beneath(base: Option<&OwnedFd>, path: &Path, resolve: ResolveFlag) -> nix::Result<OwnedFd> {
    open_path_beneath(base, path, resolve, PointKind::Directory)
}

// A directory or file opened O_PATH, as `open_beneath`.
fn open_path_beneath(
    base: Option<&OwnedFd>,
    path: &Path,
    resolve: ResolveFlag,
    kind: PointKind,
) -> nix::Result<OwnedFd> {
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if kind == PointKind::Directory {
        flags |= OFlag::O_DIRECTORY;
    } else {
        flags |= OFlag::O_NOFOLLOW;
    }
    let how = OpenHow::new().flags(flags).resolve(resolve);
    let dirfd = base.map_or(libc::AT_FDCWD, |fd| fd.as_fd().as_raw_fd());
    let fd = openat2(dirfd, path, how)?;
    // SAFETY: openat2 just returned this descriptor, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ignore_exists(result: nix::Result<()>) -> nix::Result<()> {
    match result {
        Err(nix::Error::EEXIST) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_cannot_name_other_paths() {
        for good in ["web", "a1", "pod_1.app-2", &"x".repeat(76)] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "-x",
            "a b",
            &"x".repeat(77),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_guest_sees_root_file_systems_under_its_share_mount() {
        assert_eq!(
            Share::guest_rootfs("web"),
            format!("{GUEST_SHARE_DIR}/web/rootfs")
        );
    }

    #[test]
    fn mount_points_are_opened_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let strict = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS;
        let base = open_beneath(None, dir.path(), ResolveFlag::empty()).unwrap();
        assert!(open_beneath(Some(&base), Path::new("real"), strict).is_ok());
        assert_eq!(
            open_beneath(Some(&base), Path::new("link"), strict).err(),
            Some(nix::Error::ELOOP)
        );
        assert_eq!(
            open_beneath(Some(&base), Path::new("../"), strict).err(),
            Some(nix::Error::EXDEV)
        );
    }

    #[test]
    #[ignore = "needs root for mounts: runs in make kvm-test"]
    fn the_guest_sees_the_shims_mounts_read_only_around_them() {
        let dir = tempfile::tempdir().unwrap();
        let share = Share::create(dir.path(), 4).unwrap();
        let exposed = share.exposed();
        // The view is read-only; the host-only side is the shim's.
        let refused = std::fs::write(exposed.join("planted"), "x").unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EROFS));
        // A root file system mounted after the share exists shows through.
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::write(rootfs.path().join("hello"), "from the image").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let guest = runtime
            .block_on(share.mount_rootfs("web", &[], rootfs.path(), true))
            .unwrap();
        assert_eq!(guest, GuestRootfs::writable(Share::guest_rootfs("web")));
        let seen = exposed.join("web/rootfs/hello");
        assert_eq!(std::fs::read_to_string(&seen).unwrap(), "from the image");
        // Writable inside the container's file system, nosuid and nodev.
        std::fs::write(exposed.join("web/rootfs/new"), "x").unwrap();
        let flags = nix::sys::statvfs::statvfs(&seen).unwrap().flags();
        use nix::sys::statvfs::FsFlags;
        assert!(
            flags.contains(FsFlags::ST_NOSUID | FsFlags::ST_NODEV),
            "{flags:?}"
        );
        // The cap.
        let total = nix::sys::statvfs::statvfs(&exposed).unwrap();
        assert!(total.blocks() * total.fragment_size() <= 4 << 20);

        // Volumes: a read-only directory and a file, live.
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("config"), "v1").unwrap();
        let hosts = data.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let volume = |index, source: &Path, readonly| HostVolume {
            index,
            source: source.to_path_buf(),
            readonly,
            recursive: true,
        };
        share
            .mount_volume("web", &volume(0, data.path(), true))
            .unwrap();
        share
            .mount_volume("web", &volume(1, &hosts, false))
            .unwrap();
        let seen = exposed.join("web/volumes/0");
        assert_eq!(std::fs::read_to_string(seen.join("config")).unwrap(), "v1");
        std::fs::write(data.path().join("config"), "v2").unwrap();
        assert_eq!(std::fs::read_to_string(seen.join("config")).unwrap(), "v2");
        let refused = std::fs::write(seen.join("config"), "x").unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EROFS));
        std::fs::write(exposed.join("web/volumes/1"), "10.0.0.1 web\n").unwrap();
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "10.0.0.1 web\n");
        let flags = nix::sys::statvfs::statvfs(&exposed.join("web/volumes/1"))
            .unwrap()
            .flags();
        assert!(
            flags.contains(FsFlags::ST_NOSUID | FsFlags::ST_NODEV),
            "{flags:?}"
        );
        // Only directories and files.
        let error = share
            .mount_volume("web", &volume(2, Path::new("/dev/null"), false))
            .unwrap_err();
        assert!(error.to_string().contains("only directories"), "{error}");

        // An overlay with an upper directory, when the guest keeps the
        // writable layer: its layers alone, read-only, on the images share,
        // under a name the next mount does not reuse.
        let layers = tempfile::tempdir().unwrap();
        for layer in ["lower", "upper", "work"] {
            std::fs::create_dir(layers.path().join(layer)).unwrap();
        }
        std::fs::write(layers.path().join("lower/image"), "lower").unwrap();
        std::fs::write(layers.path().join("upper/written"), "upper").unwrap();
        let option = |layer: &str| format!("{layer}dir={}", layers.path().join(layer).display());
        let overlay = Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![option("lower"), option("upper"), option("work")],
            ..Default::default()
        };
        let mount_image = || {
            runtime
                .block_on(share.mount_rootfs(
                    "web",
                    std::slice::from_ref(&overlay),
                    rootfs.path(),
                    true,
                ))
                .unwrap()
        };
        let (first, second) = (mount_image(), mount_image());
        assert!(first.writable_layer_on_scratch_disk);
        assert_ne!(first.path, second.path);
        let name = first
            .path
            .strip_prefix(&format!("{GUEST_IMAGES_DIR}/"))
            .unwrap();
        let image = share.exposed_images().join(name);
        assert_eq!(
            std::fs::read_to_string(image.join("image")).unwrap(),
            "lower"
        );
        assert_eq!(
            std::fs::read_to_string(image.join("written")).unwrap(),
            "upper"
        );
        let refused = std::fs::write(image.join("new"), "x").unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EROFS));

        share.unmount_container("web");
        assert!(!exposed.join("web").exists());
        assert_eq!(
            std::fs::read_dir(share.exposed_images()).unwrap().count(),
            0
        );
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "10.0.0.1 web\n");
        Share::unmount_all(dir.path());
        assert!(!crate::sandbox::has_mounts_under(dir.path()));
    }
}
