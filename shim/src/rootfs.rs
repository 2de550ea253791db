//! A container's root file system in the sandbox share: the mounts
//! containerd's snapshotter hands over in Create (usually one overlay), or
//! else the directory the spec's `root.path` names (relative to the bundle,
//! as runc reads it: `ctr run --rootfs`, `ctr run --config`), mounted at
//! `share/<id>/rootfs`.

use std::path::{Path, PathBuf};

use containerd_shim::protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

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
}

/// Where container `id`'s root file system goes in the share.
pub fn target(share: &Path, id: &str) -> PathBuf {
    share.join(id).join("rootfs")
}

/// Mounts the container's root file system at `target`: `mounts`, or else
/// the directory `root` (the spec's `root.path` in the bundle).
pub async fn mount_rootfs(mounts: &[Mount], root: &Path, target: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(target).map_err(|source| RootfsError::Create {
        path: target.display().to_string(),
        source,
    })?;
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

/// Unmounts everything at and under the container's directory in the share
/// and removes it.
pub fn unmount_rootfs(share: &Path, id: &str) {
    let dir = share.join(id);
    let rootfs = target(share, id);
    // Stacked mounts (several layers of the same target) come off one by one.
    while umount2(&rootfs, MntFlags::MNT_DETACH).is_ok() {}
    if crate::sandbox::has_mounts_under(&dir) {
        tracing::error!(
            "{} still has mounts under it; leaving it in place",
            dir.display()
        );
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
}
