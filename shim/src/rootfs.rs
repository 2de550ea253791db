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

/// containerd's root file system as the image alone, when it is one
/// overlay with an upper directory (the overlayfs snapshotter's active
/// snapshot): an overlay of the upper directory (empty, unless something
/// was put there before the container ran) over the lower ones, with no
/// upper of its own, so read-only. The container's writes then go to the
/// guest's scratch disk, never to `upperdir`. `None` for anything else (a
/// bind mount, an overlay without an upper, several mounts), which the
/// container writes in through the share as before.
pub fn image_layers(mounts: &[Mount]) -> Option<Mount> {
    let [overlay] = mounts else {
        return None;
    };
    if overlay.type_ != "overlay" {
        return None;
    }
    let option = |name: &str| {
        overlay
            .options
            .iter()
            .find_map(|o| o.strip_prefix(name)?.strip_prefix('='))
    };
    let upper = option("upperdir")?;
    let lower = option("lowerdir")?;
    // Options that only make sense with an upper directory are dropped;
    // what concerns how the layers are read (index, xino, userxattr) stays.
    let kept = overlay.options.iter().filter(|o| {
        ![
            "upperdir=",
            "workdir=",
            "lowerdir=",
            "volatile",
            "redirect_dir=",
            "metacopy=",
        ]
        .iter()
        .any(|dropped| o.starts_with(dropped))
            && *o != "rw"
    });
    let mut image = overlay.clone();
    image.options = std::iter::once(format!("lowerdir={upper}:{lower}"))
        .chain(kept.cloned())
        .chain(std::iter::once("ro".to_string()))
        .collect();
    Some(image)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(options: &[&str]) -> Mount {
        let mut mount = Mount::new();
        mount.type_ = "overlay".into();
        mount.source = "overlay".into();
        mount.options = options.iter().map(|o| o.to_string()).collect();
        mount
    }

    #[test]
    fn an_active_overlay_snapshot_becomes_its_layers_read_only() {
        let image = image_layers(&[overlay(&[
            "index=off",
            "workdir=/s/9/work",
            "upperdir=/s/9/fs",
            "lowerdir=/s/8/fs:/s/7/fs",
        ])])
        .expect("an overlay with an upper");
        assert_eq!(image.type_, "overlay");
        assert_eq!(
            image.options,
            ["lowerdir=/s/9/fs:/s/8/fs:/s/7/fs", "index=off", "ro"]
        );
    }

    #[test]
    fn anything_else_stays_as_containerd_gave_it() {
        // A view (no upper), a bind (one-layer images, the native snapshotter),
        // several mounts, nothing.
        assert!(image_layers(&[overlay(&["lowerdir=/a:/b"])]).is_none());
        let mut bind = overlay(&["rbind", "rw"]);
        bind.type_ = "bind".into();
        assert!(image_layers(&[bind]).is_none());
        let layered = overlay(&["upperdir=/u", "workdir=/w", "lowerdir=/l"]);
        assert!(image_layers(&[layered.clone(), layered]).is_none());
        assert!(image_layers(&[]).is_none());
    }
}
