//! tests/kvm-host gives us a real /dev/kvm, hands back the command's exit
//! status and output, tells a timeout apart from a failure, and leaves no
//! QEMU process or run directory behind.

use std::path::Path;
use std::process::{Command, Output};

use cocoon_tests::repo_root;

/// Runs the harness with its run directories under `scratch`, so this test
/// can tell its own host VMs from anybody else's.
fn kvm_host(scratch: &Path, args: &[&str]) -> Output {
    Command::new(repo_root().join("tests/kvm-host"))
        .args(args)
        .env("TMPDIR", scratch)
        .current_dir(repo_root())
        .output()
        .expect("tests/kvm-host runs")
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// QEMU processes whose command line names a run directory under `scratch`.
fn leftover_host_vms(scratch: &Path) -> Vec<String> {
    let scratch = scratch.to_string_lossy();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.starts_with("qemu-system") && cmdline.contains(&*scratch) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[test]
fn kvm_host_runs_commands_with_real_kvm_and_cleans_up() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let scratch = scratch.path();
    let checked = kvm_host(scratch, &[
        "--",
        "sh",
        "-c",
        "echo on-stdout; echo on-stderr >&2; test -c /dev/kvm && test -f /sys/fs/cgroup/cgroup.controllers && exit 7",
    ]);
    assert_eq!(code(&checked), Some(7), "{}", describe(&checked));
    let streamed = String::from_utf8_lossy(&checked.stdout);
    assert!(
        streamed.contains("on-stdout") && streamed.contains("on-stderr"),
        "{}",
        describe(&checked)
    );

    let ok = kvm_host(scratch, &["--", "true"]);
    assert_eq!(code(&ok), Some(0), "{}", describe(&ok));
    let failed = kvm_host(scratch, &["--", "false"]);
    assert_eq!(code(&failed), Some(1), "{}", describe(&failed));

    let timed_out = kvm_host(scratch, &["--timeout", "3", "--", "sleep", "600"]);
    assert_eq!(code(&timed_out), Some(124), "{}", describe(&timed_out));

    assert_eq!(
        leftover_host_vms(scratch),
        Vec::<String>::new(),
        "host VMs left running"
    );
    let leftover_dirs: Vec<_> = std::fs::read_dir(scratch)
        .expect("read the scratch directory")
        .flatten()
        .map(|entry| entry.path())
        .collect();
    assert!(
        leftover_dirs.is_empty(),
        "run directories left behind: {leftover_dirs:?}"
    );
}
