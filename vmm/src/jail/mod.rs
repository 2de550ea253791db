//! The jail cocoon-vmm runs in (`--jail DIR`, `--cgroup DIR`).
//!
//! A VMM serves a guest that may be hostile, as root. Before the guest runs
//! it gives up what it does not need:
//!
//! 1. [`cgroup::join`]: into the sandbox's cgroup, before guest memory is
//!    allocated, so the VM's memory and CPU are charged there.
//! 2. [`Jail::prepare`] (single-threaded): a private mount namespace (every
//!    mount a slave: the host's later mounts under a share still arrive,
//!    nothing goes back), a proc of its own with process directories only,
//!    a small tmpfs on DIR, each share bound into it.
//! 3. The VM is built ([`crate::vm::Vm::new`]) with the shares named at
//!    their place in the jail: everything opened by host path (kernel,
//!    initramfs, /dev/kvm, console file, vsock socket, /proc/self/fd of the
//!    file server) is opened now.
//! 4. [`Jail::enter`] (still single-threaded): pivot_root into DIR, the old
//!    root detached, the new one read-only; a bounded open-file limit; not
//!    dumpable; no new privileges; every capability but the file server's
//!    dropped.
//!    Capabilities and no_new_privs are per thread: every thread of the VMM
//!    is started after this and inherits them.
//!
//! One concept per file: [`mount_namespace`] (namespace, binds, pivot),
//! [`capabilities`] (what is kept and why), [`limits`] (open files),
//! [`cgroup`]. docs/security/jail.md says what this defends and what not.

pub mod capabilities;
pub mod cgroup;
pub mod limits;
pub mod mount_namespace;

use std::io;
use std::path::{Path, PathBuf};

/// Why the jail could not be set up. Each message names the step and the
/// path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// unshare(CLONE_NEWNS) would move only the calling thread, and
    /// capabilities are per thread: both must happen before any thread starts.
    #[error("the jail must be set up while cocoon-vmm has a single thread; it has {0}")]
    Threads(usize),
    #[error("{step}: {source}")]
    Step {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("{step}: {source}")]
    Capabilities {
        step: String,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("after dropping capabilities the effective set is {found:#x}, expected {expected:#x}")]
    CapabilitiesLeft { found: u64, expected: u64 },
    #[error("cannot move cocoon-vmm into cgroup {}: {source}", .dir.display())]
    Cgroup {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl JailError {
    pub(crate) fn step(step: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
        let step = step.into();
        move |source| JailError::Step { step, source }
    }
}

/// A jail whose mount namespace is ready but which the VMM has not entered.
#[derive(Debug)]
pub struct Jail {
    /// The jail directory, canonical; the tmpfs root of the jail is mounted on it.
    root: PathBuf,
    /// Where each share is, in the same order as given to [`Jail::prepare`].
    shares: Vec<PathBuf>,
}

impl Jail {
    /// Step 2: a private mount namespace with a tmpfs on `dir` holding a bind
    /// of each of `shares`. Must run while the process has one thread.
    pub fn prepare(dir: &Path, shares: &[PathBuf]) -> Result<Self, JailError> {
        require_single_thread()?;
        let (root, shares) = mount_namespace::prepare(dir, shares)?;
        Ok(Jail { root, shares })
    }

    /// The shares as the VMM must name them: paths that lead to the jail's
    /// binds both now and after [`Jail::enter`] (the file server names its
    /// root again when the guest resets the device).
    pub fn shares(&self) -> &[PathBuf] {
        &self.shares
    }

    /// Step 4: pivot_root into the jail, then limits, no_new_privs and
    /// capabilities. Must run before any thread is started. `memory_mib`
    /// sizes the open-file limit ([`limits::open_file_limit`]).
    pub fn enter(self, memory_mib: u64) -> Result<(), JailError> {
        require_single_thread()?;
        mount_namespace::enter(&self.root)?;
        limits::bound_open_files(limits::open_file_limit(memory_mib))?;
        capabilities::set_not_dumpable()?;
        capabilities::set_no_new_privs()?;
        capabilities::drop_all_but_kept()?;
        tracing::debug!(root = %self.root.display(), "jailed");
        Ok(())
    }
}

/// Fails unless this process has exactly one thread (from /proc, which is
/// still the host's while this is asked).
fn require_single_thread() -> Result<(), JailError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(JailError::step("counting the threads in /proc/self/task"))?
        .count();
    if threads == 1 {
        Ok(())
    } else {
        Err(JailError::Threads(threads))
    }
}
