//! A real guest for agent tests: cocoon-vmm booting the built kernel and the
//! agent's initramfs, with a shared directory and the hybrid vsock socket,
//! and a busybox root file system to run containers from.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cocoon_protocol::client::{Agent, AgentCalls, GuestRootfs};
use cocoon_vmm_command::{NetDevice, SandboxVm, VmmCommand};

use crate::{build_output, guest_probe, release_dir, tail};

/// Where the share is mounted in the guest, as the shim mounts it.
pub const GUEST_SHARE: &str = cocoon_protocol::GUEST_SHARE_DIR;

/// How long a guest may take to answer its first health call in the
/// emulated host VM.
const BOOT_DEADLINE: Duration = Duration::from_secs(60);

/// What the console file of a test sandbox may hold.
pub const CONSOLE_LIMIT_BYTES: u64 = 1 << 20;

pub struct Sandbox {
    dir: tempfile::TempDir,
    vmm: std::sync::Mutex<Child>,
    pub share: PathBuf,
    pub vsock: PathBuf,
    console: PathBuf,
}

impl Sandbox {
    /// Boots a guest as the shim boots a sandbox (the same cocoon-vmm command
    /// line), with `memory_mib` of RAM and an empty share.
    pub fn boot(memory_mib: u32) -> Self {
        Self::boot_with_net(memory_mib, None)
    }

    /// As [`boot`](Self::boot), with a network interface on `net`'s tap
    /// (whose fd must be open without CLOEXEC, for cocoon-vmm to inherit).
    pub fn boot_with_net(memory_mib: u32, net: Option<NetDevice>) -> Self {
        Self::boot_with(memory_mib, net, &[])
    }

    /// As [`boot`](Self::boot), booted as a template
    /// ([`cocoon_protocol::TEMPLATE_ARG`]): the agent reports the snapshot
    /// point (which cocoon-vmm ignores unless it makes a template) and runs
    /// nothing before SetIdentity.
    pub fn boot_template(memory_mib: u32) -> Self {
        Self::boot_with(memory_mib, None, &[cocoon_protocol::TEMPLATE_ARG])
    }

    fn boot_with(memory_mib: u32, net: Option<NetDevice>, kernel_args: &[&str]) -> Self {
        let vmm = release_dir().join("cocoon-vmm");
        assert!(
            vmm.is_file(),
            "{} is missing: run `make` first",
            vmm.display()
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let share = dir.path().join("share");
        std::fs::create_dir(&share).expect("share directory");
        let images = dir.path().join("images");
        std::fs::create_dir(&images).expect("image share directory");
        let vsock = dir.path().join("vsock.sock");
        let console = dir.path().join("console.log");
        let jail = dir.path().join("jail");
        std::fs::create_dir(&jail).expect("jail directory");
        let mut command = VmmCommand::sandbox(&SandboxVm {
            kernel: &build_output("vmlinux"),
            initramfs: &build_output("initramfs.img"),
            vcpus: 1,
            memory_mib: memory_mib.into(),
            share: &share,
            images: &images,
            vsock_uds: &vsock,
            console: &console,
            guest_debug: std::env::var_os("COCOON_TEST_GUEST_DEBUG").is_some(),
            console_limit_bytes: CONSOLE_LIMIT_BYTES,
            jail: &jail,
            cgroup: None,
            net,
            disk_fd: None,
        });
        for arg in kernel_args {
            command = command.kernel_arg(*arg);
        }
        let child = command
            .command(&vmm)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("vmm.log")).expect("vmm log"))
            .spawn()
            .expect("cocoon-vmm starts");
        Sandbox {
            dir,
            vmm: std::sync::Mutex::new(child),
            share,
            vsock,
            console,
        }
    }

    /// Connects to the agent and mounts the share at [`GUEST_SHARE`].
    pub async fn agent(&self) -> Agent {
        let agent = self.connect().await;
        if let Err(error) = agent.mount_share().await {
            panic!("mounting the share: {error}\n{}", self.diagnostics());
        }
        agent
    }

    /// Connects to the agent once it answers (nothing mounted).
    pub async fn connect(&self) -> Agent {
        let started = std::time::Instant::now();
        let agent = loop {
            match Agent::connect(&self.vsock, Duration::from_secs(1)).await {
                Ok(agent) => break agent,
                Err(error) if started.elapsed() > BOOT_DEADLINE => {
                    panic!("{error}\n{}", self.diagnostics())
                }
                Err(_) => {}
            }
            // A VMM that died will not start answering: say why at once.
            if let Ok(Some(status)) = self.vmm.lock().unwrap().try_wait() {
                panic!(
                    "cocoon-vmm exited ({status}) before the agent answered\n{}",
                    self.diagnostics()
                );
            }
        };
        agent
    }

    /// Waits for the VMM to exit by itself, at most `limit`.
    pub async fn wait_exit(&self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.vmm.lock().unwrap().try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Sends SIGTERM to the VMM (which asks the guest to shut down).
    pub fn terminate(&self) {
        let pid = self.vmm.lock().unwrap().id();
        // SAFETY: kill(2) on the pid of our own child, which we have not reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }

    /// Console tail and VMM log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let console = std::fs::read_to_string(&self.console).unwrap_or_default();
        let vmm = std::fs::read_to_string(self.dir.path().join("vmm.log")).unwrap_or_default();
        format!(
            "--- guest console (tail) ---\n{}\n--- cocoon-vmm ---\n{}",
            tail(&console, 40),
            tail(&vmm, 20)
        )
    }

    /// Lays out a busybox root file system for container `name` in the share
    /// and returns its path as the guest sees it.
    pub fn busybox_rootfs(&self, name: &str) -> GuestRootfs {
        busybox_rootfs(&self.share.join(name).join("rootfs"));
        GuestRootfs::writable(format!("{GUEST_SHARE}/{name}/rootfs"))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let vmm = self.vmm.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = vmm.kill();
        let _ = vmm.wait();
    }
}

/// A ttrpc deadline generous enough for the emulated host VM.
pub fn deadline() -> ttrpc::context::Context {
    cocoon_protocol::client::deadline(Duration::from_secs(30))
}

/// busybox-static with every applet linked, the guest probe as
/// /bin/probe, and the passwd/group files of a minimal image.
pub fn busybox_rootfs(root: &Path) {
    for dir in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "home/user",
    ] {
        std::fs::create_dir_all(root.join(dir)).expect("rootfs directory");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("/bin/busybox (busybox-static)");
    std::fs::copy(guest_probe(), root.join("bin/probe")).expect("copy the guest probe");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).expect("applet link");
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod /tmp");
}
