//! Joining the sandbox's cgroup (`--cgroup DIR`).
//!
//! The VMM moves itself (every thread: it writes cgroup.procs) into the
//! cgroup v2 directory it is given, first thing, before guest memory is
//! allocated: cgroup v2 charges memory to the cgroup a page was first
//! touched in and never moves charges, so guest RAM, the file server's
//! kernel objects and the vCPUs' CPU time are all the pod's or container's.

use std::path::Path;

use super::JailError;

/// Moves this process into the cgroup v2 directory `dir`.
pub fn join(dir: &Path) -> Result<(), JailError> {
    // "0" means the writing process.
    std::fs::write(dir.join("cgroup.procs"), "0").map_err(|source| JailError::Cgroup {
        dir: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_cgroup_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-cgroup");
        let message = join(&missing).unwrap_err().to_string();
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );
    }
}
