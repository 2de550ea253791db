//! A sandbox: one cocoon-vmm process, its guest, and the agent in it.
//!
//! State lives in `<state_dir>/<namespace>/<sandbox id>/` (0700, as is every
//! directory the shim makes): `mounts/` and `share/` (the virtio-fs share and
//! the host-only directory behind it, see [`crate::share`]), `jail/` (the
//! VMM's root), `vsock.sock` (the hybrid vsock socket), `console.log`
//! (capped), `vmm.log`, `vmm.pid`, `cgroup` (the VMM's cgroup) and
//! `network.json` (what the shim added to the pod's network namespace, see
//! [`crate::network`]) and `netns` (the sandbox's own network namespace,
//! when its spec asks for a new one and has hooks to wire it, see
//! [`crate::network::own_netns`]).
//! [`clean_up_leftovers`] removes all of it, also after a crash.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use cocoon_protocol::client::{host_identity, Agent, AgentCalls, GuestRootfs};
use cocoon_vmm_command::{NetDevice, SandboxVm, VmmCommand};
use containerd_shim::protos::api::Mount;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::cgroup;
use crate::config::Config;
use crate::error::Result as ShimResult;
use crate::guest::{vm_exited, Guest};
use crate::hooks::{self, HookError, Hooks};
use crate::io::{self, Relay, StdioPaths};
use crate::network::{self, NetworkError};
use crate::scratch_disk::{ScratchDisk, ScratchDiskError, VMM_DISK_FD};
use crate::share::{Share, ShareError};
use crate::template::{self, TemplateShape};
use crate::vm_shape::VmShape;
use crate::vmm_process::{self, pass_fds, WatchedVmm, VMM_TAP_FD};
use crate::volumes::HostVolume;

/// How long the guest gets to stop by itself before the VMM is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long the agent may take to answer a Shutdown call.
const SHUTDOWN_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the agent may take to mount the share.
const MOUNT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent may take to configure the guest's network.
const NETWORK_CALL_TIMEOUT: Duration = Duration::from_secs(10);
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
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    ScratchDisk(#[from] ScratchDiskError),
}

/// Where the sandbox's network namespace comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum NetnsPlan {
    /// None: the guest gets only `lo`.
    None,
    /// The one the spec names (CRI's, made and wired by CNI).
    Existing(PathBuf),
    /// A new one the shim makes, for the first container's hooks to wire.
    Own,
}

/// The first container's hooks that run before the network is scanned,
/// and the state they are told (the namespace already in it).
pub struct BeforeNetwork<'a> {
    pub hooks: &'a Hooks,
    pub state: hooks::State,
}

pub struct Sandbox {
    /// containerd's namespace, which log drivers are told.
    namespace: String,
    dir: PathBuf,
    share: Share,
    vmm_pid: i32,
    agent: Agent,
    vmm_exit: watch::Receiver<Option<i32>>,
    /// The sandbox's network namespace, told to every container's hooks.
    netns: Option<PathBuf>,
    /// Whether the VM has a scratch disk for its containers' writable layers.
    scratch_disk: bool,
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
        cgroup: Option<&Path>,
        netns: NetnsPlan,
        before_network: BeforeNetwork<'_>,
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
        let booted = match Self::prepare(config, &dir, cgroup, netns, before_network).await {
            Ok(prepared) => Self::boot(config, namespace, dir.clone(), shape, prepared).await,
            Err(error) => Err(error),
        };
        if booted.is_err() {
            clean_up_leftovers(&dir);
        }
        booted
    }

    // The state directory, the share, the VMM's jail and cgroup, the
    // network namespace (made here if it is the sandbox's own), the first
    // container's hooks, the tap in the network namespace.
    async fn prepare(
        config: &Config,
        dir: &Path,
        cgroup: Option<&Path>,
        netns: NetnsPlan,
        before_network: BeforeNetwork<'_>,
    ) -> Result<Prepared, SandboxError> {
        let state = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SandboxError::State {
                path: path.display().to_string(),
                source,
            }
        };
        create_private_dir(dir).map_err(state(dir))?;
        let share = Share::create(dir, config.share_size_mib)?;
        let jail = dir.join("jail");
        create_private_dir(&jail).map_err(state(&jail))?;
        let cgroup = match cgroup {
            Some(relative) => {
                let sandbox = dir.file_name().unwrap_or_default().to_string_lossy();
                let path = cgroup::create(Path::new(cgroup::CGROUP_ROOT), relative, &sandbox)?;
                std::fs::write(dir.join(CGROUP_RECORD), path.as_os_str().as_encoded_bytes())
                    .map_err(state(dir))?;
                Some(path)
            }
            None => None,
        };
        let vmm_log = std::fs::File::create(dir.join("vmm.log")).map_err(state(dir))?;
        let netns = match netns {
            NetnsPlan::None => None,
            NetnsPlan::Existing(path) => Some(path),
            NetnsPlan::Own => Some(network::own_netns::create(dir)?),
        };
        let BeforeNetwork { hooks, state } = before_network;
        hooks.run_create(&state).await?;
        let network = match &netns {
            Some(netns) => network::attach(netns, dir)?,
            None => None,
        };
        Ok(Prepared {
            share,
            jail,
            cgroup,
            vmm_log,
            network,
            netns,
        })
    }

    async fn boot(
        config: &Config,
        namespace: &str,
        dir: PathBuf,
        shape: &VmShape,
        prepared: Prepared,
    ) -> Result<Self, SandboxError> {
        let Prepared {
            share,
            jail,
            cgroup,
            vmm_log,
            network,
            netns,
        } = prepared;
        let vsock = dir.join("vsock.sock");
        let console = dir.join("console.log");
        let disk_bytes = (config.scratch_disk_gib > 0).then_some(config.scratch_disk_gib << 30);
        let template = template::for_sandbox(
            config,
            TemplateShape::new(shape, network.is_some(), disk_bytes),
        )
        .await;
        let disk = match disk_bytes {
            Some(bytes) => Some(ScratchDisk::formatted(&config.scratch_dir, bytes).await?),
            None => None,
        };
        let vm = SandboxVm {
            kernel: &config.kernel,
            initramfs: &config.initramfs,
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib.into(),
            share: &share.exposed(),
            images: &share.exposed_images(),
            vsock_uds: &vsock,
            console: &console,
            guest_debug: config.guest_debug,
            console_limit_bytes: config.console_limit_mib << 20,
            jail: &jail,
            cgroup: cgroup.as_deref(),
            net: network.as_ref().map(|attached| NetDevice {
                tap_fd: VMM_TAP_FD,
                mac: attached.mac,
            }),
            disk_fd: disk.as_ref().map(|_| VMM_DISK_FD),
        };
        let fds: Vec<(RawFd, RawFd)> = network
            .as_ref()
            .map(|attached| (attached.tap.as_raw_fd(), VMM_TAP_FD))
            .into_iter()
            .chain(
                disk.as_ref()
                    .map(|disk| (disk.file.as_raw_fd(), VMM_DISK_FD)),
            )
            .collect();
        let launched = std::time::Instant::now();
        let restored = match &template {
            Some(template) => {
                let command = VmmCommand::sandbox(&vm).restore_from(&template.dir);
                match start_vm(config, &dir, &command, &fds, &vmm_log).await {
                    Ok(started) => Some(started),
                    Err(error) => {
                        tracing::warn!(
                            "starting from the VM template {} failed, booting instead: {error}",
                            template.dir.display()
                        );
                        template.discard();
                        None
                    }
                }
            }
            None => None,
        };
        let from_template = restored.is_some();
        let StartedVm {
            pid: vmm_pid,
            exit: vmm_exit,
            agent,
        } = match restored {
            Some(started) => started,
            None => start_vm(config, &dir, &VmmCommand::sandbox(&vm), &fds, &vmm_log).await?,
        };
        // The VMM has the tap and the disk now; ours would only keep them alive.
        drop(disk);
        let network_request = network.map(|attached| attached.request);
        tracing::info!(
            "cocoon-vmm {vmm_pid}: agent ready {:?} after launch ({})",
            launched.elapsed(),
            if from_template {
                "from a template"
            } else {
                "booted"
            }
        );
        let sandbox = Sandbox {
            namespace: namespace.into(),
            dir,
            share,
            vmm_pid,
            agent,
            vmm_exit,
            netns,
            scratch_disk: disk_bytes.is_some(),
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
        if let Some(request) = network_request {
            let configured = sandbox
                .agent
                .with_call_timeout(NETWORK_CALL_TIMEOUT)
                .setup_network(request)
                .await;
            if let Err(error) = configured {
                sandbox.stop().await;
                return Err(SandboxError::Agent(format!(
                    "configuring the guest's network: {error}"
                )));
            }
            tracing::info!(
                "cocoon-vmm {vmm_pid}: network configured {:?} after launch",
                launched.elapsed()
            );
        }
        Ok(sandbox)
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

    async fn mount_rootfs(
        &self,
        id: &str,
        mounts: &[Mount],
        root: &Path,
    ) -> ShimResult<GuestRootfs> {
        Ok(self
            .share
            .mount_rootfs(id, mounts, root, self.scratch_disk)
            .await?)
    }

    fn mount_volumes(&self, id: &str, volumes: &[HostVolume]) -> ShimResult<()> {
        for volume in volumes {
            self.share.mount_volume(id, volume)?;
        }
        Ok(())
    }

    fn unmount_container(&self, id: &str) {
        self.share.unmount_container(id);
    }

    fn host_pid(&self) -> u32 {
        self.vmm_pid as u32
    }

    async fn attach_stdio(&self, id: &str, exec: &str, stdio: &StdioPaths) -> ShimResult<Relay> {
        Ok(io::attach(&self.agent, &self.namespace, id, exec, stdio).await?)
    }

    fn vmm_exit(&self) -> watch::Receiver<Option<i32>> {
        self.vmm_exit.clone()
    }

    fn netns(&self) -> Option<PathBuf> {
        self.netns.clone()
    }

    fn own_netns(&self) -> Option<PathBuf> {
        let own = network::own_netns::path(&self.dir);
        self.netns.clone().filter(|netns| *netns == own)
    }

    async fn stop(&self) {
        Sandbox::stop(self).await;
    }
}

/// A VMM whose agent answered.
struct StartedVm {
    pid: i32,
    exit: watch::Receiver<Option<i32>>,
    agent: Agent,
}

/// Starts the VMM `command` describes and connects to its agent; a guest
/// started from a template first gets its own identity (fresh entropy, the
/// host's clock). On failure the VMM is gone and the reason names the
/// VMM's last words and the console's last lines.
async fn start_vm(
    config: &Config,
    dir: &Path,
    command: &VmmCommand,
    fds: &[(RawFd, RawFd)],
    vmm_log: &std::fs::File,
) -> Result<StartedVm, SandboxError> {
    let vsock = dir.join("vsock.sock");
    let console = dir.join("console.log");
    let state = |source| SandboxError::State {
        path: dir.display().to_string(),
        source,
    };
    let mut process = command.command(&config.vmm);
    process
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(vmm_log.try_clone().map_err(state)?);
    if !fds.is_empty() {
        pass_fds(&mut process, fds.to_vec());
    }
    let WatchedVmm { pid, exit } =
        vmm_process::spawn(&mut process)
            .await
            .map_err(|source| SandboxError::Spawn {
                vmm: config.vmm.display().to_string(),
                source,
            })?;
    let _ = std::fs::write(dir.join("vmm.pid"), pid.to_string());
    let boot_timeout = Duration::from_secs(config.boot_timeout_seconds);
    let mut died = exit.clone();
    let connected = tokio::select! {
        agent = Agent::connect(&vsock, boot_timeout) => agent.map_err(|e| e.to_string()),
        () = vm_exited(&mut died) => {
            // Let the VMM's last words reach its log.
            Err(format!("cocoon-vmm exited: {}", last_line(&dir.join("vmm.log"))))
        }
    };
    let identified = match (connected, command.restore_from.is_some()) {
        (Ok(agent), true) => {
            let identity = host_identity().map_err(|e| e.to_string());
            match identity {
                Ok(identity) => agent
                    .set_identity(&identity)
                    .await
                    .map(|()| agent)
                    .map_err(|e| format!("giving the guest its identity: {e}")),
                Err(error) => Err(format!("host entropy: {error}")),
            }
        }
        (connected, _) => connected,
    };
    match identified {
        Ok(agent) => Ok(StartedVm { pid, exit, agent }),
        Err(reason) => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let mut exit = exit;
            let _ = tokio::time::timeout(STOP_GRACE, exit.wait_for(Option::is_some)).await;
            // A killed VMM leaves its socket behind.
            let _ = std::fs::remove_file(&vsock);
            let console = console_tail(&console, CONSOLE_TAIL_LINES);
            Err(SandboxError::Boot { reason, console })
        }
    }
}

/// Removes what a sandbox leaves in `dir`: its VMM (if the pid file still
/// names a live cocoon-vmm), the share's mounts, its cgroup, sockets, the
/// directory. Safe to call on a directory that does not exist.
pub fn clean_up_leftovers(dir: &Path) {
    if let Some(pid) = std::fs::read_to_string(dir.join("vmm.pid"))
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
    {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("cocoon-vmm") {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            wait_until_gone(pid);
        }
    }
    // After the VMM: it holds the tap.
    network::detach(dir);
    network::own_netns::remove(dir);
    Share::unmount_all(dir);
    if let Ok(path) = std::fs::read_to_string(dir.join(CGROUP_RECORD)) {
        cgroup::remove(Path::new(&path));
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

/// The file in the state directory naming the VMM's cgroup, which the shim
/// created and removes.
const CGROUP_RECORD: &str = "cgroup";

/// What a sandbox's VM needs made before it starts.
struct Prepared {
    share: Share,
    jail: PathBuf,
    cgroup: Option<PathBuf>,
    vmm_log: std::fs::File,
    /// The pod's network, when its namespace has an interface.
    network: Option<network::Attached>,
    netns: Option<PathBuf>,
}

/// Creates `dir` and any missing parent, each readable by root only: the
/// state holds the guest's console, sockets and the mounts behind the share.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Waits (at most 2 s) for a killed process to be gone: its cgroup cannot
/// be removed before.
fn wait_until_gone(pid: i32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while Path::new(&format!("/proc/{pid}/stat")).exists() {
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false);
        if zombie || std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn console_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn last_line(path: &Path) -> String {
    console_tail(path, 3).trim().to_owned()
}
