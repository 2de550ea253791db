//! Helpers shared by Cocoon's end-to-end tests.
//!
//! Tests that need KVM are `#[ignore = "needs real KVM: ..."]`, so a plain
//! `cargo test` reports them as skipped and why; `make kvm-test` runs them with
//! `--ignored` inside tests/kvm-host, where [`require_hardware_kvm`] holds. Run
//! anywhere else, they fail loudly instead of passing vacuously.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use cocoon_vmm_command::{Console, VmmCommand};
use wait_timeout::ChildExt;

pub mod containerd;
pub mod cri;
pub mod kubernetes;
pub mod nerdctl;
pub mod oci;
pub mod pattern;
pub mod sandbox;

/// The project checkout.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where `make` puts the guest kernel and initramfs.
pub fn guest_dir() -> PathBuf {
    repo_root().join("build/guest")
}

/// A build output the test depends on, or a panic that says how to make it.
pub fn build_output(name: &str) -> PathBuf {
    let path = guest_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make` first",
        path.display()
    );
    path
}

/// Panics unless this machine has hardware KVM (`kvm_amd` or `kvm_intel`).
/// Our machines' own /dev/kvm is kvm_pvm, which cannot boot our guests.
pub fn require_hardware_kvm() {
    let hardware = ["kvm_amd", "kvm_intel"]
        .iter()
        .any(|module| Path::new("/sys/module").join(module).is_dir());
    assert!(
        hardware && Path::new("/dev/kvm").exists(),
        "this test needs hardware KVM (kvm_amd or kvm_intel) and /dev/kvm: run it through \
         tests/kvm-host, as `make kvm-test` does"
    );
}

/// Waits for `child` at most `limit`; kills it (and says so) when it overran.
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Result<ExitStatus, String> {
    match child.wait_timeout(limit) {
        Ok(Some(status)) => Ok(status),
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("still running after {limit:?}; killed"))
        }
        Err(error) => Err(format!("waiting failed: {error}")),
    }
}

/// Runs `command` (stdin closed) with its stdout and stderr in files
/// `NAME.out` / `NAME.err` of `dir` (a pipe could fill and stall a client
/// that leaves a child behind), killed after `limit`; its output.
pub fn output_within(command: &mut Command, dir: &Path, name: &str, limit: Duration) -> Output {
    let out_path = dir.join(format!("{name}.out"));
    let err_path = dir.join(format!("{name}.err"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("{name} does not run: {e}"));
    let status = match wait_or_kill(&mut child, limit) {
        Ok(status) => status,
        Err(error) => panic!(
            "{name} {:?}: {error}",
            command.get_args().collect::<Vec<_>>()
        ),
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// Where `make` puts every release binary. All of them are linked
/// statically (see the Makefile), so they name the target.
pub fn release_dir() -> PathBuf {
    repo_root().join("target/x86_64-unknown-linux-gnu/release")
}

/// The static guest-side test tool (`make` builds it).
pub fn guest_probe() -> PathBuf {
    let path = release_dir().join("cocoon-guest-probe");
    assert!(
        path.is_file(),
        "{} is missing: run `make` first",
        path.display()
    );
    path
}

/// Polls `path` until it contains `needle`, at most `limit`.
pub fn wait_for_text(path: &Path, needle: &str, limit: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{needle:?} did not appear within {limit:?}; last lines:\n{}",
                tail(&text, 20)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `fd` is readable (for a listener: a connection is waiting to
/// be accepted), at most `limit`. False when the time ran out, so a peer that
/// never connects fails a test instead of hanging it.
pub fn readable_within(fd: impl AsFd, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pollfd = libc::pollfd {
            fd: fd.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: poll(2) on one pollfd that lives across the call.
        match unsafe { libc::poll(&mut pollfd, 1, ms) } {
            0 => return false,
            n if n > 0 => return true,
            _ => {
                let error = std::io::Error::last_os_error();
                assert_eq!(
                    error.kind(),
                    std::io::ErrorKind::Interrupted,
                    "poll: {error}"
                );
            }
        }
    }
}

/// Calls `probe` (every 500 ms, for at most `limit`) until what it returns
/// contains `wanted`; returns the last answer. For state that becomes true a
/// little later (a file cache timing out, a server coming up).
pub fn poll_until(limit: Duration, wanted: &str, mut probe: impl FnMut() -> String) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let said = probe();
        if said.contains(wanted) || std::time::Instant::now() > deadline {
            return said;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The last `lines` lines of `text`, for failure messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An initramfs built from Debian's busybox-static whose /init mounts the
/// usual file systems and runs `script` (busybox sh). Lets a test boot a guest
/// that is not ours and ask it questions.
pub fn busybox_initramfs(dir: &Path, script: &str) -> PathBuf {
    busybox_initramfs_with(dir, script, &[])
}

/// [`busybox_initramfs`] plus `extra` files: (host path, path in the guest).
pub fn busybox_initramfs_with(dir: &Path, script: &str, extra: &[(&Path, &str)]) -> PathBuf {
    let root = dir.join("initramfs-root");
    std::fs::create_dir_all(root.join("bin")).expect("create initramfs root");
    for (source, target) in extra {
        let target = root.join(target.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().expect("a file path")).expect("create directory");
        std::fs::copy(source, &target)
            .unwrap_or_else(|e| panic!("copy {} into the initramfs: {e}", source.display()));
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (Debian busybox-static; make deps installs it)");
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mkdir -p /proc /sys /dev\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         {script}\n"
    );
    let init_path = root.join("init");
    std::fs::write(&init_path, init).expect("write /init");
    std::fs::set_permissions(
        &init_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod /init");
    let image = dir.join("busybox-initramfs.img");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc -R 0:0 --quiet > '{}'",
            root.display(),
            image.display()
        ))
        .status()
        .expect("cpio runs");
    assert!(status.success(), "packing the busybox initramfs failed");
    image
}

/// What a finished VMM run left: its exit status, the guest console and the
/// VMM's own stderr.
#[derive(Debug)]
pub struct VmmRun {
    pub status: Result<ExitStatus, String>,
    pub console: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl VmmRun {
    /// Panics with the console tail and stderr unless the VMM exited 0.
    pub fn assert_success(&self) {
        match &self.status {
            Ok(status) if status.success() => {}
            other => panic!(
                "cocoon-vmm: {other:?}\nstderr:\n{}\nconsole tail:\n{}",
                self.stderr,
                tail(&self.console, 30)
            ),
        }
    }
}

/// Runs the cocoon-vmm binary `vmm` as `command` says, with its console in a
/// file; waits at most `limit`.
pub fn run_vmm(vmm: &Path, command: VmmCommand, limit: Duration) -> VmmRun {
    let dir = tempfile::tempdir().expect("temporary directory");
    let console_path = dir.path().join("console.log");
    let stderr_path = dir.path().join("stderr.log");
    let started = std::time::Instant::now();
    let mut child = command
        .console(Console::File(console_path.clone()))
        .command(vmm)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("cocoon-vmm starts");
    let status = wait_or_kill(&mut child, limit);
    VmmRun {
        status,
        console: std::fs::read_to_string(&console_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}
