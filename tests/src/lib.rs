//! Helpers shared by Cocoon's end-to-end tests.
//!
//! Tests that need KVM are `#[ignore = "needs real KVM: ..."]`, so a plain
//! `cargo test` reports them as skipped and why; `make kvm-test` runs them with
//! `--ignored` inside tests/kvm-host, where [`require_hardware_kvm`] holds. Run
//! anywhere else, they fail loudly instead of passing vacuously.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use wait_timeout::ChildExt;

/// The project checkout.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where `make` puts the guest kernel and initramfs.
pub fn guest_dir() -> PathBuf {
    repo_root().join("build/guest")
}

/// A build output the test depends on, or a panic that says how to make it.
pub fn build_output(name: &str) -> PathBuf {
    let path = guest_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make` first",
        path.display()
    );
    path
}

/// Panics unless this machine has hardware KVM (`kvm_amd` or `kvm_intel`).
/// Our machines' own /dev/kvm is kvm_pvm, which cannot boot our guests.
pub fn require_hardware_kvm() {
    let hardware = ["kvm_amd", "kvm_intel"]
        .iter()
        .any(|module| Path::new("/sys/module").join(module).is_dir());
    assert!(
        hardware && Path::new("/dev/kvm").exists(),
        "this test needs hardware KVM (kvm_amd or kvm_intel) and /dev/kvm: run it through \
         tests/kvm-host, as `make kvm-test` does"
    );
}

/// Waits for `child` at most `limit`; kills it (and says so) when it overran.
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Result<ExitStatus, String> {
    match child.wait_timeout(limit) {
        Ok(Some(status)) => Ok(status),
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("still running after {limit:?}; killed"))
        }
        Err(error) => Err(format!("waiting failed: {error}")),
    }
}

/// The last `lines` lines of `text`, for failure messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
