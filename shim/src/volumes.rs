//! A container's bind mounts, redirected into the guest.
//!
//! A bind mount in a container's spec names a host path (a Kubernetes
//! volume, the pod's /etc/hosts, `ctr run --mount`), which the guest cannot
//! see. Each one is mounted into the sandbox's share instead, at
//! `mounts/<id>/volumes/<n>` ([`crate::share::Share::mount_volume`]), and the
//! spec the agent gets names the guest's view of it. Two kinds stay in the
//! guest instead, as tmpfs the pod's containers share
//! ([`cocoon_protocol::GUEST_POD_DIR`]): the pod's `/dev/shm` (containerd's
//! per-sandbox shm directory) and memory-backed emptyDir volumes. Guest
//! memory is what they are made of either way, and shared memory could not
//! cross virtio-fs.
//!
//! Planning reads the spec only; what it asks of the host (is a path
//! memory-backed) goes through [`HostPaths`], so the rules are unit-tested.

use std::path::{Path, PathBuf};

use cocoon_protocol::{GUEST_POD_DIR, GUEST_SHARE_DIR, POD_EMPTY_DIRS, POD_SHM};
use serde_json::Value;

/// The annotation containerd's CRI puts on every container of a pod.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// The directory kubelet keeps a pod's emptyDir volumes in.
const KUBELET_EMPTY_DIRS: &str = "kubernetes.io~empty-dir";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("mount {index} ({destination}): {reason}")]
    Refused {
        index: usize,
        destination: String,
        reason: String,
    },
    #[error("invalid OCI spec: \"mounts\" must be a list of objects")]
    NotAList,
}

/// A host path the shim mounts into the share for the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostVolume {
    /// Mounted at `mounts/<id>/volumes/<index>`.
    pub index: usize,
    pub source: PathBuf,
    pub readonly: bool,
    /// `rbind`: the mounts under the source come along.
    pub recursive: bool,
}

/// What the host can tell about a bind mount's source.
pub trait HostPaths {
    /// Whether the path is a tmpfs or ramfs (memory, not a disk).
    fn is_memory_backed(&self, path: &Path) -> bool;
}

/// The real host.
pub struct Host;

impl HostPaths for Host {
    fn is_memory_backed(&self, path: &Path) -> bool {
        use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
        // linux/magic.h
        const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
        statfs(path).is_ok_and(|fs| [TMPFS_MAGIC, RAMFS_MAGIC].contains(&fs.filesystem_type()))
    }
}

/// The container's bind mounts sorted out: what the shim mounts, and the
/// spec the guest gets.
#[derive(Debug)]
pub struct VolumePlan {
    pub host: Vec<HostVolume>,
    /// The spec with every bind source a guest path.
    pub guest_spec: Value,
}

impl VolumePlan {
    pub fn for_spec(id: &str, spec: &Value, host: &impl HostPaths) -> Result<Self, VolumeError> {
        let mut guest_spec = spec.clone();
        let mut planned = Vec::new();
        let sandbox_id = spec["annotations"][SANDBOX_ID_ANNOTATION].as_str();
        if let Some(mounts) = guest_spec.get_mut("mounts") {
            let mounts = mounts.as_array_mut().ok_or(VolumeError::NotAList)?;
            for (index, mount) in mounts.iter_mut().enumerate() {
                let mount = mount.as_object_mut().ok_or(VolumeError::NotAList)?;
                let options: Vec<&str> = mount
                    .get("options")
                    .and_then(Value::as_array)
                    .map(|options| options.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let is_bind = mount.get("type").and_then(Value::as_str) == Some("bind")
                    || options.iter().any(|o| matches!(*o, "bind" | "rbind"));
                if !is_bind {
                    continue;
                }
                let destination = mount
                    .get("destination")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let refuse = |reason: String| VolumeError::Refused {
                    index,
                    destination: destination.clone(),
                    reason,
                };
                let source = mount
                    .get("source")
                    .and_then(Value::as_str)
                    .map(PathBuf::from)
                    .ok_or_else(|| refuse("a bind mount needs a source".into()))?;
                if !source.is_absolute() {
                    return Err(refuse(format!(
                        "the source {} must be an absolute host path",
                        source.display()
                    )));
                }
                let guest_source = match pod_tmpfs(&destination, &source, sandbox_id, host) {
                    Some(name) => format!("{GUEST_POD_DIR}/{name}"),
                    None => {
                        planned.push(HostVolume {
                            index,
                            source,
                            readonly: is_readonly(&options),
                            recursive: options.contains(&"rbind"),
                        });
                        guest_volume(id, index)
                    }
                };
                mount.insert("source".into(), Value::String(guest_source));
            }
        }
        Ok(VolumePlan {
            host: planned,
            guest_spec,
        })
    }
}

/// Where the guest sees volume `index` of container `id`.
pub fn guest_volume(id: &str, index: usize) -> String {
    format!("{GUEST_SHARE_DIR}/{id}/volumes/{index}")
}

/// The last of `ro` / `rw` wins, as in mount(8); read-write by default.
fn is_readonly(options: &[&str]) -> bool {
    options
        .iter()
        .rev()
        .find_map(|option| match *option {
            "ro" => Some(true),
            "rw" => Some(false),
            _ => None,
        })
        .unwrap_or(false)
}

fn parent_name(path: &Path) -> Option<&str> {
    path.parent()?.file_name()?.to_str()
}

/// The name under [`GUEST_POD_DIR`] of the guest tmpfs that replaces this
/// bind mount, if it is one the pod keeps in guest memory.
fn pod_tmpfs(
    destination: &str,
    source: &Path,
    sandbox_id: Option<&str>,
    host: &impl HostPaths,
) -> Option<String> {
    // containerd's CRI: <state>/io.containerd.grpc.v1.cri/sandboxes/<sandbox id>/shm.
    if destination == "/dev/shm"
        && source.file_name().is_some_and(|name| name == "shm")
        && sandbox_id.is_some_and(|id| parent_name(source) == Some(id))
    {
        return Some(POD_SHM.into());
    }
    // kubelet: <pod dir>/volumes/kubernetes.io~empty-dir/<volume>, a tmpfs
    // when the volume's medium is Memory.
    let volume = source.file_name()?.to_str()?;
    let valid_name = !volume.is_empty()
        && volume.len() <= 253
        && volume
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
        && !volume.starts_with('.');
    if parent_name(source) == Some(KUBELET_EMPTY_DIRS)
        && valid_name
        && host.is_memory_backed(source)
    {
        return Some(format!("{POD_EMPTY_DIRS}/{volume}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct FakeHost(Vec<&'static str>);

    impl HostPaths for FakeHost {
        fn is_memory_backed(&self, path: &Path) -> bool {
            self.0.iter().any(|memory| Path::new(memory) == path)
        }
    }

    fn plan(spec: Value, memory: Vec<&'static str>) -> VolumePlan {
        VolumePlan::for_spec("app", &spec, &FakeHost(memory)).unwrap()
    }

    const SHM: &str = "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/pod1/shm";
    const EMPTY_DIR: &str = "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache";

    fn cri_spec() -> Value {
        json!({
            "annotations": { "io.kubernetes.cri.sandbox-id": "pod1" },
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/etc/hosts", "type": "bind",
                  "source": "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/pod1/hosts",
                  "options": ["rbind", "rprivate", "rw"] },
                { "destination": "/dev/shm", "type": "bind", "source": SHM,
                  "options": ["rbind", "rprivate", "rw"] },
                { "destination": "/data", "source": "/srv/data",
                  "options": ["rbind", "rprivate", "ro"] },
                { "destination": "/cache", "type": "bind", "source": EMPTY_DIR,
                  "options": ["rbind"] },
            ]
        })
    }

    #[test]
    fn bind_mounts_go_through_the_share_and_others_stay() {
        let plan = plan(cri_spec(), vec![]);
        let mounts = &plan.guest_spec["mounts"];
        assert_eq!(mounts[0]["source"], "proc");
        assert_eq!(mounts[1]["source"], guest_volume("app", 1));
        assert_eq!(mounts[3]["source"], guest_volume("app", 3));
        assert_eq!(mounts[3]["options"], json!(["rbind", "rprivate", "ro"]));
        assert_eq!(
            plan.host[0],
            HostVolume {
                index: 1,
                source: "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/pod1/hosts".into(),
                readonly: false,
                recursive: true,
            }
        );
        assert!(plan.host[1].readonly && plan.host[1].source == Path::new("/srv/data"));
    }

    #[test]
    fn the_pods_shm_and_memory_empty_dirs_are_guest_tmpfs() {
        let plan = plan(cri_spec(), vec![EMPTY_DIR]);
        let mounts = &plan.guest_spec["mounts"];
        assert_eq!(mounts[2]["source"], format!("{GUEST_POD_DIR}/shm"));
        assert_eq!(
            mounts[4]["source"],
            format!("{GUEST_POD_DIR}/empty-dir/cache")
        );
        let sources: Vec<_> = plan.host.iter().map(|v| v.index).collect();
        assert_eq!(sources, [1, 3]);
    }

    #[test]
    fn a_disk_backed_empty_dir_is_shared_from_the_host() {
        let plan = plan(cri_spec(), vec![]);
        assert_eq!(
            plan.guest_spec["mounts"][4]["source"],
            guest_volume("app", 4)
        );
    }

    #[test]
    fn shm_of_another_pod_or_elsewhere_is_an_ordinary_volume() {
        let mut spec = cri_spec();
        spec["annotations"]["io.kubernetes.cri.sandbox-id"] = json!("pod2");
        let plan = plan(spec, vec![]);
        assert_eq!(
            plan.guest_spec["mounts"][2]["source"],
            guest_volume("app", 2)
        );
        let mut spec = cri_spec();
        spec["mounts"][2]["destination"] = json!("/mnt/shm");
        let plan = self::plan(spec, vec![]);
        assert_eq!(
            plan.guest_spec["mounts"][2]["source"],
            guest_volume("app", 2)
        );
    }

    #[test]
    fn the_last_of_ro_and_rw_wins() {
        assert!(is_readonly(&["rw", "ro"]));
        assert!(!is_readonly(&["ro", "rw"]));
        assert!(!is_readonly(&["rbind"]));
    }

    #[test]
    fn relative_sources_and_odd_mount_lists_are_refused() {
        let spec = json!({ "mounts": [{ "destination": "/x", "type": "bind", "source": "rel" }] });
        let error = VolumePlan::for_spec("app", &spec, &FakeHost(vec![])).unwrap_err();
        assert!(error.to_string().contains("absolute host path"), "{error}");
        let spec = json!({ "mounts": { "destination": "/x" } });
        assert!(VolumePlan::for_spec("app", &spec, &FakeHost(vec![])).is_err());
    }

    #[test]
    fn a_spec_without_mounts_is_unchanged() {
        let spec = json!({ "process": { "args": ["true"] } });
        let plan = plan(spec.clone(), vec![]);
        assert_eq!(plan.guest_spec, spec);
        assert!(plan.host.is_empty());
    }
}
