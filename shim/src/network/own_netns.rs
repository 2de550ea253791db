//! A network namespace the shim makes for a sandbox whose spec asks for a
//! new one (a network entry without a path) and has hooks to wire it
//! (nerdctl's CNI hook). runc would make it with the container; a VM has
//! no container process on the host, so the namespace is kept by a bind
//! mount in the sandbox's state directory, named to the hooks in their
//! state, and scanned after them like any pod namespace. Removed with the
//! sandbox's state (the veth CNI put in it goes with it).

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::NetworkError;

/// Where a sandbox's own namespace is kept, in its state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("netns")
}

/// Makes a new network namespace and binds it at [`path`] of `state_dir`.
pub fn create(state_dir: &Path) -> Result<PathBuf, NetworkError> {
    let target = path(state_dir);
    let failed = |step: &str, error: std::io::Error| NetworkError::Netns {
        path: format!("{} ({step})", target.display()),
        source: error,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
        .map_err(|e| failed("creating the mount point", e))?;
    let bind_target = target.clone();
    // unshare(2) moves only the calling thread: a thread of its own, which
    // binds its new namespace and ends.
    let made = std::thread::Builder::new()
        .name("cocoon-netns-new".into())
        .spawn(move || -> std::io::Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &bind_target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .map_err(|e| failed("starting its thread", e))?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("its thread panicked")));
    if let Err(error) = made {
        let _ = std::fs::remove_file(&target);
        return Err(failed("unshare and bind", error));
    }
    Ok(target)
}

/// Unbinds and removes the namespace of `state_dir`, if there is one.
pub fn remove(state_dir: &Path) {
    let target = path(state_dir);
    if !target.exists() {
        return;
    }
    match nix::mount::umount2(&target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(error) => tracing::warn!("unmounting {}: {error}", target.display()),
    }
    if let Err(error) = std::fs::remove_file(&target) {
        tracing::warn!("removing {}: {error}", target.display());
    }
}
