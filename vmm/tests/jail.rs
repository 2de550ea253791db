//! cocoon-vmm jailed (`--jail`, `--cgroup`, `--console-limit`), checked from
//! the host while the guest runs: every thread has no_new_privs and only the
//! file server's capabilities, the VMM's root and mount namespace are not the
//! host's, it sits in the cgroup it was given; the share still works both
//! ways, read-only where the host made it so, and a mount the host makes
//! under it after the start reaches the guest; host sockets next to the vsock
//! socket are out of reach; MKNOD of devices is refused; a console flood
//! stops at the cap and the VM keeps running; nothing of the jail is left in
//! the host's mount table.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cocoon_tests::{
    build_output, busybox_initramfs_with, guest_probe, require_hardware_kvm, tail, wait_for_text,
    wait_or_kill,
};
use cocoon_vmm::devices::console_cap::dropped_note;
use cocoon_vmm::jail::capabilities::kept_mask;
use cocoon_vmm_command::{Console, VmmCommand};

const VMM: &str = env!("CARGO_BIN_EXE_cocoon-vmm");
/// Small, so that a flood passes it quickly under emulation; the guest
/// prints far less than this before the flood (quiet kernel).
const CONSOLE_CAP: u64 = 16 * 1024;
const FLOOD_BYTES: u64 = 128 * 1024;
const CAP_SYS_ADMIN: u64 = 1 << 21;
const CAP_MKNOD: u64 = 1 << 27;

/// Runs a host command (mount, umount) and fails the test if it fails.
fn host(command: &[&str]) {
    let status = Command::new(command[0])
        .args(&command[1..])
        .status()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(status.success(), "{command:?}: {status}");
}

/// What the test set up on the host, undone however the test ends.
struct HostSetup {
    mounts: Vec<PathBuf>,
    cgroup: PathBuf,
}

impl Drop for HostSetup {
    fn drop(&mut self) {
        for mount in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// A child of this process's cgroup v2.
fn test_cgroup() -> (PathBuf, String) {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let own = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    let relative = format!(
        "{}/cocoon-jail-test-{}",
        own.trim_end_matches('/'),
        std::process::id()
    );
    let dir = Path::new("/sys/fs/cgroup").join(relative.trim_start_matches('/'));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    (dir, relative)
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
        .trim()
        .to_string()
}

fn hex(value: &str) -> u64 {
    u64::from_str_radix(value, 16).unwrap_or_else(|e| panic!("{value}: {e}"))
}

/// The checks of a running jailed VMM from /proc.
fn check_confinement(pid: u32, cgroup: &str) {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let tasks: Vec<_> = std::fs::read_dir(proc.join("task"))
        .expect("task list")
        .map(|entry| entry.expect("task").path())
        .collect();
    assert!(tasks.len() > 1, "the VM runs threads by now: {tasks:?}");
    for task in &tasks {
        let status = std::fs::read_to_string(task.join("status")).expect("task status");
        let name = status_field(&status, "Name:");
        assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{name}");
        let effective = hex(&status_field(&status, "CapEff:"));
        assert_eq!(effective & (CAP_SYS_ADMIN | CAP_MKNOD), 0, "{name}");
        assert_eq!(effective, kept_mask(), "{name}: CapEff");
        assert_eq!(
            hex(&status_field(&status, "CapPrm:")),
            kept_mask(),
            "{name}: CapPrm"
        );
        for empty in ["CapInh:", "CapBnd:", "CapAmb:"] {
            assert_eq!(hex(&status_field(&status, empty)), 0, "{name}: {empty}");
        }
    }

    let host_root = std::fs::metadata("/").unwrap();
    let vmm_root = std::fs::metadata(proc.join("root/")).expect("/proc/PID/root/");
    assert_ne!(
        (vmm_root.dev(), vmm_root.ino()),
        (host_root.dev(), host_root.ino()),
        "the VMM's root is the host's"
    );
    let mut names: Vec<String> = std::fs::read_dir(proc.join("root"))
        .expect("the VMM's root")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.contains(&"shares".to_string()), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "etc" || n == "dev" || n == "sys"),
        "{names:?}"
    );
    // The jail's proc (the file server names files through it) has process
    // directories only: no way to /proc/sys.
    let in_proc: Vec<String> = std::fs::read_dir(proc.join("root/proc"))
        .expect("the jail's /proc")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        in_proc
            .iter()
            .all(|n| n.parse::<u32>().is_ok() || n == "self" || n == "thread-self"),
        "the jail's /proc: {in_proc:?}"
    );
    let written = std::fs::write(proc.join("root/x"), "");
    assert_eq!(
        written.as_ref().map_err(|e| e.raw_os_error()),
        Err(Some(libc::EROFS)),
        "the jail's root is writable"
    );

    // The file server's /proc/self/fd: a proc with process directories only.
    let proc_dirs: Vec<PathBuf> = std::fs::read_dir(proc.join("fd"))
        .expect("the VMM's descriptors")
        .map(|entry| entry.unwrap().path())
        .filter(|fd| fd.join("../../self").exists())
        .collect();
    assert!(!proc_dirs.is_empty(), "no descriptor of a proc directory");
    for fd in &proc_dirs {
        assert!(
            !fd.join("../../sys").exists(),
            "{} leads to /proc/sys",
            fd.display()
        );
    }

    let namespace = |path: &Path| std::fs::read_link(path).expect("mount namespace link");
    assert_ne!(
        namespace(&proc.join("ns/mnt")),
        namespace(Path::new("/proc/self/ns/mnt")),
        "the VMM shares the host's mount namespace"
    );
    let vmm_cgroup = std::fs::read_to_string(proc.join("cgroup")).expect("/proc/PID/cgroup");
    assert_eq!(vmm_cgroup.trim(), format!("0::{cgroup}"));
}

fn host_mounts_mention(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mounts.contains(&path.display().to_string())
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_jailed_vmm_is_confined_and_still_serves_its_guest() {
    require_hardware_kvm();
    let scratch = tempfile::tempdir().unwrap();
    let base = scratch.path().canonicalize().unwrap();
    // As the shim lays it out: a host-side directory (a shared mount) where
    // root file systems get mounted, and the share, a read-only bind of it.
    let host_dir = base.join("host");
    let share = base.join("share");
    let jail = base.join("jail");
    for dir in [&host_dir, &share, &jail, &host_dir.join("late")] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(host_dir.join("from-host.txt"), "written on the host\n").unwrap();
    let (cgroup_dir, cgroup) = test_cgroup();
    let mut setup = HostSetup {
        mounts: Vec::new(),
        cgroup: cgroup_dir.clone(),
    };
    let (h, s) = (host_dir.to_str().unwrap(), share.to_str().unwrap());
    host(&["mount", "--bind", h, h]);
    setup.mounts.push(host_dir.clone());
    host(&["mount", "--make-shared", h]);
    host(&["mount", "--bind", h, s]);
    setup.mounts.push(share.clone());
    host(&["mount", "-o", "remount,bind,ro", s]);

    // A host service next to the vsock socket: the jail must not reach it.
    let uds = base.join("vsock.sock");
    let outside = std::os::unix::net::UnixListener::bind(base.join("vsock.sock_5000")).unwrap();
    outside.set_nonblocking(true).unwrap();

    let script = "mkdir -p /mnt\n\
         mount -t virtiofs shared /mnt || echo MOUNT-FAILED\n\
         echo \"HOST-FILE: $(cat /mnt/from-host.txt)\"\n\
         if echo x > /mnt/guest-top 2>/dev/null; then echo TOP-WRITABLE; else echo TOP-READ-ONLY; fi\n\
         probe send 5000 10 2>&1 | grep -q PROBE-ERROR && echo VSOCK-OUT-REFUSED\n\
         echo READY\n\
         i=0; while [ ! -e /mnt/go ]; do i=$((i+1)); [ $i -gt 3000 ] && echo NO-GO && break; sleep 0.1; done\n\
         echo \"LATE: $(cat /mnt/late/hello)\"\n\
         echo guest-data > /mnt/late/from-guest && echo GUEST-WROTE\n\
         mknod /mnt/late/blk b 7 0 2>/dev/null && echo MKNOD-BLK-MADE || echo MKNOD-BLK-REFUSED\n\
         mknod /mnt/late/chr c 1 3 2>/dev/null && echo MKNOD-CHR-MADE || echo MKNOD-CHR-REFUSED\n\
         mkfifo /mnt/late/fifo && echo FIFO-MADE\n\
         umount /mnt && mount -t virtiofs shared /mnt && echo \"REMOUNTED: $(cat /mnt/from-host.txt)\"\n\
         echo CHECKS-DONE\n\
         sync\n";
    let script = format!(
        "{script}\
         yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {FLOOD_BYTES} > /dev/console\n\
         echo flooded > /mnt/late/flooded && sync\n\
         i=0; while [ ! -e /mnt/stop ]; do i=$((i+1)); [ $i -gt 3000 ] && break; sleep 0.1; done\n\
         reboot -f"
    );
    let initrd = busybox_initramfs_with(&base, &script, &[(&guest_probe(), "/bin/probe")]);
    let console = base.join("console.log");
    let stderr = base.join("stderr.log");
    let mut vmm: Child = VmmCommand::new(build_output("vmlinux"))
        .initrd(&initrd)
        .kernel_arg("quiet")
        .memory_mib(256)
        .share("shared", &share)
        .vsock(&uds)
        .console(Console::File(console.clone()))
        .console_limit_bytes(CONSOLE_CAP)
        .jail(&jail)
        .cgroup(&cgroup_dir)
        .command(Path::new(VMM))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let diagnostics = || {
        format!(
            "console:\n{}\nstderr:\n{}",
            tail(&read(&console), 30),
            tail(&read(&stderr), 20)
        )
    };
    let waited = wait_for_text(&console, "READY", Duration::from_secs(180));
    if let Err(error) = waited {
        let _ = vmm.kill();
        panic!("guest: {error}\n{}", diagnostics());
    }

    check_confinement(vmm.id(), &cgroup);
    assert!(
        !host_mounts_mention(&jail),
        "the jail shows in the host's mount table"
    );
    assert!(
        outside.accept().is_err(),
        "a guest connection reached a host socket"
    );

    // A root file system mounted after the VMM started, as the shim does it.
    let late = host_dir.join("late");
    host(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "nosuid,nodev,size=1m",
        "late",
        late.to_str().unwrap(),
    ]);
    setup.mounts.push(late.clone());
    std::fs::write(late.join("hello"), "mounted after the start\n").unwrap();
    std::fs::write(host_dir.join("go"), "").unwrap();

    let flooded = late.join("flooded");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !flooded.exists() {
        if let Ok(Some(status)) = vmm.try_wait() {
            panic!(
                "cocoon-vmm exited ({status}) during the checks\n{}",
                diagnostics()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not finish its flood\n{}",
            diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        vmm.try_wait().unwrap().is_none(),
        "the VMM died of the console flood\n{}",
        diagnostics()
    );
    let console_text = read(&console);
    let note = dropped_note(CONSOLE_CAP);
    assert!(
        console_text.len() as u64 <= CONSOLE_CAP + note.len() as u64,
        "console.log has {} bytes, cap {CONSOLE_CAP}",
        console_text.len()
    );
    assert!(console_text.ends_with(&note), "{}", tail(&console_text, 3));

    std::fs::write(host_dir.join("stop"), "").unwrap();
    let status = wait_or_kill(&mut vmm, Duration::from_secs(120));
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "{status:?}\n{}",
        diagnostics()
    );

    for expected in [
        "HOST-FILE: written on the host",
        "TOP-READ-ONLY",
        "VSOCK-OUT-REFUSED",
        "LATE: mounted after the start",
        "GUEST-WROTE",
        "MKNOD-BLK-REFUSED",
        "MKNOD-CHR-REFUSED",
        "FIFO-MADE",
        "REMOUNTED: written on the host",
        "CHECKS-DONE",
    ] {
        assert!(
            console_text.contains(expected),
            "{expected}\n{}",
            diagnostics()
        );
    }
    assert!(!share.join("guest-top").exists());
    assert_eq!(read(&late.join("from-guest")), "guest-data\n");
    assert!(std::fs::symlink_metadata(late.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(!late.join("blk").exists() && !late.join("chr").exists());
    assert!(
        !host_mounts_mention(&jail),
        "the jail shows in the host's mount table after the VMM exited"
    );
    assert_eq!(
        std::fs::read_dir(&jail).unwrap().count(),
        0,
        "the host's jail directory is not empty"
    );
    drop(setup);
}

/// Runs cocoon-vmm with `command` expecting it to fail before it gets to
/// KVM; returns its stderr.
fn failed_start(command: VmmCommand) -> String {
    let output = command
        .command(Path::new(VMM))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_cgroup_that_cannot_be_joined_fails_the_start_naming_it() {
    let scratch = tempfile::tempdir().unwrap();
    let missing = scratch.path().join("no-such-cgroup");
    let stderr = failed_start(VmmCommand::new("/no/kernel").cgroup(&missing));
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[test]
fn a_missing_jail_directory_fails_the_start_naming_it() {
    let scratch = tempfile::tempdir().unwrap();
    let missing = scratch.path().join("no-such-jail");
    let stderr = failed_start(VmmCommand::new("/no/kernel").jail(&missing));
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}
