//! cocoon-vmm against QEMU `-M microvm -enable-kvm`, same kernel and
//! initramfs: launch → guest /init (the agent's banner on the console),
//! median of N interleaved runs each; and cocoon-vmm's resident memory
//! outside guest RAM with an idle guest. Then, from the same inputs, a
//! restore from a template against a fresh boot (`vmm_restore.rs`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cocoon_tests::{build_output, busybox_initramfs};
use cocoon_vmm_command::{Console, VmmCommand};

use crate::summary::Summary;
use crate::{median_ms, on_local_storage};

const GUEST_MEMORY_MIB: u64 = 256;

pub fn measure(vmm: &Path, runs: usize, summary: &mut Summary) {
    // Both VMMs read their inputs from local storage, as on a real node:
    // the checkout is a 9p share in the KVM host VM and would be re-read at
    // every launch of cocoon-vmm (QEMU comes from the cached root).
    let local = tempfile::tempdir().expect("temporary directory");
    let vmm = on_local_storage(local.path(), vmm);
    let kernel = on_local_storage(local.path(), &build_output("vmlinux"));
    let initramfs = on_local_storage(local.path(), &build_output("initramfs.img"));
    let banner = cocoon_protocol::version_banner(env!("CARGO_PKG_VERSION"));

    let mut cocoon = Vec::new();
    let mut qemu = Vec::new();
    for _ in 0..runs {
        cocoon.push(time_to_banner(
            cocoon_command(&vmm, &kernel, &initramfs),
            &banner,
        ));
        qemu.push(time_to_banner(qemu_command(&kernel, &initramfs), &banner));
    }
    let cocoon_ms = median_ms(&mut cocoon);
    let qemu_ms = median_ms(&mut qemu);
    let overhead_kib = idle_overhead_kib(&vmm, &kernel);

    println!(
        "launch → guest /init, median of {runs} (same kernel + initramfs, {GUEST_MEMORY_MIB} MiB, 1 vCPU, inputs on tmpfs):"
    );
    println!("  cocoon-vmm             {cocoon_ms:8.1} ms");
    println!("  qemu -M microvm        {qemu_ms:8.1} ms");
    println!(
        "  ratio cocoon/qemu      {:8.2}   (target ≤ 0.60)",
        cocoon_ms / qemu_ms
    );
    println!("cocoon-vmm resident memory outside guest RAM, idle guest:");
    println!(
        "  {:.2} MiB   (target ≤ 5 MiB)",
        overhead_kib as f64 / 1024.0
    );
    summary.compare(
        "launch → guest /init (vs QEMU microvm)",
        cocoon_ms,
        qemu_ms,
        "ms",
        "≤ 0.60",
    );
    summary.value(
        "cocoon-vmm RSS outside guest RAM",
        format!("{:.2} MiB", overhead_kib as f64 / 1024.0),
        "≤ 5 MiB",
    );
    // The same local inputs: restore → agent ready against a fresh boot.
    crate::vmm_restore::measure(&vmm, &kernel, &initramfs, runs, summary);
}

/// `--restore-trace` (`vmm_restore::trace`) from the same local inputs.
pub fn trace_restore(vmm: &Path) {
    let local = tempfile::tempdir().expect("temporary directory");
    let vmm = on_local_storage(local.path(), vmm);
    let kernel = on_local_storage(local.path(), &build_output("vmlinux"));
    let initramfs = on_local_storage(local.path(), &build_output("initramfs.img"));
    crate::vmm_restore::trace(&vmm, &kernel, &initramfs);
}

fn cocoon_command(vmm: &Path, kernel: &Path, initramfs: &Path) -> Command {
    VmmCommand::new(kernel)
        .initrd(initramfs)
        .memory_mib(GUEST_MEMORY_MIB)
        .kernel_arg("quiet")
        .console(Console::Stdout)
        .command(vmm)
}

fn qemu_command(kernel: &Path, initramfs: &Path) -> Command {
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-enable-kvm", "-M", "microvm", "-cpu", "host", "-smp", "1"])
        .args(["-m", &GUEST_MEMORY_MIB.to_string()])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 reboot=t panic=-1 quiet"])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
        ]);
    command
}

/// Wall time from spawn until `banner` appears on the guest console (stdout).
/// The VM is stopped as soon as the banner is seen: the agent would go on
/// serving its API forever.
fn time_to_banner(mut command: Command, banner: &str) -> Duration {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("VMM starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut seen = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.contains(banner) {
            seen = Some(started.elapsed());
            break;
        }
    }
    let _ = child.kill();
    reap(&mut child);
    seen.unwrap_or_else(|| {
        panic!(
            "{:?} never showed the agent's banner",
            command.get_program()
        )
    })
}

fn reap(child: &mut Child) {
    if let Err(error) = cocoon_tests::wait_or_kill(child, Duration::from_secs(60)) {
        panic!("VMM did not exit: {error}");
    }
}

/// Boots a guest that idles, then sums the VMM's resident memory except the
/// guest RAM mapping (the one anonymous mapping as large as guest memory).
fn idle_overhead_kib(vmm: &Path, kernel: &Path) -> u64 {
    let dir = tempfile::tempdir().expect("temporary directory");
    let initramfs = busybox_initramfs(dir.path(), "echo IDLE-READY\nexec sleep 3600");
    let mut child = cocoon_command(vmm, kernel, &initramfs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cocoon-vmm starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    assert!(
        lines.any(|line| line.map(|l| l.contains("IDLE-READY")).unwrap_or(false)),
        "idle guest never came up"
    );
    std::thread::sleep(Duration::from_millis(500)); // let the guest settle into idle
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id())).expect("read smaps");
    let _ = child.kill();
    let _ = child.wait();
    outside_guest_ram_kib(&smaps, GUEST_MEMORY_MIB * 1024)
}

/// Sum of `Rss:` over all mappings but the guest RAM one(s) of `guest_kib`.
fn outside_guest_ram_kib(smaps: &str, guest_kib: u64) -> u64 {
    let mut total = 0;
    let mut current_size = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("Size:") => current_size = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("Rss:") if current_size != guest_kib => {
                total += fields
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            }
            _ => {}
        }
    }
    total
}
