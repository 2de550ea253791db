//! The pod's guest-local file systems: tmpfs the pod's containers share,
//! made on first use.
//!
//! The shim points a bind mount at `GUEST_POD_DIR/<name>` for what must live
//! in guest memory rather than come from the host: the pod's `/dev/shm`
//! (shared memory cannot cross virtio-fs) and memory-backed emptyDir
//! volumes. Before a container is created, every such source in its spec is
//! made a tmpfs if it is not one yet; later containers of the pod find it
//! and share it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cocoon_protocol::{GUEST_POD_DIR, POD_EMPTY_DIRS, POD_SHM};
use nix::mount::{mount, MsFlags};
use serde_json::Value;

use crate::error::{AgentError, Result};

/// containerd's own /dev/shm for a pod: 64 MiB.
const SHM_OPTIONS: &str = "mode=1777,size=65536k";
/// kubelet makes emptyDir volumes world-writable; their size is the pod's
/// memory.
const EMPTY_DIR_OPTIONS: &str = "mode=0777";

/// Makes every pod tmpfs the spec's mounts name.
pub fn prepare(spec_json: &[u8]) -> Result<()> {
    let spec: Value = serde_json::from_slice(spec_json)
        .map_err(|e| AgentError::InvalidArgument(format!("invalid OCI spec: {e}")))?;
    let sources = spec["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|mount| mount["source"].as_str());
    for source in sources {
        if let Some(name) = source
            .strip_prefix(GUEST_POD_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
        {
            ensure(name)?;
        }
    }
    Ok(())
}

/// The pod tmpfs `name` (checked), mounted unless it already is.
fn ensure(name: &str) -> Result<()> {
    let options = options_for(name).ok_or_else(|| {
        AgentError::InvalidArgument(format!(
            "{GUEST_POD_DIR}/{name} is not a pod file system (\"{POD_SHM}\" or \
             \"{POD_EMPTY_DIRS}/<volume>\")"
        ))
    })?;
    let target = PathBuf::from(GUEST_POD_DIR).join(name);
    std::fs::create_dir_all(&target)
        .map_err(|e| AgentError::internal(&format!("creating {}", target.display()), e))?;
    if is_mount_point(&target)? {
        return Ok(());
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some("pod"), &target, Some("tmpfs"), flags, Some(options))
        .map_err(|e| AgentError::internal(&format!("mounting tmpfs on {}", target.display()), e))
}

/// The tmpfs options of a valid pod file system name.
fn options_for(name: &str) -> Option<&'static str> {
    if name == POD_SHM {
        return Some(SHM_OPTIONS);
    }
    let volume = name.strip_prefix(POD_EMPTY_DIRS)?.strip_prefix('/')?;
    let valid = !volume.is_empty()
        && volume.len() <= 253
        && !volume.starts_with('.')
        && volume
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'));
    valid.then_some(EMPTY_DIR_OPTIONS)
}

fn is_mount_point(path: &Path) -> Result<bool> {
    let device = |path: &Path| {
        std::fs::metadata(path)
            .map(|m| m.dev())
            .map_err(|e| AgentError::internal(&format!("looking at {}", path.display()), e))
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    Ok(device(path)? != device(parent)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pods_shm_and_empty_dirs_are_pod_file_systems() {
        assert_eq!(options_for("shm"), Some(SHM_OPTIONS));
        assert_eq!(options_for("empty-dir/cache"), Some(EMPTY_DIR_OPTIONS));
        for bad in [
            "",
            "etc",
            "empty-dir",
            "empty-dir/",
            "empty-dir/../../etc",
            "empty-dir/a/b",
            "empty-dir/.x",
            "empty-dir/UPPER",
            "shm/x",
        ] {
            assert_eq!(options_for(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn specs_without_pod_sources_need_nothing() {
        let spec = br#"{"mounts":[{"destination":"/x","type":"bind","source":"/run/cocoon/share/c/volumes/0"}]}"#;
        assert!(prepare(spec).is_ok());
        assert!(prepare(b"{}").is_ok());
    }

    #[test]
    fn a_bad_pod_source_is_refused_before_anything_is_made() {
        let spec = br#"{"mounts":[{"destination":"/x","type":"bind","source":"/run/cocoon/pod/../../etc"}]}"#;
        let error = prepare(spec).unwrap_err();
        assert!(
            error.to_string().contains("not a pod file system"),
            "{error}"
        );
    }
}
