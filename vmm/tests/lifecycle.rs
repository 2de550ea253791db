//! SIGTERM asks the guest to shut down (through its console input) and stops
//! the VM anyway when the guest does not within --shutdown-timeout.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cocoon_tests::{
    build_output, busybox_initramfs, require_hardware_kvm, tail, wait_for_text, wait_or_kill,
};
use cocoon_vmm_command::{Console, VmmCommand};

const VMM: &str = env!("CARGO_BIN_EXE_cocoon-vmm");

/// Boots a guest running `script`, waits for READY, sends SIGTERM, and
/// returns (exit status, time from SIGTERM to exit, console, stderr).
fn terminate(
    script: &str,
    shutdown_timeout: u64,
) -> (std::process::ExitStatus, Duration, String, String) {
    let scratch = tempfile::tempdir().unwrap();
    let initrd = busybox_initramfs(scratch.path(), script);
    let console = scratch.path().join("console.log");
    let stderr = scratch.path().join("stderr.log");
    let mut vmm = VmmCommand::new(build_output("vmlinux"))
        .initrd(&initrd)
        .shutdown_timeout_seconds(shutdown_timeout)
        .console(Console::File(console.clone()))
        .command(Path::new(VMM))
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    if let Err(error) = wait_for_text(&console, "READY", Duration::from_secs(120)) {
        let _ = vmm.kill();
        panic!("guest: {error}");
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(vmm.id() as i32, libc::SIGTERM) }, 0);
    let signalled = Instant::now();
    let status = wait_or_kill(&mut vmm, Duration::from_secs(60)).expect("VMM exits after SIGTERM");
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    (status, signalled.elapsed(), read(&console), read(&stderr))
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn sigterm_asks_the_guest_to_shut_down() {
    require_hardware_kvm();
    let (status, elapsed, console, stderr) = terminate(
        "echo READY\nread -r request\necho GOT-SHUTDOWN-REQUEST\nreboot -f",
        30,
    );
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    assert!(
        console.contains("GOT-SHUTDOWN-REQUEST"),
        "console:\n{}",
        tail(&console, 20)
    );
    assert!(
        elapsed < Duration::from_secs(30),
        "the guest's own shutdown took {elapsed:?}"
    );
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn sigterm_stops_a_guest_that_ignores_it() {
    require_hardware_kvm();
    let (status, elapsed, _console, stderr) = terminate("echo READY\nexec sleep 3600", 2);
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    assert!(stderr.contains("did not shut down"), "stderr:\n{stderr}");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(20),
        "stopped after {elapsed:?}"
    );
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_killed_vmm_leaves_only_its_socket_and_the_next_start_reuses_the_path() {
    require_hardware_kvm();
    let scratch = tempfile::tempdir().unwrap();
    let initrd = busybox_initramfs(scratch.path(), "echo READY\nexec sleep 3600");
    let uds = scratch.path().join("vsock.sock");
    let start = |console: &Path| {
        VmmCommand::new(build_output("vmlinux"))
            .initrd(&initrd)
            .vsock(&uds)
            .console(Console::File(console.to_path_buf()))
            .shutdown_timeout_seconds(1)
            .command(Path::new(VMM))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first_console = scratch.path().join("first.log");
    let mut first = start(&first_console);
    wait_for_text(&first_console, "READY", Duration::from_secs(120)).unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        uds.exists(),
        "the socket file of a killed VMM stays until the next start"
    );

    let second_console = scratch.path().join("second.log");
    let mut second = start(&second_console);
    let came_up = wait_for_text(&second_console, "READY", Duration::from_secs(120));
    let _ = second.kill();
    let output = second.wait_with_output().unwrap();
    assert!(
        came_up.is_ok(),
        "a VMM on the stale socket path did not start: {came_up:?}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
