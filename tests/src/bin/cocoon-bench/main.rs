//! `make bench`: Cocoon's speed and memory, measured side by side with the
//! reference in the same (host) machine, reported as ratios.
//!
//! Run inside tests/kvm-host (it needs real KVM):
//!   cocoon-bench [--vmm PATH] [--runs N] [--launch-only | --ctr-only | --pods-only | --http-only | --rootfs-only [--rootfs-share] | --pod-memory-only] [--http-mib N]
//!
//! - cocoon-vmm against QEMU microvm: launch → guest /init, and the VMM's
//!   memory outside guest RAM (`vmm_launch.rs`); a restore from a template
//!   against a fresh boot, until the agent answers (`vmm_restore.rs`);
//! - `ctr run --rm` with Cocoon from a template, Cocoon booting and runc,
//!   through private containerds, and the memory of idle Cocoon sandboxes
//!   from templates and booted (`ctr_run.rs`);
//! - Kubernetes pods through one private CRI node (`cocoon_tests::cri`),
//!   handler cocoon against runc: pod start (`pod_start.rs`), an idle pod's
//!   memory (`pod_memory.rs`), HTTP download from a pod (`pod_http.rs`);
//! - file work in a container's root file system, Cocoon against runc
//!   (`rootfs_io.rs`).
//!
//! Ends with a table of every figure (`summary.rs`).

mod ctr_run;
mod kvm_stats;
mod memory;
mod pod_http;
mod pod_memory;
mod pod_start;
mod rootfs_io;
mod summary;
mod vmm_launch;
mod vmm_restore;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cocoon_tests::containerd::Version;
use cocoon_tests::cri::Cri;
use cocoon_tests::{build_output, release_dir, require_hardware_kvm};

use summary::Summary;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let flag = |flag: &str| args.iter().any(|a| a == flag);
    let vmm = value("--vmm").map_or_else(|| release_dir().join("cocoon-vmm"), PathBuf::from);
    let runs: usize = value("--runs").and_then(|v| v.parse().ok()).unwrap_or(7);
    let http_mib: u64 = value("--http-mib")
        .and_then(|v| v.parse().ok())
        .unwrap_or(pod_http::FILE_MIB);
    require_hardware_kvm();
    if flag("--restore-trace") {
        vmm_launch::trace_restore(&vmm);
        return;
    }

    let mut summary = Summary::new();
    let pods_only = flag("--pods-only") || flag("--http-only") || flag("--pod-memory-only");
    let ctr_only = flag("--ctr-only");
    if flag("--rootfs-only") {
        // --rootfs-share adds Cocoon without the scratch disk (the state
        // before it); over 11 minutes a run under emulation.
        rootfs_io::measure(
            &LocalRuntime::new(&vmm),
            runs.min(3),
            flag("--rootfs-share"),
            &mut summary,
        );
        summary.print();
        return;
    }
    if !pods_only && !ctr_only {
        vmm_launch::measure(&vmm, runs, &mut summary);
    }
    if ctr_only {
        let runtime = LocalRuntime::new(&vmm);
        ctr_run::measure(&runtime, runs.min(5), &mut summary);
    } else if !flag("--launch-only") {
        let runtime = LocalRuntime::new(&vmm);
        if !pods_only {
            ctr_run::measure(&runtime, runs.min(5), &mut summary);
            // Without the share variant: one run of it takes 11 minutes.
            rootfs_io::measure(&runtime, runs.min(3), false, &mut summary);
        }
        let cri = Cri::start_from(
            Version::V1_6,
            &runtime.bin,
            &runtime.kernel,
            &runtime.initramfs,
        );
        if flag("--pod-memory-only") {
            pod_memory::measure(&cri, &mut summary);
            summary.print();
            return;
        }
        if !flag("--http-only") {
            pod_start::measure(&cri, runs.min(pod_start::MAX_RUNS), &mut summary);
            pod_memory::measure(&cri, &mut summary);
        }
        println!(
            "cocoon pod sandboxes started from a template so far: {}",
            cri.containerd.sandboxes_from_templates()
        );
        pod_http::measure(&cri, http_mib, &mut summary);
    }
    summary.print();
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

/// The cocoon runtime (shim, cocoon-vmm, kernel and initramfs) copied to
/// local storage, as runc is on the host VM's root file system.
pub struct LocalRuntime {
    _dir: tempfile::TempDir,
    /// The shim and cocoon-vmm.
    pub bin: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

impl LocalRuntime {
    fn new(vmm: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin directory");
        on_local_storage(&bin, &release_dir().join("containerd-shim-cocoon-v1"));
        std::fs::copy(vmm, bin.join("cocoon-vmm")).expect("copy cocoon-vmm to local storage");
        let kernel = on_local_storage(dir.path(), &build_output("vmlinux"));
        let initramfs = on_local_storage(dir.path(), &build_output("initramfs.img"));
        LocalRuntime {
            _dir: dir,
            bin,
            kernel,
            initramfs,
        }
    }
}
