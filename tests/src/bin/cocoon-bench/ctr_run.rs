//! One private containerd runs the same image with Cocoon and with runc:
//! `ctr run --rm IMAGE ID /bin/true`, median of N interleaved runs each
//! (after one warm-up each); then the memory of idle Cocoon sandboxes:
//! each one's shim plus its VMM, guest pages the guest touched included.

use std::time::{Duration, Instant};

use cocoon_tests::containerd::{ok, Containerd, RUNTIME};
use cocoon_tests::{build_output, release_dir};

use crate::{median_ms, on_local_storage};

const RUNC: &str = "io.containerd.runc.v2";

pub fn measure(runs: usize) {
    // Shim, VMM, kernel and initramfs from local storage, as runc is.
    let local = tempfile::tempdir().expect("temporary directory");
    let bin = local.path().join("bin");
    std::fs::create_dir(&bin).expect("bin directory");
    for binary in ["containerd-shim-cocoon-v1", "cocoon-vmm"] {
        on_local_storage(&bin, &release_dir().join(binary));
    }
    let kernel = on_local_storage(local.path(), &build_output("vmlinux"));
    let initramfs = on_local_storage(local.path(), &build_output("initramfs.img"));
    let containerd = Containerd::start_from(&bin, &kernel, &initramfs);
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

    let idle = idle_sandboxes(&containerd, IDLE_SANDBOXES);
    println!(
        "memory of an idle sandbox (`sleep`; shim + VMM, guest pages touched included), {IDLE_SANDBOXES} running:"
    );
    println!(
        "  proportional (Pss)   shim {:.1} MiB + cocoon-vmm {:.1} MiB = {:.1} MiB   (goal ≤ 32 MiB)",
        mib(idle.shim.pss),
        mib(idle.vmm.pss),
        mib(idle.shim.pss + idle.vmm.pss)
    );
    println!(
        "  resident (Rss)       shim {:.1} MiB + cocoon-vmm {:.1} MiB = {:.1} MiB   (binaries' pages counted whole)",
        mib(idle.shim.rss),
        mib(idle.vmm.rss),
        mib(idle.shim.rss + idle.vmm.rss)
    );
}

const TRUE: &str = "/bin/true";
const MISSING: &str = "/no/such/command";
const FAILURES: usize = 3;

/// Idle sandboxes measured together: the shims and VMMs of one host share
/// their binaries' pages, which Pss divides among them and Rss counts whole
/// in each (what Kata's density metrics call the footprint per pod is Pss).
const IDLE_SANDBOXES: usize = 3;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

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

#[derive(Default, Clone, Copy)]
struct Memory {
    rss: u64,
    pss: u64,
}

struct IdleSandbox {
    shim: Memory,
    vmm: Memory,
}

/// Starts `count` detached `sleep`s, lets their sandboxes settle, reads the
/// memory of their shims and VMMs (the mean of each), and removes them.
fn idle_sandboxes(containerd: &Containerd, count: usize) -> IdleSandbox {
    let ids: Vec<String> = (0..count).map(|i| format!("idle{i}")).collect();
    let mut vmm_pids = Vec::new();
    for id in &ids {
        ok(
            containerd.run(RUNTIME, &["-d"], id, &["sleep", "3600"]),
            "ctr run -d",
        );
        let pid_file = containerd
            .cocoon_state
            .join("default")
            .join(id)
            .join("vmm.pid");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or_else(|| panic!("no VMM pid in {}", pid_file.display()));
        vmm_pids.push(pid);
    }
    // Idle means settled: a guest reports the pages it freed a couple of
    // seconds after freeing them. Sample until every VMM holds still.
    let total_rss = || vmm_pids.iter().map(|&pid| memory(pid).rss).sum::<u64>();
    let mut rss = total_rss();
    let mut still = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while still < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = total_rss();
        still = if now.abs_diff(rss) <= 64 {
            still + 1
        } else {
            0
        };
        rss = now;
    }
    let mut shim = Memory::default();
    let mut vmm = Memory::default();
    for &pid in &vmm_pids {
        for (sum, one) in [
            (&mut shim, memory(parent_pid(pid))),
            (&mut vmm, memory(pid)),
        ] {
            sum.rss += one.rss;
            sum.pss += one.pss;
        }
    }
    let mean = |sum: Memory| Memory {
        rss: sum.rss / count as u64,
        pss: sum.pss / count as u64,
    };

    for id in &ids {
        containerd.kill_and_delete(id);
    }
    IdleSandbox {
        shim: mean(shim),
        vmm: mean(vmm),
    }
}

fn parent_pid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    number_after(&status, "PPid:") as u32
}

/// `Rss` and `Pss` of a process's smaps_rollup, in KiB.
fn memory(pid: u32) -> Memory {
    let rollup =
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    Memory {
        rss: number_after(&rollup, "Rss:"),
        pss: number_after(&rollup, "Pss:"),
    }
}

/// The number after `name` on its line.
fn number_after(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}
