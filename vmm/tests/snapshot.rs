//! Snapshots under real KVM: a template boot saves itself at the snapshot
//! point, VMs started from the snapshot go on where it stopped (console,
//! vsock, a clean exit), and a snapshot that does not fit the VM or was
//! written by another VMM binary is refused with a clear error.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cocoon_tests::pattern::{expected_reply, send_to_guest};
use cocoon_tests::{
    build_output, busybox_initramfs_with, guest_probe, require_hardware_kvm, run_vmm, tail,
    wait_for_text, wait_or_kill,
};
use cocoon_vmm_command::{Console, VmmCommand};

const VMM: &str = env!("CARGO_BIN_EXE_cocoon-vmm");
const GUEST_PORT: u32 = 5000;
const BYTES: u64 = 4 << 20;
const MEMORY_MIB: u64 = 256;
const VCPUS: u32 = 2;

// The guest: everything before the snapshot point runs once, in the
// template boot; everything after it runs in each VM started from it.
const SCRIPT: &str = "echo TEMPLATE-BOOTED\n\
     probe snapshot-point\n\
     echo RESTORED uptime $(cut -d' ' -f1 /proc/uptime)\n\
     probe listen 5000 1\n\
     reboot -f";

// The devices of every VM here: the template boot's and its restores' must match.
fn vm(kernel: &Path) -> VmmCommand {
    VmmCommand::new(kernel)
        .memory_mib(MEMORY_MIB)
        .vcpus(VCPUS)
        .balloon(true)
}

fn restore(vmm: &Path, snapshot: &Path, uds: &Path, console: &Path) -> Child {
    vm(Path::new("/nonexistent"))
        .vsock(uds)
        .restore_from(snapshot)
        .console(Console::File(console.to_path_buf()))
        .command(vmm)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cocoon-vmm starts")
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
    }
    text
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn vms_start_from_a_template_snapshot_and_go_on_where_it_stopped() {
    require_hardware_kvm();
    let scratch = tempfile::tempdir().unwrap();
    let initrd = busybox_initramfs_with(scratch.path(), SCRIPT, &[(&guest_probe(), "/bin/probe")]);
    let kernel = build_output("vmlinux");
    let snapshot = scratch.path().join("template");
    std::fs::create_dir(&snapshot).unwrap();

    // The template boot: saved at the snapshot point, then the VMM exits.
    let template_uds = scratch.path().join("template.sock");
    let saved = run_vmm(
        Path::new(VMM),
        vm(&kernel)
            .initrd(&initrd)
            .vsock(&template_uds)
            .snapshot_to(&snapshot),
        Duration::from_secs(180),
    );
    saved.assert_success();
    assert!(
        saved.console.contains("TEMPLATE-BOOTED"),
        "{}",
        tail(&saved.console, 20)
    );
    assert!(
        !saved.console.contains("RESTORED"),
        "the template ran past its snapshot point"
    );
    let memory = std::fs::metadata(snapshot.join("memory")).unwrap();
    assert_eq!(memory.len(), MEMORY_MIB << 20);
    // Sparse: only the pages the guest wrote take space.
    assert!(
        memory.blocks() * 512 < memory.len() / 2,
        "memory file allocates {} of {} bytes",
        memory.blocks() * 512,
        memory.len()
    );
    eprintln!(
        "template boot and save: {:?}; memory file: {} MiB allocated of {MEMORY_MIB}",
        saved.elapsed,
        (memory.blocks() * 512) >> 20
    );

    // Two VMs from the one snapshot, at once; each goes on after the snapshot
    // point with its own vsock socket and console.
    let started = Instant::now();
    let runs: Vec<(Child, PathBuf, PathBuf)> = ["a", "b"]
        .iter()
        .map(|name| {
            let uds = scratch.path().join(format!("{name}.sock"));
            let console = scratch.path().join(format!("{name}.log"));
            (
                restore(Path::new(VMM), &snapshot, &uds, &console),
                uds,
                console,
            )
        })
        .collect();
    for (mut child, uds, console) in runs {
        if let Err(error) = wait_for_text(&console, "PROBE-READY", Duration::from_secs(120)) {
            let _ = child.kill();
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            panic!(
                "restored VM: {error}\nstderr:\n{}\nconsole:\n{}",
                stderr_of(&mut child),
                tail(&text, 30)
            );
        }
        eprintln!("restored VM ready {:?} after start", started.elapsed());
        assert_eq!(
            send_to_guest(&uds, GUEST_PORT, BYTES),
            expected_reply(BYTES),
            "data over vsock into a restored VM"
        );
        let status = wait_or_kill(&mut child, Duration::from_secs(120));
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "restored VM: {status:?}\nstderr:\n{}\nconsole:\n{}",
            stderr_of(&mut child),
            tail(&text, 30)
        );
        assert!(text.contains("RESTORED uptime"), "{}", tail(&text, 20));
        assert!(
            !text.contains("TEMPLATE-BOOTED"),
            "a restored VM booted again"
        );
    }

    // A VM of another size is refused, quickly and clearly.
    let bigger = run_vmm(
        Path::new(VMM),
        vm(Path::new("/nonexistent"))
            .memory_mib(MEMORY_MIB * 2)
            .vsock(scratch.path().join("c.sock"))
            .restore_from(&snapshot),
        Duration::from_secs(30),
    );
    assert!(!matches!(bigger.status, Ok(s) if s.success()));
    assert!(
        bigger.stderr.contains("does not fit") && bigger.stderr.contains("MiB"),
        "{}",
        bigger.stderr
    );

    // So is a snapshot another VMM binary wrote (here: a copy of ours).
    let other_vmm = scratch.path().join("cocoon-vmm-copy");
    std::fs::copy(VMM, &other_vmm).unwrap();
    let other = run_vmm(
        &other_vmm,
        vm(Path::new("/nonexistent"))
            .vsock(scratch.path().join("d.sock"))
            .restore_from(&snapshot),
        Duration::from_secs(30),
    );
    assert!(!matches!(other.status, Ok(s) if s.success()));
    assert!(other.stderr.contains("saved by"), "{}", other.stderr);
}
