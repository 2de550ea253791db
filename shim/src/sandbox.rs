//! A sandbox: one cocoon-vmm process, its guest, and the agent in it.
//!
//! State lives in `<state_dir>/<namespace>/<sandbox id>/`: `share/` (the
//! virtio-fs share; container root file systems are mounted under it),
//! `vsock.sock` (the hybrid vsock socket), `console.log`, `vmm.log` and
//! `vmm.pid`. [`clean_up_leftovers`] removes all of it, also after a crash.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use cocoon_protocol::client::{Agent, AgentCalls};
use cocoon_protocol::GUEST_SHARE_DIR;
use cocoon_vmm_command::{SandboxVm, VmmCommand};
use containerd_shim::monitor::{monitor_subscribe, monitor_unsubscribe, Subject, Topic};
use containerd_shim::protos::api::Mount;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::Result as ShimResult;
use crate::guest::{vm_exited, Guest};
use crate::io::{self, Relay, StdioPaths};
use crate::rootfs;
use crate::vm_shape::VmShape;

/// How long the guest gets to stop by itself before the VMM is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long the agent may take to answer a Shutdown call.
const SHUTDOWN_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the agent may take to mount the share.
const MOUNT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Console lines quoted in boot failures.
const CONSOLE_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the {what} {path} does not exist (set `{key}` in the cocoon config, /etc/cocoon/config.toml)")]
    Missing {
        what: &'static str,
        key: &'static str,
        path: String,
    },
    #[error("creating the sandbox state in {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {vmm}: {source}")]
    Spawn {
        vmm: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest did not come up: {reason}\n--- guest console (last lines) ---\n{console}")]
    Boot { reason: String, console: String },
    #[error("the agent: {0}")]
    Agent(String),
}

pub struct Sandbox {
    /// containerd's namespace, which log drivers are told.
    namespace: String,
    dir: PathBuf,
    share: PathBuf,
    vmm_pid: i32,
    agent: Agent,
    vmm_exit: watch::Receiver<Option<i32>>,
}

pub fn state_dir(config: &Config, namespace: &str, id: &str) -> PathBuf {
    config.state_dir.join(namespace).join(id)
}

/// The file in the first container's bundle that records its sandbox's
/// state directory: the config that chose it may have come with the Create
/// call, which a `shim delete` after a crash never sees.
const STATE_DIR_RECORD: &str = "cocoon-state-dir";

pub fn record_state_dir(bundle: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::write(
        bundle.join(STATE_DIR_RECORD),
        dir.as_os_str().as_encoded_bytes(),
    )
}

/// The state directory `bundle` records for sandbox `namespace`/`id`, if it
/// records one that is plausibly that sandbox's (absolute, ending in
/// `namespace/id`): it is about to be deleted.
pub fn recorded_state_dir(bundle: &Path, namespace: &str, id: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(bundle.join(STATE_DIR_RECORD)).ok()?;
    let dir = PathBuf::from(text);
    (dir.is_absolute() && dir.ends_with(Path::new(namespace).join(id))).then_some(dir)
}

impl Sandbox {
    pub async fn start(
        config: &Config,
        namespace: &str,
        dir: PathBuf,
        shape: &VmShape,
    ) -> Result<Self, SandboxError> {
        for (what, key, path) in [
            ("guest kernel", "kernel", &config.kernel),
            ("guest initramfs", "initramfs", &config.initramfs),
            ("VMM binary", "vmm", &config.vmm),
        ] {
            if !path.is_file() {
                return Err(SandboxError::Missing {
                    what,
                    key,
                    path: path.display().to_string(),
                });
            }
        }
        clean_up_leftovers(&dir);
        let share = dir.join("share");
        std::fs::create_dir_all(&share).map_err(|source| SandboxError::State {
            path: share.display().to_string(),
            source,
        })?;
        let vsock = dir.join("vsock.sock");
        let jail = dir.join("jail");
        std::fs::create_dir_all(&jail).map_err(|source| SandboxError::State {
            path: jail.display().to_string(),
            source,
        })?;
        let console = dir.join("console.log");
        let vmm_log =
            std::fs::File::create(dir.join("vmm.log")).map_err(|source| SandboxError::State {
                path: dir.display().to_string(),
                source,
            })?;

        // Subscribe before spawning: the shim's reaper collects every child
        // (waitpid(-1)), so the VMM's exit only ever arrives through here.
        let mut exits = monitor_subscribe(Topic::Pid)
            .await
            .map_err(|e| SandboxError::Agent(format!("watching the VMM: {e}")))?;
        let mut command = VmmCommand::sandbox(&SandboxVm {
            kernel: &config.kernel,
            initramfs: &config.initramfs,
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib.into(),
            share: &share,
            vsock_uds: &vsock,
            console: &console,
            guest_debug: config.guest_debug,
            console_limit_bytes: config.console_limit_mib << 20,
            jail: &jail,
            cgroup: None,
        })
        .command(&config.vmm);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(vmm_log);
        let launched = std::time::Instant::now();
        let child = command.spawn().map_err(|source| SandboxError::Spawn {
            vmm: config.vmm.display().to_string(),
            source,
        })?;
        let vmm_pid = child.id() as i32;
        let _ = std::fs::write(dir.join("vmm.pid"), vmm_pid.to_string());
        let (exit_sender, vmm_exit) = watch::channel(None);
        tokio::spawn(async move {
            while let Some(event) = exits.rx.recv().await {
                if matches!(event.subject, Subject::Pid(pid) if pid == vmm_pid) {
                    let _ = exit_sender.send(Some(event.exit_code));
                    break;
                }
            }
            let _ = monitor_unsubscribe(exits.id).await;
        });

        let boot_timeout = Duration::from_secs(config.boot_timeout_seconds);
        let mut died = vmm_exit.clone();
        let connected = tokio::select! {
            agent = Agent::connect(&vsock, boot_timeout) => agent.map_err(|e| e.to_string()),
            () = vm_exited(&mut died) => {
                // Let the VMM's last words reach its log.
                Err(format!("cocoon-vmm exited: {}", last_line(&dir.join("vmm.log"))))
            }
        };
        let agent = match connected {
            Ok(agent) => agent,
            Err(reason) => {
                let _ = kill(Pid::from_raw(vmm_pid), Signal::SIGKILL);
                let console = console_tail(&console, CONSOLE_TAIL_LINES);
                clean_up_leftovers(&dir);
                return Err(SandboxError::Boot { reason, console });
            }
        };
        tracing::info!(
            "cocoon-vmm {vmm_pid}: agent ready {:?} after launch",
            launched.elapsed()
        );
        let sandbox = Sandbox {
            namespace: namespace.into(),
            dir,
            share,
            vmm_pid,
            agent,
            vmm_exit,
        };
        let mounted = sandbox
            .agent
            .with_call_timeout(MOUNT_CALL_TIMEOUT)
            .mount_share()
            .await;
        if let Err(error) = mounted {
            sandbox.stop().await;
            return Err(SandboxError::Agent(format!(
                "mounting the share in the guest: {error}"
            )));
        }
        tracing::info!(
            "cocoon-vmm {vmm_pid}: share mounted {:?} after launch",
            launched.elapsed()
        );
        Ok(sandbox)
    }

    /// The guest path of a path under the share.
    fn guest_path(&self, host: &Path) -> Option<String> {
        let relative = host.strip_prefix(&self.share).ok()?;
        Some(format!("{GUEST_SHARE_DIR}/{}", relative.display()))
    }

    /// Shuts the guest down (the agent stops its containers), kills the VMM
    /// if it lingers, and removes the sandbox's state.
    pub async fn stop(&self) {
        let mut exit = self.vmm_exit.clone();
        if exit.borrow().is_none() {
            let agent = self.agent.with_call_timeout(SHUTDOWN_CALL_TIMEOUT);
            let _ = agent.shutdown().await;
            if tokio::time::timeout(STOP_GRACE, exit.wait_for(Option::is_some))
                .await
                .is_err()
            {
                tracing::warn!(
                    "the guest did not shut down within {STOP_GRACE:?}; killing cocoon-vmm"
                );
                let _ = kill(Pid::from_raw(self.vmm_pid), Signal::SIGKILL);
                let _ = tokio::time::timeout(STOP_GRACE, exit.wait_for(Option::is_some)).await;
            }
        }
        clean_up_leftovers(&self.dir);
    }
}

#[async_trait]
impl Guest for Sandbox {
    fn agent(&self) -> &dyn AgentCalls {
        &self.agent
    }

    async fn mount_rootfs(&self, id: &str, mounts: &[Mount], root: &Path) -> ShimResult<String> {
        let target = rootfs::target(&self.share, id);
        rootfs::mount_rootfs(mounts, root, &target).await?;
        Ok(self.guest_path(&target).unwrap_or_default())
    }

    fn unmount_rootfs(&self, id: &str) {
        rootfs::unmount_rootfs(&self.share, id);
    }

    async fn attach_stdio(&self, id: &str, exec: &str, stdio: &StdioPaths) -> ShimResult<Relay> {
        Ok(io::attach(&self.agent, &self.namespace, id, exec, stdio).await?)
    }

    fn vmm_exit(&self) -> watch::Receiver<Option<i32>> {
        self.vmm_exit.clone()
    }

    async fn stop(&self) {
        Sandbox::stop(self).await;
    }
}

/// Removes what a sandbox leaves in `dir`: its VMM (if the pid file still
/// names a live cocoon-vmm), mounts under the share, sockets, the directory.
/// Safe to call on a directory that does not exist.
pub fn clean_up_leftovers(dir: &Path) {
    if let Some(pid) = std::fs::read_to_string(dir.join("vmm.pid"))
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
    {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("cocoon-vmm") {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let share = dir.join("share");
    if share.exists() {
        let _ = containerd_shim::mount::umount_recursive(share.to_str(), libc::MNT_DETACH);
    }
    // Never delete through a mount: that would delete the container's files.
    if has_mounts_under(dir) {
        tracing::error!(
            "{} still has mounts under it; leaving it in place",
            dir.display()
        );
        return;
    }
    if let Err(error) = std::fs::remove_dir_all(dir) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {error}", dir.display());
        }
    }
}

/// Whether any mount point lies at or under `dir`.
pub fn has_mounts_under(dir: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| Path::new(mount_point).starts_with(dir))
}

fn console_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn last_line(path: &Path) -> String {
    console_tail(path, 3).trim().to_owned()
}
