//! `make bench`: Cocoon's speed and memory, measured side by side with the
//! reference in the same (host) machine, reported as ratios.
//!
//! Run inside tests/kvm-host (it needs real KVM):
//!   cocoon-bench [--vmm PATH] [--runs N] [--launch-only]
//!
//! - cocoon-vmm against QEMU microvm: launch → guest /init, and the VMM's
//!   memory outside guest RAM (`vmm_launch.rs`);
//! - `ctr run --rm` with Cocoon against runc through one private containerd,
//!   and the memory of an idle Cocoon sandbox (`ctr_run.rs`).

mod ctr_run;
mod vmm_launch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cocoon_tests::{release_dir, require_hardware_kvm};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let vmm = value("--vmm").map_or_else(|| release_dir().join("cocoon-vmm"), PathBuf::from);
    let runs: usize = value("--runs").and_then(|v| v.parse().ok()).unwrap_or(7);
    require_hardware_kvm();

    vmm_launch::measure(&vmm, runs);
    if !args.iter().any(|a| a == "--launch-only") {
        ctr_run::measure(runs.min(5));
    }
}

pub fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

/// A copy of `path` in `dir` (a tmpfs): inputs on the host VM's 9p share
/// would be re-read at every launch.
pub fn on_local_storage(dir: &Path, path: &Path) -> PathBuf {
    let target = dir.join(path.file_name().expect("a file"));
    std::fs::copy(path, &target).expect("copy to local storage");
    target
}
