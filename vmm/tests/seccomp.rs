//! Every thread of a running cocoon-vmm is under a seccomp filter (mode 2,
//! with no_new_privs), and a forbidden syscall kills the VMM with SIGSYS.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use cocoon_tests::{
    build_output, busybox_initramfs, require_hardware_kvm, tail, wait_for_text, wait_or_kill,
};
use cocoon_vmm_command::{Console, VmmCommand};

const VMM: &str = env!("CARGO_BIN_EXE_cocoon-vmm");
const VCPUS: u32 = 2;
// main, signals, one per vCPU, virtio-rng 1, virtio-vsock 1, virtio-fs 4, virtio-balloon 1.
const THREADS: usize = 2 + VCPUS as usize + 1 + 1 + 4 + 1;

struct Running {
    vmm: Child,
    console: std::path::PathBuf,
    stderr: std::path::PathBuf,
    _scratch: tempfile::TempDir,
}

impl Running {
    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "stderr:\n{}\nconsole:\n{}",
            tail(&Self::read(&self.stderr), 20),
            tail(&Self::read(&self.console), 20)
        )
    }
}

// Boots a guest with every device (vsock, a mounted share, balloon) and waits
// until it has used the share.
fn boot_with_every_device() -> Running {
    let scratch = tempfile::tempdir().unwrap();
    let share = scratch.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("f"), "from the host\n").unwrap();
    let script = "mkdir -p /mnt && mount -t virtiofs shared /mnt || echo MOUNT-FAILED\n\
                  cat /mnt/f && echo guest > /mnt/g && echo READY\n\
                  exec sleep 3600";
    let initrd = busybox_initramfs(scratch.path(), script);
    let console = scratch.path().join("console.log");
    let stderr = scratch.path().join("stderr.log");
    let vmm = VmmCommand::new(build_output("vmlinux"))
        .initrd(&initrd)
        .vcpus(VCPUS)
        .memory_mib(256)
        .share("shared", &share)
        .vsock(scratch.path().join("v.sock"))
        .balloon(true)
        .console(Console::File(console.clone()))
        .command(Path::new(VMM))
        // The debug knob that only logs must not weaken these tests.
        .env_remove("COCOON_VMM_SECCOMP")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut running = Running {
        vmm,
        console,
        stderr,
        _scratch: scratch,
    };
    if let Err(error) = wait_for_text(&running.console, "READY", Duration::from_secs(120)) {
        let _ = running.vmm.kill();
        panic!("guest: {error}\n{}", running.logs());
    }
    running
}

fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn every_thread_runs_under_a_seccomp_filter() {
    require_hardware_kvm();
    let mut running = boot_with_every_device();
    let tasks = Path::new("/proc")
        .join(running.vmm.id().to_string())
        .join("task");
    let mut threads = Vec::new();
    for task in std::fs::read_dir(&tasks).unwrap() {
        let task = task.unwrap().path();
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let name = status_field(&status, "Name").unwrap_or("?").to_owned();
        let seccomp = status_field(&status, "Seccomp").map(str::to_owned);
        let no_new_privs = status_field(&status, "NoNewPrivs").map(str::to_owned);
        // One filter each: a thread's own, nothing stacked from its creator.
        let filters = status_field(&status, "Seccomp_filters").map(str::to_owned);
        threads.push((name, seccomp, no_new_privs, filters));
    }
    let _ = running.vmm.kill();
    let _ = running.vmm.wait();
    // Newer host kernels run KVM's NX huge page recovery as a kernel-made
    // task in the VMM's thread group ("kvm-nx-lpage-recovery"); it is not
    // one of ours and makes no syscalls of its own.
    threads.retain(|(name, ..)| !name.starts_with("kvm-"));
    for (name, seccomp, no_new_privs, filters) in &threads {
        assert_eq!(seccomp.as_deref(), Some("2"), "{name}: {threads:?}");
        assert_eq!(no_new_privs.as_deref(), Some("1"), "{name}: {threads:?}");
        // Seccomp_filters appeared in Linux 5.9.
        if let Some(filters) = filters {
            assert_eq!(filters, "1", "{name}: {threads:?}");
        }
    }
    let mut names: Vec<_> = threads.iter().map(|(name, ..)| name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(threads.len(), THREADS, "threads: {names:?}");
    for expected in [
        "signals",
        "vcpu0",
        "vcpu1",
        "virtio-rng",
        "virtio-vsock",
        "virtio-fs-0",
        "virtio-fs-3",
        "virtio-balloon",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_forbidden_syscall_on_a_vcpu_kills_the_vmm_with_sigsys() {
    require_hardware_kvm();
    let mut running = boot_with_every_device();
    // The debug build's test hook: vCPU 0 calls a syscall its filter forbids.
    // SAFETY: kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(running.vmm.id() as i32, libc::SIGUSR1) };
    assert_eq!(sent, 0);
    let status = wait_or_kill(&mut running.vmm, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", running.logs()));
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{status}\n{}",
        running.logs()
    );
}
