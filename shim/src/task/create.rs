//! Create: the container's prestart and createRuntime hooks (on the host),
//! its root file system into the share, the container in the guest, its
//! stdio, its exit watcher. Each step that leaves
//! something behind is held by a guard that undoes it if a later step
//! fails, so a failed Create leaves nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use containerd_shim::protos::api::{CreateTaskRequest, CreateTaskResponse};
use containerd_shim::protos::events::task::{TaskCreate, TaskIO};

use super::TaskService;
use crate::container::{Container, ContainerTable};
use crate::error::{Result, ShimError};
use crate::exits::Watched;
use crate::guest::Guest;
use crate::hooks::{self, Hooks};
use crate::host_namespaces::refuse_host_namespaces;
use crate::io::StdioPaths;
use crate::process::Process;
use crate::volumes::{self, VolumePlan};

impl TaskService {
    pub(super) async fn create_task(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unsupported("cocoon cannot restore checkpoints"));
        }
        let bundle = Path::new(&req.bundle);
        let spec_json = std::fs::read(bundle.join("config.json")).map_err(|e| {
            ShimError::BadRequest(format!("reading {}/config.json: {e}", req.bundle))
        })?;
        let spec: serde_json::Value = serde_json::from_slice(&spec_json).map_err(|e| {
            ShimError::BadRequest(format!("invalid OCI spec in {}: {e}", req.bundle))
        })?;
        let started = Instant::now();
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        refuse_host_namespaces(&spec)?;
        let hooks = Hooks::of_spec(&spec)?;
        let volumes = VolumePlan::for_spec(&req.id, &spec, &volumes::Host)?;
        let registered = Registration::new(&self.containers, &req.id, &req.bundle, &stdio)?;
        let (sandbox, launched) = self.ensure_sandbox(&req, &spec).await?;
        let netns = sandbox.netns();
        let state = hooks::State::new(&req.id, &req.bundle, &spec, netns.as_deref());
        let hooked = HooksRun::new(&hooks, &state);
        if !launched {
            // The first container's ran in the launch, before the network.
            hooks.run_create(&state).await?;
        }

        let mounted = ContainerMounts::new(&sandbox, &req.id);
        // Relative to the bundle, as runc reads it.
        let root = bundle.join(spec["root"]["path"].as_str().unwrap_or("rootfs"));
        let guest_rootfs = sandbox.mount_rootfs(&req.id, &req.rootfs, &root).await?;
        sandbox.mount_volumes(&req.id, &volumes.host)?;
        let mut guest_spec = volumes.guest_spec;
        if let Some(own) = sandbox.own_netns() {
            crate::network::join_own_netns(&mut guest_spec, &own);
        }
        let guest_spec = serde_json::to_vec(&guest_spec).map_err(|e| {
            ShimError::BadRequest(format!("invalid OCI spec in {}: {e}", req.bundle))
        })?;
        let guest_pid = sandbox
            .agent()
            .create_container(&req.id, guest_spec, &guest_rootfs, stdio.wanted())
            .await?;
        let pid = sandbox.host_pid();
        let created = GuestContainer::new(&sandbox, &req.id, mounted);
        let relay = sandbox.attach_stdio(&req.id, "", &stdio).await?;
        self.containers.with_process(&req.id, "", |p| p.pid = pid)?;
        created.keep();
        registered.keep();
        hooked.keep();
        tracing::info!(
            "container {} created in {:?} (guest pid {guest_pid})",
            req.id,
            started.elapsed()
        );

        self.watch_exit(
            sandbox,
            Watched {
                container: req.id.clone(),
                exec: String::new(),
                relay,
                stdin: stdio.stdin.clone(),
            },
        );
        self.events
            .publish(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: stdio.stdin,
                    stdout: stdio.stdout,
                    stderr: stdio.stderr,
                    terminal: stdio.terminal,
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            })
            .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }
}

/// Create hooks that ran: a failed Create runs the poststop hooks, as
/// runc's delete after a failed create does (nerdctl's undoes its CNI
/// set-up there).
struct HooksRun {
    hooks: Option<(Hooks, hooks::State)>,
}

impl HooksRun {
    fn new(hooks: &Hooks, state: &hooks::State) -> Self {
        HooksRun {
            hooks: hooks.wire_network().then(|| (hooks.clone(), state.clone())),
        }
    }

    fn keep(mut self) {
        self.hooks = None;
    }
}

impl Drop for HooksRun {
    fn drop(&mut self) {
        if let Some((hooks, state)) = self.hooks.take() {
            tokio::spawn(async move { hooks.run_poststop(&state).await });
        }
    }
}

/// The container's entry in the table, taken first so that a second Create
/// of the same id is refused; removed again unless kept.
struct Registration {
    containers: ContainerTable,
    id: String,
    kept: bool,
}

impl Registration {
    fn new(
        containers: &ContainerTable,
        id: &str,
        bundle: &str,
        stdio: &StdioPaths,
    ) -> Result<Self> {
        let mut table = containers.lock();
        if table.contains(id) {
            return Err(ShimError::ContainerExists(id.into()));
        }
        let container = Container {
            bundle: bundle.into(),
            processes: HashMap::from([(String::new(), Process::new(stdio.clone()))]),
        };
        table.insert(id, container);
        Ok(Registration {
            containers: containers.clone(),
            id: id.into(),
            kept: false,
        })
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.kept {
            self.containers.lock().remove(&self.id);
        }
    }
}

/// The container's root file system and volumes in the share (also partly
/// mounted ones): unmounted when dropped, unless the container in the guest
/// took them.
struct ContainerMounts {
    sandbox: Arc<dyn Guest>,
    id: String,
    kept: bool,
}

impl ContainerMounts {
    fn new(sandbox: &Arc<dyn Guest>, id: &str) -> Self {
        ContainerMounts {
            sandbox: sandbox.clone(),
            id: id.into(),
            kept: false,
        }
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for ContainerMounts {
    fn drop(&mut self) {
        if !self.kept {
            self.sandbox.unmount_container(&self.id);
        }
    }
}

/// A container created in the guest, with its root file system: removed
/// from the guest, then unmounted, when dropped unless kept.
struct GuestContainer {
    sandbox: Arc<dyn Guest>,
    id: String,
    rootfs: Option<ContainerMounts>,
}

impl GuestContainer {
    fn new(sandbox: &Arc<dyn Guest>, id: &str, rootfs: ContainerMounts) -> Self {
        GuestContainer {
            sandbox: sandbox.clone(),
            id: id.into(),
            rootfs: Some(rootfs),
        }
    }

    /// The container stays: so does its root file system.
    fn keep(mut self) {
        if let Some(rootfs) = self.rootfs.take() {
            rootfs.keep();
        }
    }
}

impl Drop for GuestContainer {
    fn drop(&mut self) {
        let Some(rootfs) = self.rootfs.take() else {
            return;
        };
        let sandbox = self.sandbox.clone();
        let id = self.id.clone();
        // Removal is a call to the guest: it finishes after the failed
        // Create has answered. The unmount waits for it.
        tokio::spawn(async move {
            if let Err(error) = sandbox.agent().remove_container(&id, true).await {
                tracing::warn!("removing {id} from the guest after a failed create: {error}");
            }
            drop(rootfs);
        });
    }
}
