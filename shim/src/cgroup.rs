//! The cgroup a sandbox's VMM is charged to: the one containerd gives the
//! sandbox's first container (`linux.cgroupsPath`), so that the VM's memory
//! and CPU count against the pod (or container) as runc's processes would.
//!
//! Both forms containerd writes are understood: a cgroupfs path
//! (`/default/web`, `/kubepods/besteffort/pod<uid>/<id>`) and the systemd
//! driver's `slice:prefix:name` (`kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`
//! is `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`).
//! Directories are made directly in the cgroup v2 tree (as runc's cgroupfs
//! driver does); the shim removes the leaf when the sandbox ends.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Where cgroup v2 is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Controllers enabled for the cgroups the shim creates, where available.
const CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("linux.cgroupsPath {0:?} is not a cgroup path (no '..', no empty slice)")]
    BadPath(String),
    #[error("creating the sandbox's cgroup {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The cgroup (relative to the cgroup root) that `cgroups_path` names, in
/// either of containerd's forms; `None` for an empty one.
pub fn relative_path(cgroups_path: &str) -> Result<Option<PathBuf>, CgroupError> {
    let bad = || CgroupError::BadPath(cgroups_path.into());
    if cgroups_path.is_empty() {
        return Ok(None);
    }
    let path = match cgroups_path.split(':').collect::<Vec<_>>()[..] {
        [slice, prefix, name] => systemd_path(slice, prefix, name).ok_or_else(bad)?,
        [_] => PathBuf::from(cgroups_path.trim_start_matches('/')),
        _ => return Err(bad()),
    };
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || path.as_os_str().is_empty() {
        return Err(bad());
    }
    Ok(Some(path))
}

// systemd's slice expansion: "a-b-c.slice" lives in a.slice/a-b.slice/.
fn systemd_path(slice: &str, prefix: &str, name: &str) -> Option<PathBuf> {
    let mut path = PathBuf::new();
    if !slice.is_empty() && slice != "-.slice" {
        let stem = slice.strip_suffix(".slice")?;
        if stem.is_empty() || stem.split('-').any(str::is_empty) {
            return None;
        }
        let parts: Vec<&str> = stem.split('-').collect();
        for end in 1..=parts.len() {
            path.push(format!("{}.slice", parts[..end].join("-")));
        }
    }
    if name.is_empty() {
        return None;
    }
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    Some(path)
}

/// Creates `relative` under `root`, enabling the usual controllers in each
/// parent on the way, and returns the cgroup the VMM joins, which the shim
/// created and removes. A cgroup that already exists belongs to someone else
/// (`ctr run --config` with the default spec names `/default` itself, a
/// parent of others, which no process may join): the VMM then gets a leaf of
/// its own in it, `cocoon-<sandbox>`. Controllers are best effort: a parent
/// that cannot delegate one (it has processes of its own) only means that
/// controller is not accounted.
pub fn create(root: &Path, relative: &Path, sandbox: &str) -> Result<PathBuf, CgroupError> {
    let mut path = root.to_path_buf();
    let mut created = false;
    for component in relative.components() {
        enable_controllers(&path);
        path.push(component);
        created = make_dir(&path)?;
    }
    if !created {
        enable_controllers(&path);
        path.push(format!("cocoon-{sandbox}"));
        make_dir(&path)?;
    }
    Ok(path)
}

// Whether `path` was made now (false: it was there).
fn make_dir(path: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Create {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn enable_controllers(parent: &Path) {
    let available = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    let enabled =
        std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    let wanted: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return;
    }
    if let Err(error) = std::fs::write(parent.join("cgroup.subtree_control"), wanted.join(" ")) {
        tracing::debug!(
            "enabling {wanted:?} in {}: {error} (not accounted there)",
            parent.display()
        );
    }
}

/// How long a VMM that was killed may take to leave its cgroup: a process
/// is in it until its memory is torn down, hundreds of MiB of guest RAM.
const EXIT_PATIENCE: Duration = Duration::from_secs(10);

/// Removes the sandbox's cgroup once its VMM is gone, waiting (at most
/// [`EXIT_PATIENCE`]) while a dying VMM still populates it.
pub fn remove(path: &Path) {
    let deadline = Instant::now() + EXIT_PATIENCE;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
            Err(error)
                if error.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => {
                tracing::warn!("removing the cgroup {}: {error}", path.display());
                return;
            }
        }
    }
}

/// Whether the unified cgroup v2 hierarchy is mounted at [`CGROUP_ROOT`].
pub fn is_cgroup_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(path: &str) -> Option<String> {
        relative_path(path)
            .unwrap()
            .map(|p| p.display().to_string())
    }

    #[test]
    fn cgroupfs_paths_are_taken_as_they_are() {
        assert_eq!(rel("/default/web").as_deref(), Some("default/web"));
        assert_eq!(
            rel("/kubepods/besteffort/pod1/abc").as_deref(),
            Some("kubepods/besteffort/pod1/abc")
        );
        assert_eq!(rel(""), None);
    }

    #[test]
    fn systemd_paths_are_expanded_as_systemd_does() {
        assert_eq!(
            rel("kubepods-besteffort-pod1.slice:cri-containerd:abc").as_deref(),
            Some(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/\
                 cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            rel("system.slice:docker:abc").as_deref(),
            Some("system.slice/docker-abc.scope")
        );
        assert_eq!(rel(":cri:abc").as_deref(), Some("cri-abc.scope"));
    }

    #[test]
    fn paths_that_leave_the_tree_are_refused() {
        for bad in ["/../etc", "/a/../../b", "a-.slice:p:n", "x.slice:p:", "a:b"] {
            assert!(relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_makes_every_level() {
        let root = tempfile::tempdir().unwrap();
        let made = create(root.path(), Path::new("default/web"), "web").unwrap();
        assert!(made.is_dir());
        assert_eq!(made, root.path().join("default/web"));
        remove(&made);
        assert!(!made.exists());
        // An existing cgroup (here `default`) is someone else's: the VMM gets
        // a leaf of its own in it, and only that leaf is removed.
        let leaf = create(root.path(), Path::new("default"), "web").unwrap();
        assert_eq!(leaf, root.path().join("default/cocoon-web"));
        remove(&leaf);
        assert!(!leaf.exists() && root.path().join("default").is_dir());
    }
}
