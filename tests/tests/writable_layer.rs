//! A container's writable layer on its sandbox's scratch disk
//! (docs/architecture.md, "Writable layers"): on containerd's overlayfs
//! snapshotter the guest gets the image read-only and keeps what the
//! container writes on the VM's own disk. What the container wrote is there
//! for its next process; the image layers and containerd's upper directory
//! are never written; the disk file is nowhere on the host's file system
//! and goes with the VM; the next container starts from the image again.
//! `nerdctl commit` takes the image the container started from, not what it
//! wrote (docs/architecture.md says so).

use std::path::{Path, PathBuf};

use cocoon_tests::containerd::{ok, text, Containerd, Extra, RUNTIME};
use cocoon_tests::nerdctl::{Nerdctl, IMAGE};
use cocoon_tests::require_hardware_kvm;

const SNAPSHOTTER: &str = "overlayfs";

fn containerd(scratch: &Path) -> Containerd {
    let containerd = Containerd::start_with_extra(|_| Extra {
        tmpfs: true,
        cocoon_config: format!("scratch_dir = {scratch:?}\n"),
        ..Extra::default()
    });
    containerd.import_busybox();
    containerd
}

/// The overlay directories containerd's snapshot of container `id` has:
/// (upperdir, lowerdirs).
fn snapshot_dirs(containerd: &Containerd, id: &str) -> (PathBuf, Vec<PathBuf>) {
    let mount = ok(
        containerd.ctr(&[
            "snapshots",
            "--snapshotter",
            SNAPSHOTTER,
            "mounts",
            "/mnt",
            id,
        ]),
        "ctr snapshots mounts",
    );
    let mount = mount.trim();
    let option = |name: &str| {
        mount
            .split([' ', ','])
            .find_map(|word| word.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {mount}"))
            .to_string()
    };
    let upper = PathBuf::from(option("upperdir="));
    let lowers = option("lowerdir=").split(':').map(PathBuf::from).collect();
    (upper, lowers)
}

/// What is in `dir` (names, sorted).
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
#[ignore = "needs KVM: run inside tests/kvm-host (make kvm-test)"]
fn what_a_container_writes_stays_on_its_vms_disk() {
    require_hardware_kvm();
    let scratch = tempfile::tempdir().expect("temporary directory");
    let containerd = containerd(scratch.path());
    ok(
        containerd.run_on_snapshotter(SNAPSHOTTER, RUNTIME, &["-d"], "layer", &["sleep", "600"]),
        "ctr run -d",
    );
    containerd.wait_for_status("layer", "RUNNING");

    let wrote = containerd.exec(
        "layer",
        "write",
        "echo hello > /hello && mkdir -p /var/big && \
         dd if=/dev/zero of=/var/big/file bs=1M count=32 2>/dev/null && \
         rm /bin/true && sync && echo written",
    );
    assert!(wrote.contains("written"), "{wrote}\n{}", containerd.log());
    let read = containerd.exec(
        "layer",
        "read",
        "cat /hello; wc -c < /var/big/file; [ -e /bin/true ] && echo kept || echo removed; \
         awk '$2 == \"/\" { print $3 }' /proc/mounts",
    );
    let lines: Vec<&str> = read.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        ["hello", "33554432", "removed", "overlay"],
        "a second process sees what the first wrote, on an overlay root:\n{read}"
    );

    // Not on the host: containerd's upper directory is as empty as the
    // container found it, and the image layers keep what it removed.
    let (upper, lowers) = snapshot_dirs(&containerd, "layer");
    assert_eq!(names(&upper), Vec::<String>::new(), "{}", upper.display());
    assert!(
        lowers.iter().any(|lower| lower.join("bin/true").exists()),
        "an image layer lost /bin/true: {lowers:?}"
    );
    // So containerd reports the writable layer as (next to) empty, where
    // runc's would hold the 32 MiB file (docs/architecture.md says so).
    let usage = ok(
        containerd.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "usage", "layer"]),
        "ctr snapshots usage",
    );
    // "KEY SIZE INODES", SIZE as "4.0 KiB".
    let unit = usage
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("no usage in {usage:?}"))
        .to_string();
    assert!(
        unit == "B" || unit == "KiB",
        "containerd's usage of the writable layer: {usage}"
    );
    // The disk is an unlinked file: only the blank image is in scratch_dir.
    let blank_only = |what: &str| {
        let names = names(scratch.path());
        assert!(
            names
                .iter()
                .all(|name| name.starts_with(".blank-") || name == ".lock"),
            "{what}: {names:?}"
        );
    };
    blank_only("while the sandbox runs");

    containerd.kill_and_delete("layer");
    blank_only("after the sandbox");
    // The next container of the image starts from the image.
    let again = ok(
        containerd.run_on_snapshotter(
            SNAPSHOTTER,
            RUNTIME,
            &["--rm"],
            "layer",
            &[
                "sh",
                "-c",
                "[ -e /hello ] && echo old || echo fresh; [ -e /bin/true ] && echo true",
            ],
        ),
        "ctr run --rm",
    );
    assert_eq!(
        again.split_whitespace().collect::<Vec<_>>(),
        ["fresh", "true"]
    );
    containerd.assert_nothing_left();
}

#[test]
#[ignore = "needs KVM: run inside tests/kvm-host (make kvm-test)"]
fn nerdctl_commit_takes_the_image_without_what_the_container_wrote() {
    require_hardware_kvm();
    let nerdctl = Nerdctl::on_overlayfs();
    nerdctl.ok(&[
        "run",
        "-d",
        "--name",
        "writer",
        "--runtime",
        RUNTIME,
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo kept > /written && echo written; exec sleep 600",
    ]);
    let logs = nerdctl.wait_for(
        &["logs", "writer"],
        "written",
        std::time::Duration::from_secs(60),
    );
    assert_eq!(logs, "written\n");
    let read = nerdctl.output(&["exec", "writer", "cat", "/written"]);
    assert_eq!(text(&read.stdout), "kept\n", "{}", text(&read.stderr));

    nerdctl.ok(&["commit", "writer", "cocoon/committed:latest"]);
    let out = nerdctl.output(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--network",
        "none",
        "cocoon/committed:latest",
        "sh",
        "-c",
        "cat /written 2>/dev/null || echo not-committed",
    ]);
    assert_eq!(
        text(&out.stdout),
        "not-committed\n",
        "{}",
        text(&out.stderr)
    );
    // The container itself still has it after the commit paused it.
    let read = nerdctl.output(&["exec", "writer", "cat", "/written"]);
    assert_eq!(text(&read.stdout), "kept\n", "{}", text(&read.stderr));
    nerdctl.ok(&["rm", "-f", "writer"]);
    nerdctl.ok(&["rmi", "cocoon/committed:latest"]);
    nerdctl.assert_nothing_left();
}
