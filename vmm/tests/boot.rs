//! cocoon-vmm boots real Linux guests under real KVM (these tests run inside
//! tests/kvm-host): our kernel in both formats, a foreign busybox initramfs,
//! the requested vCPUs and memory, and a clear failure when the guest panics.

use std::path::Path;
use std::time::Duration;

use cocoon_tests::{
    build_output, busybox_initramfs, require_hardware_kvm, run_vmm, wait_for_text, wait_or_kill,
    VmmRun,
};
use cocoon_vmm_command::{Console, VmmCommand};

const VMM: &str = env!("CARGO_BIN_EXE_cocoon-vmm");
const BOOT_LIMIT: Duration = Duration::from_secs(120);

fn boot(kernel: &Path, initrd: &Path) -> VmmCommand {
    VmmCommand::new(kernel).initrd(initrd)
}

fn run(command: VmmCommand) -> VmmRun {
    run_vmm(Path::new(VMM), command, BOOT_LIMIT)
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn vmlinux_and_bzimage_boot_a_foreign_initramfs() {
    require_hardware_kvm();
    let dir = tempfile::tempdir().unwrap();
    let initrd = busybox_initramfs(dir.path(), "echo MARKER-$((6 * 7))\nreboot -f");
    for kernel in ["vmlinux", "bzImage"] {
        let run = run(boot(&build_output(kernel), &initrd));
        run.assert_success();
        assert!(
            run.console.contains("MARKER-42"),
            "{kernel}: marker missing; console:\n{}",
            run.console
        );
        eprintln!("{kernel}: launch to VMM exit {:?}", run.elapsed);
    }
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn guest_sees_the_requested_vcpus_memory_and_entropy() {
    require_hardware_kvm();
    let dir = tempfile::tempdir().unwrap();
    let script = "echo CPUS=$(grep -c ^processor /proc/cpuinfo)\n\
                  echo MEMKB=$(awk '/^MemTotal/ {print $2}' /proc/meminfo)\n\
                  echo RNG=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)\n\
                  echo ENTROPY=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \\n')\n\
                  echo FLAGS=$(grep -m1 ^flags /proc/cpuinfo | cut -d: -f2)\n\
                  reboot -f";
    let initrd = busybox_initramfs(dir.path(), script);
    let run = run(boot(&build_output("vmlinux"), &initrd)
        .vcpus(2)
        .memory_mib(512));
    run.assert_success();
    let value = |key: &str| {
        run.console
            .lines()
            .find_map(|line| line.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} line; console:\n{}", run.console))
            .trim()
            .to_string()
    };
    assert_eq!(value("CPUS="), "2");
    let mem_kib: u64 = value("MEMKB=").parse().expect("MemTotal in kB");
    // MemTotal is RAM minus what the kernel keeps for itself (code, tables).
    assert!(
        (480 * 1024..=512 * 1024).contains(&mem_kib),
        "MemTotal {mem_kib} kB for a 512 MiB guest"
    );
    assert!(
        value("RNG=").starts_with("virtio_rng"),
        "hw_random backend: {}",
        value("RNG=")
    );
    let entropy = value("ENTROPY=");
    assert_eq!(entropy.len(), 64, "32 bytes from /dev/hwrng: {entropy}");
    assert_ne!(entropy, "0".repeat(64));
    let flags: Vec<String> = value("FLAGS=")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for hidden in ["vmx", "svm", "perfctr_core", "pdcm"] {
        assert!(
            !flags.iter().any(|f| f == hidden),
            "the guest sees {hidden}: {flags:?}"
        );
    }
    assert!(flags.iter().any(|f| f == "hypervisor"), "{flags:?}");
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_panicking_guest_fails_the_vmm_with_the_console_tail() {
    require_hardware_kvm();
    let dir = tempfile::tempdir().unwrap();
    // /init exiting makes the kernel panic ("Attempted to kill init!").
    let initrd = busybox_initramfs(dir.path(), "echo about to exit init\nexit 3");
    let run = run(boot(&build_output("vmlinux"), &initrd));
    let status = run.status.as_ref().expect("the VMM exits by itself");
    assert!(
        !status.success(),
        "a guest panic must fail the VMM; stderr:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("panicked"),
        "stderr names the panic:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Attempted to kill init"),
        "stderr shows the console tail:\n{}",
        run.stderr
    );
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn our_guest_reaches_the_agent_and_stops_on_sigterm() {
    require_hardware_kvm();
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let launched = std::time::Instant::now();
    let mut vmm = boot(&build_output("vmlinux"), &build_output("initramfs.img"))
        .kernel_arg("quiet")
        .shutdown_timeout_seconds(30)
        .console(Console::File(console.clone()))
        .command(Path::new(VMM))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cocoon-vmm starts");
    let banner = cocoon_protocol::version_banner(env!("CARGO_PKG_VERSION"));
    let seen = wait_for_text(&console, &banner, BOOT_LIMIT);
    let booted = launched.elapsed();
    // SIGTERM: the VMM asks the agent (on its console) to shut down, and
    // the agent ends the VM well before the 30 s forced stop.
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(vmm.id() as libc::pid_t, libc::SIGTERM) };
    let stopping = std::time::Instant::now();
    let status = wait_or_kill(&mut vmm, Duration::from_secs(20));
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    seen.unwrap_or_else(|e| panic!("{e}"));
    let status =
        status.unwrap_or_else(|e| panic!("cocoon-vmm after SIGTERM: {e}; console:\n{text}"));
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut vmm.stderr.take().unwrap(), &mut stderr);
    assert!(status.success(), "cocoon-vmm exited {status}: {stderr}");
    assert!(
        !stderr.contains("did not shut down"),
        "the guest ignored the request: {stderr}"
    );
    let reached = text
        .lines()
        .find(|l| l.contains("reached /init"))
        .unwrap_or("");
    eprintln!(
        "cocoon-vmm: launch to banner {booted:?}; SIGTERM to exit {:?}; {reached}",
        stopping.elapsed()
    );
}
