//! The guest kernel and initramfs that `make` builds boot under real KVM and
//! reach cocoon-agent. QEMU's microvm stands in for cocoon-vmm until the VMM
//! can boot Linux itself.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cocoon_tests::{build_output, require_hardware_kvm, tail, wait_or_kill};

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn guest_boots_to_the_agent_under_kvm() {
    require_hardware_kvm();
    let kernel = build_output("vmlinux");
    let initramfs = build_output("initramfs.img");
    let scratch = tempfile::tempdir().expect("temporary directory");
    let console = scratch.path().join("console.log");

    let launched = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-enable-kvm",
            "-M",
            "microvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-smp",
            "1",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initramfs)
        // reboot=t: the agent ends the VM with a restart, which -no-reboot turns
        // into QEMU's exit (a microVM has no ACPI to power off through).
        .args(["-append", "console=ttyS0 reboot=t panic=-1"])
        .args(["-nodefaults", "-no-reboot", "-display", "none", "-serial"])
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 starts (make deps installs it)");
    let outcome = wait_or_kill(&mut qemu, Duration::from_secs(90));
    let elapsed = launched.elapsed();
    let text = std::fs::read_to_string(&console).unwrap_or_default();

    let banner = cocoon_protocol::version_banner(env!("CARGO_PKG_VERSION"));
    assert!(
        text.contains(&banner),
        "the guest console never showed {banner:?} (QEMU: {outcome:?}); console tail:\n{}",
        tail(&text, 30)
    );
    let status =
        outcome.unwrap_or_else(|error| panic!("QEMU {error}; console tail:\n{}", tail(&text, 30)));
    assert!(
        status.success(),
        "QEMU exited with {status}; console tail:\n{}",
        tail(&text, 30)
    );
    let uptime_line = text
        .lines()
        .find(|line| line.contains("reached /init"))
        .unwrap_or("");
    eprintln!("guest boot under QEMU microvm: launch to VM exit {elapsed:?}; {uptime_line}");
}
