//! A directory of files for one fuzzing process (a share, a disk, a canary
//! beside them), removed when the process exits (not after a crash).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What the canary file beside a target's files holds.
pub const CANARY: &[u8] = b"the guest must never change this file";

static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// The process's directory, made on the first call (`cocoon-fuzz-NAME-*`
/// in the temporary directory); later calls return the same one.
pub fn scratch_root(name: &str) -> &'static Path {
    ROOT.get_or_init(|| {
        let root = tempfile::Builder::new()
            .prefix(&format!("cocoon-fuzz-{name}-"))
            .tempdir()
            .expect("temp dir")
            .keep();
        // libFuzzer ends with exit(), which never drops statics.
        // SAFETY: remove_root is an extern "C" fn that stays valid for the
        // whole life of the process.
        if unsafe { libc::atexit(remove_root) } != 0 {
            eprintln!("{name}: {} will be left behind", root.display());
        }
        root
    })
}

/// Writes the canary file `canary` in `root`; returns its path.
pub fn write_canary(root: &Path) -> PathBuf {
    let canary = root.join("canary");
    std::fs::write(&canary, CANARY).expect("canary");
    canary
}

extern "C" fn remove_root() {
    if let Some(root) = ROOT.get() {
        let _ = std::fs::remove_dir_all(root);
    }
}
