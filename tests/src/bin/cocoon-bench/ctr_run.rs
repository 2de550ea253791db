//! One private containerd runs the same image with Cocoon and with runc:
//! `ctr run --rm IMAGE ID /bin/true`, median of N interleaved runs each
//! (after one warm-up each); then the memory of idle Cocoon sandboxes:
//! each one's shim plus its VMM, guest pages the guest touched included.

use std::time::{Duration, Instant};

use cocoon_tests::containerd::{ok, Containerd, Version, RUNTIME};

use crate::memory;
use crate::summary::Summary;
use crate::{median_ms, LocalRuntime};

const RUNC: &str = "io.containerd.runc.v2";

pub fn measure(runtime: &LocalRuntime, runs: usize, summary: &mut Summary) {
    let containerd = Containerd::start_from(
        Version::V1_6,
        &runtime.bin,
        &runtime.kernel,
        &runtime.initramfs,
    );
    containerd.import_busybox();

    let mut cocoon = Vec::new();
    let mut runc = Vec::new();
    // Run 0 warms up: the first run of an image unpacks it.
    for run in 0..=runs {
        let cocoon_time = time_ctr_run(&containerd, RUNTIME, &format!("cocoon{run}"), TRUE);
        let runc_time = time_ctr_run(&containerd, RUNC, &format!("runc{run}"), TRUE);
        if run > 0 {
            cocoon.push(cocoon_time);
            runc.push(runc_time);
        }
    }
    let cocoon_ms = median_ms(&mut cocoon);
    let runc_ms = median_ms(&mut runc);
    println!(
        "ctr run --rm IMAGE ID /bin/true, median of {runs} (one private containerd, native snapshotter):"
    );
    println!("  cocoon                 {cocoon_ms:8.1} ms");
    println!("  runc                   {runc_ms:8.1} ms");
    println!(
        "  ratio cocoon/runc      {:8.2}   (goal ≤ 1.5)",
        cocoon_ms / runc_ms
    );
    summary.compare(
        "ctr run --rm /bin/true (vs runc)",
        cocoon_ms,
        runc_ms,
        "ms",
        "≤ 1.5",
    );

    // How fast a user hears that the command is missing, against runc's own
    // failure in the same machine (under emulation neither is fast).
    let mut cocoon = Vec::new();
    let mut runc = Vec::new();
    for run in 0..FAILURES {
        cocoon.push(time_ctr_run(
            &containerd,
            RUNTIME,
            &format!("cocoon-missing{run}"),
            MISSING,
        ));
        runc.push(time_ctr_run(
            &containerd,
            RUNC,
            &format!("runc-missing{run}"),
            MISSING,
        ));
    }
    let cocoon_ms = median_ms(&mut cocoon);
    let runc_ms = median_ms(&mut runc);
    println!(
        "ctr run --rm IMAGE ID {MISSING} until it fails with \"not found\", median of {FAILURES}:"
    );
    println!("  cocoon                 {cocoon_ms:8.1} ms");
    println!("  runc                   {runc_ms:8.1} ms");
    println!("  ratio cocoon/runc      {:8.2}", cocoon_ms / runc_ms);
    summary.compare(
        "ctr run --rm of a missing command (vs runc)",
        cocoon_ms,
        runc_ms,
        "ms",
        "-",
    );

    let idle = idle_sandboxes(&containerd, IDLE_SANDBOXES);
    println!(
        "memory of an idle sandbox (`sleep`; shim + VMM, guest pages touched included), {IDLE_SANDBOXES} running:"
    );
    idle.print("goal ≤ 32 MiB");
    summary.value(
        "idle ctr sandbox, shim + VMM Pss (Rss)",
        idle.summary_text(),
        "Pss ≤ 32 MiB",
    );
}

const TRUE: &str = "/bin/true";
const MISSING: &str = "/no/such/command";
const FAILURES: usize = 3;

/// Idle sandboxes measured together: the shims and VMMs of one host share
/// their binaries' pages, which Pss divides among them and Rss counts whole
/// in each (what Kata's density metrics call the footprint per pod is Pss).
const IDLE_SANDBOXES: usize = 3;

/// Times `ctr run --rm` of `command`, which must succeed, or for MISSING
/// fail saying so.
fn time_ctr_run(containerd: &Containerd, runtime: &str, id: &str, command: &str) -> Duration {
    let started = Instant::now();
    let out = containerd.run(runtime, &["--rm"], id, &[command]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    let as_expected = if command == MISSING {
        !out.status.success() && (stderr.contains("not found") || stderr.contains("no such file"))
    } else {
        out.status.success()
    };
    assert!(
        as_expected,
        "ctr run --runtime {runtime}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        containerd.log()
    );
    elapsed
}

/// Starts `count` detached `sleep`s, lets their sandboxes settle, reads the
/// memory of their shims and VMMs (the mean of each), and removes them.
fn idle_sandboxes(containerd: &Containerd, count: usize) -> memory::SandboxMemory {
    let ids: Vec<String> = (0..count).map(|i| format!("idle{i}")).collect();
    let mut vmm_pids = Vec::new();
    for id in &ids {
        ok(
            containerd.run(RUNTIME, &["-d"], id, &["sleep", "3600"]),
            "ctr run -d",
        );
        vmm_pids.push(containerd.vmm_pid("default", id));
    }
    let idle = memory::idle_sandboxes(&vmm_pids);
    for id in &ids {
        containerd.kill_and_delete(id);
    }
    idle
}
