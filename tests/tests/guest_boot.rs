//! The guest kernel and initramfs that `make` builds boot under real KVM and
//! reach cocoon-agent under a VMM that is not ours (QEMU's microvm): the
//! guest image does not depend on cocoon-vmm's quirks.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cocoon_tests::{build_output, require_hardware_kvm, tail, wait_for_text};

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
        .args(["-append", "console=ttyS0 reboot=t panic=-1"])
        .args(["-nodefaults", "-no-reboot", "-display", "none", "-serial"])
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 starts (make deps installs it)");
    // The agent serves until it is told to stop; seeing it start is the test.
    let banner = cocoon_protocol::version_banner(env!("CARGO_PKG_VERSION"));
    let seen = wait_for_text(&console, &banner, Duration::from_secs(90));
    let elapsed = launched.elapsed();
    let _ = qemu.kill();
    let _ = qemu.wait();
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    if let Err(error) = seen {
        panic!("the guest console never showed the agent's banner: {error}");
    }
    assert!(
        !text.contains("Kernel panic"),
        "console tail:\n{}",
        tail(&text, 30)
    );
    let uptime_line = text
        .lines()
        .find(|line| line.contains("reached /init"))
        .unwrap_or("");
    eprintln!("guest boot under QEMU microvm: launch to banner {elapsed:?}; {uptime_line}");
}
