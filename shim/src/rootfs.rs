//! A container's root file system: the mounts containerd's snapshotter hands
//! over in Create (usually one overlay), or else the directory the spec's
//! `root.path` names (relative to the bundle, as runc reads it: `ctr run
//! --rootfs`, `ctr run --config`), mounted where the share says
//! ([`crate::share::Share::mount_rootfs`]).

use std::path::Path;

use containerd_shim::protos::api::Mount;
use nix::mount::{mount, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("creating {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting the root file system ({kind} from {source_path}): {message}")]
    Mount {
        kind: String,
        source_path: String,
        message: String,
    },
    #[error(
        "the container has no root file system: no mounts were given and {0} (root.path) \
         is not a directory"
    )]
    Missing(String),
    #[error("container id {0:?} is not a valid id (letters, digits, '.', '_', '-')")]
    BadId(String),
}

/// Mounts the container's root file system at `target`: `mounts`, or else
/// the directory `root` (the spec's `root.path` in the bundle).
pub async fn mount_rootfs(mounts: &[Mount], root: &Path, target: &Path) -> Result<(), RootfsError> {
    if mounts.is_empty() {
        if !root.is_dir() {
            return Err(RootfsError::Missing(root.display().to_string()));
        }
        return mount(
            Some(root),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| RootfsError::Mount {
            kind: "bind".into(),
            source_path: root.display().to_string(),
            message: e.to_string(),
        });
    }
    for m in mounts {
        containerd_shim::asynchronous::util::mount_rootfs(m, target)
            .await
            .map_err(|e| RootfsError::Mount {
                kind: m.type_.clone(),
                source_path: m.source.clone(),
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// Makes the mount at `target` nosuid and nodev (keeping read-only and
/// noexec as they were; read-only also if `readonly`): the guest writes in
/// it, and a setuid binary or a device node it made must give no host user
/// anything. A bind mount ignores these flags when made, hence a remount,
/// which works for every type.
pub fn harden(target: &Path, readonly: bool) -> Result<(), RootfsError> {
    let failed = |message: String| RootfsError::Mount {
        kind: "remount nosuid,nodev".into(),
        source_path: target.display().to_string(),
        message,
    };
    let current = statvfs(target).map_err(|e| failed(e.to_string()))?.flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    for (kept, flag) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(kept) {
            flags |= flag;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(|e| failed(e.to_string()))
}
