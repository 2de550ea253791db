//! Containment end to end: a hostile guest cannot reach the host through the
//! share, fill the node's /run, or talk to the agent from inside a container;
//! containerd is told host pids; the VMM runs jailed, filtered and charged to
//! the sandbox's cgroup.
//!
//! The attacker is played by a privileged container that mounts the share's
//! virtio-fs tag itself (the guest kernel gives a second mount of a tag the
//! same file system), i.e. by root in the guest with the guest kernel's
//! help: everything it does reaches the host as it would from a compromised
//! guest kernel, as FUSE requests to the VMM's file server.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cocoon_protocol::{IMAGES_TAG, SHARE_TAG};
use cocoon_tests::containerd::{ok, text, Containerd, RUNTIME};
use cocoon_tests::require_hardware_kvm;
use cocoon_tests::sandbox::busybox_rootfs;

/// `ctr run` flags of the attacking container: root in the guest with every
/// capability.
const ATTACKER: &str = "--privileged";

/// A script run by the attacker, with the guest's share mounted at /share
/// and the image share at /images (writable, as far as the guest goes).
fn with_share(script: &str) -> String {
    format!(
        "mkdir -p /share /images && mount -t virtiofs {SHARE_TAG} /share && \
         mount -t virtiofs {IMAGES_TAG} /images && {{ {script}; }}"
    )
}

/// A host tmpfs (the "host mount point" an attacker aims at) with a canary
/// file in it; unmounted when dropped.
struct HostMount {
    dir: tempfile::TempDir,
}

const CANARY: &str = "the host's own data";

impl HostMount {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let target = dir.path().join("rootfs");
        std::fs::create_dir(&target).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "host-canary"])
            .arg(&target)
            .status()
            .expect("mount(8)");
        assert!(mounted.success(), "mounting the test's tmpfs");
        std::fs::write(target.join("canary"), CANARY).unwrap();
        HostMount { dir }
    }

    /// The directory whose `rootfs` is the mount point.
    fn parent(&self) -> &Path {
        self.dir.path()
    }

    fn target(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Still mounted, once, with the canary as it was.
    fn assert_untouched(&self) {
        let target = self.target();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounts_there = mountinfo
            .lines()
            .filter(|line| line.split(' ').nth(4) == target.to_str())
            .count();
        assert_eq!(
            mounts_there,
            1,
            "{} must keep exactly the test's own mount",
            target.display()
        );
        assert_eq!(
            std::fs::read_to_string(target.join("canary")).unwrap_or_default(),
            CANARY,
            "the host mount's contents changed"
        );
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.target()).status();
    }
}

/// The sandbox's state directory.
fn state_dir(containerd: &Containerd, sandbox: &str) -> PathBuf {
    containerd.cocoon_state.join("default").join(sandbox)
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_symlink_planted_in_the_share_before_delete_reaches_no_host_mount() {
    require_hardware_kvm();
    let containerd = Containerd::start();
    containerd.import_busybox();
    let host = HostMount::new();
    let aim = host.parent().display().to_string();
    // Replace the container's directory, and its rootfs inside it, with
    // symlinks to the host mount's parent and to the mount point: a shim
    // that followed them would unmount the host's tmpfs at delete.
    let script = format!(
        "cd /share; \
         mv attacker moved; echo rename-dir=$?; \
         ln -sfT {aim} attacker; echo link-dir=$?; \
         mv attacker/rootfs attacker/old; echo rename-rootfs=$?; \
         ln -sfT {aim}/rootfs attacker/rootfs; echo link-rootfs=$?"
    );
    let out = containerd.run(
        RUNTIME,
        &["--rm", ATTACKER],
        "attacker",
        &["sh", "-c", &with_share(&script)],
    );
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    eprintln!("the attacker saw:\n{said}");
    assert_eq!(
        said.matches("=1").count(),
        4,
        "the guest could rename or replace what the shim unmounts:\n{said}"
    );
    host.assert_untouched();
    containerd.assert_nothing_left();
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_symlink_planted_in_the_share_before_create_reaches_no_host_mount() {
    require_hardware_kvm();
    let containerd = Containerd::start();
    containerd.import_busybox();
    let host = HostMount::new();
    containerd.start_sleeping(&[ATTACKER], "pod");
    // Where the next container of the pod will be mounted.
    let aim = host.parent().display().to_string();
    let planted = containerd.exec(
        "pod",
        "plant",
        &with_share(&format!(
            "ln -s {aim} /share/app; echo planted=$?; \
             ln -s {aim} /images/app@1; echo images-planted=$?"
        )),
    );
    eprintln!("the attacker saw:\n{planted}");
    let refused = |what: &str| {
        planted
            .lines()
            .any(|line| line.trim() == format!("{what}=1"))
    };
    assert!(refused("planted") && refused("images-planted"), "{planted}");

    // A second container of the pod, as CRI creates one.
    let rootfs = containerd.dir().join("app-rootfs");
    busybox_rootfs(&rootfs);
    let mut spec = containerd.spec_on_rootfs(&rootfs, &["sh", "-c", "echo app-ran"]);
    spec["annotations"] = serde_json::json!({
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "pod",
    });
    let out = containerd.run_spec(&["--rm"], &spec, "app");
    assert!(
        text(&out.stdout).contains("app-ran"),
        "the pod's second container: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    host.assert_untouched();
    containerd.kill_and_delete("pod");
    containerd.assert_nothing_left();
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn the_guest_cannot_fill_the_hosts_run_through_the_share() {
    require_hardware_kvm();
    let containerd = Containerd::start();
    containerd.import_busybox();
    containerd.start_sleeping(&[ATTACKER], "filler");
    let state = state_dir(&containerd, "filler");
    let free_before = free_bytes(&state);
    let said = containerd.exec(
        "filler",
        "fill",
        &with_share(
            "for f in /share/big /share/filler/big; do \
               dd if=/dev/zero of=$f bs=1M count=1024 2>&1 | tail -1; done; ls /share /share/filler",
        ),
    );
    eprintln!("the guest saw:\n{said}");
    assert!(
        said.contains("Read-only file system"),
        "the share's own directories must refuse writes:\n{said}"
    );
    let dropped = free_before.saturating_sub(free_bytes(&state));
    let cap = 16 << 20;
    assert!(
        dropped <= cap,
        "the host's {} lost {dropped} bytes (the share's cap is {cap})",
        state.display()
    );
    let capped = total_bytes(&state.join("mounts"));
    assert!(
        capped <= cap,
        "the host-only mount directory holds up to {capped} bytes; the cap is {cap}"
    );
    containerd.kill_and_delete("filler");
    containerd.assert_nothing_left();
}

fn free_bytes(path: &Path) -> u64 {
    statvfs(path).0
}

fn total_bytes(path: &Path) -> u64 {
    statvfs(path).1
}

/// (free bytes, total bytes) of the file system holding `path`.
fn statvfs(path: &Path) -> (u64, u64) {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: path is NUL-terminated and stat is a valid out-pointer.
    let result = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    assert_eq!(result, 0, "statvfs: {}", std::io::Error::last_os_error());
    (stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize)
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_guest_made_setuid_file_or_device_node_gives_the_host_nothing() {
    require_hardware_kvm();
    let containerd = Containerd::start();
    let rootfs = containerd.dir().join("suid-rootfs");
    busybox_rootfs(&rootfs);
    ok(
        containerd.run_on_rootfs(&["-d"], &rootfs, "suid", &["sleep", "600"]),
        "ctr run -d --rootfs",
    );
    containerd.wait_for_status("suid", "RUNNING");
    let said = containerd.exec(
        "suid",
        "make",
        "cp /bin/probe /suid && chmod 4755 /suid && echo setuid-made; \
         mknod /blk b 8 0; echo mknod=$?",
    );
    eprintln!("the guest saw:\n{said}");
    assert!(said.contains("setuid-made"), "{said}");
    assert!(
        said.contains("mknod=1"),
        "the file server must refuse device nodes:\n{said}"
    );
    assert!(
        !rootfs.join("blk").exists(),
        "a device node reached the host"
    );

    // Through the share, where the host sees the container's files.
    let state = state_dir(&containerd, "suid");
    let file = state.join("mounts/containers/suid/rootfs/suid");
    let mode = std::fs::metadata(&file)
        .expect("the guest's file")
        .permissions()
        .mode();
    assert_ne!(mode & 0o4000, 0, "the guest made a setuid-root file");
    let euid = run_as_nobody(&file);
    assert_eq!(
        euid.trim(),
        "EUID 65534",
        "a setuid file from the guest raised an unprivileged host user"
    );
    // The state directory keeps other users out altogether.
    let state_mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(state_mode & 0o777, 0o700, "state directory mode");
    containerd.kill_and_delete("suid");
    containerd.assert_nothing_left();
}

/// Runs `file euid` as uid/gid 65534, reaching the file through a
/// descriptor opened as root (nobody cannot traverse the 0700 state
/// directory; the mount's nosuid is what this checks).
fn run_as_nobody(file: &Path) -> String {
    let path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: path is NUL-terminated; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH) };
    assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
    let out = Command::new(format!("/proc/self/fd/{fd}"))
        .arg("euid")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("running the guest's setuid file");
    // SAFETY: fd is ours and not used after this.
    unsafe { libc::close(fd) };
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_process_in_a_container_cannot_reach_the_agent() {
    require_hardware_kvm();
    let containerd = Containerd::start();
    let rootfs = containerd.dir().join("probe-rootfs");
    busybox_rootfs(&rootfs);
    let ports = [
        cocoon_protocol::AGENT_RPC_PORT,
        cocoon_protocol::AGENT_STDIO_PORT,
    ];
    let script: String = [1, 3]
        .iter()
        .flat_map(|cid| {
            ports.map(|port| format!("echo {cid}:{port} $(probe connect {cid} {port});"))
        })
        .collect();
    let out = containerd.run_on_rootfs(&["--rm"], &rootfs, "prober", &["sh", "-c", &script]);
    let said = text(&out.stdout);
    eprintln!("the container saw:\n{said}{}", text(&out.stderr));
    assert_eq!(said.lines().count(), 4, "{said}{}", text(&out.stderr));
    for line in said.lines() {
        assert!(
            !line.contains("CONNECTED"),
            "a container reached an agent port: {line}"
        );
    }
    containerd.assert_nothing_left();
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn memory_far_above_the_maximum_is_refused_at_create() {
    require_hardware_kvm();
    let containerd = Containerd::start();
    containerd.import_busybox();
    let started = Instant::now();
    let out = containerd.run(
        RUNTIME,
        &["--rm", "--annotation", "io.cocoon.memory-mib=99999999"],
        "huge",
        &["true"],
    );
    let said = text(&out.stderr);
    eprintln!("refused after {:?}: {said}", started.elapsed());
    assert!(!out.status.success(), "a 95 TiB guest was accepted");
    assert!(
        said.contains("io.cocoon.memory-mib") && said.contains("invalid argument"),
        "the refusal names the annotation, as INVALID_ARGUMENT: {said}"
    );
    containerd.assert_nothing_left();
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn the_vmm_runs_jailed_filtered_and_charged_to_the_sandbox() {
    require_hardware_kvm();
    let containerd = Containerd::start();
    containerd.import_busybox();
    containerd.start_sleeping(&[], "jailed");
    // containerd is told a host pid of the sandbox: the VMM's.
    let pid = containerd.task_pid("jailed");
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("cocoon-vmm"),
        "ctr task ls shows pid {pid}, which is not the sandbox's VMM"
    );
    // Guest pids are for `ctr task ps`.
    let ps = ok(containerd.ctr(&["task", "ps", "jailed"]), "ctr task ps");
    assert!(
        ps.lines().count() >= 2,
        "ctr task ps lists the guest's processes: {ps}"
    );

    let mut threads = 0;
    for task in std::fs::read_dir(proc_dir.join("task")).unwrap().flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        let name = field("Name:");
        assert_eq!(
            field("Seccomp:"),
            "2",
            "thread {name} has no seccomp filter"
        );
        assert_eq!(
            field("NoNewPrivs:"),
            "1",
            "thread {name} may gain privileges"
        );
        let effective = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
        for (cap, bit) in [("CAP_SYS_ADMIN", 21), ("CAP_MKNOD", 27)] {
            assert_eq!(effective & (1 << bit), 0, "thread {name} has {cap}");
        }
        threads += 1;
    }
    assert!(threads >= 3, "only {threads} threads");

    let host_root = std::fs::metadata("/").unwrap();
    let vmm_root = std::fs::metadata(proc_dir.join("root/")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        (host_root.dev(), host_root.ino()) != (vmm_root.dev(), vmm_root.ino()),
        "the VMM's root is the host's"
    );
    let cgroup = std::fs::read_to_string(proc_dir.join("cgroup")).unwrap();
    assert_eq!(cgroup.trim(), "0::/default/jailed", "the VMM's cgroup");

    containerd.kill_and_delete("jailed");
    containerd.assert_nothing_left();
}
