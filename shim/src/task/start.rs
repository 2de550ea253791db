//! Exec (an exec process is added) and Start (of a container's init, or of
//! an exec: run in the guest, stdio attached, exit watched).

use std::sync::Arc;
use std::time::Duration;

use containerd_shim::protos::api::{
    Empty, ExecProcessRequest, StartRequest, StartResponse, Status,
};
use containerd_shim::protos::events::task::{TaskExecAdded, TaskExecStarted, TaskStart};

use super::TaskService;
use crate::error::{Result, ShimError};
use crate::exits::Watched;
use crate::guest::Guest;
use crate::hooks;
use crate::io::StdioPaths;
use crate::process::Process;

const SIGKILL: u32 = 9;
/// How long a killed exec's exit may take to be collected.
const KILLED_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

impl TaskService {
    pub(super) async fn add_exec(&self, req: ExecProcessRequest) -> Result<Empty> {
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| ShimError::BadRequest("exec without a process spec".into()))?;
        {
            let mut table = self.containers.lock();
            let container = table.container_mut(&req.id)?;
            if container.processes.contains_key(&req.exec_id) {
                return Err(ShimError::ExecExists(req.exec_id));
            }
            let mut process = Process::new(StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            });
            process.exec_spec = Some(spec);
            container.processes.insert(req.exec_id.clone(), process);
        }
        self.events
            .publish(TaskExecAdded {
                container_id: req.id,
                exec_id: req.exec_id,
                ..Default::default()
            })
            .await;
        Ok(Empty::new())
    }

    pub(super) async fn start_process(&self, req: StartRequest) -> Result<StartResponse> {
        let sandbox = self.sandbox().await?;
        let pid = if req.exec_id.is_empty() {
            self.start_init(&sandbox, &req.id).await?
        } else {
            self.start_exec(sandbox, &req.id, &req.exec_id).await?
        };
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_init(&self, sandbox: &Arc<dyn Guest>, id: &str) -> Result<u32> {
        let guest_pid = sandbox.agent().start(id).await?;
        tracing::debug!("container {id} started (guest pid {guest_pid})");
        let pid = sandbox.host_pid();
        self.containers
            .with_process(id, "", |p| p.status = Status::RUNNING)?;
        let bundle = self.containers.lock().container(id)?.bundle.clone();
        let (hooks, state) = hooks::of_bundle(id, &bundle, sandbox.netns().as_deref());
        hooks.run_poststart(&state).await;
        self.events
            .publish(TaskStart {
                container_id: id.into(),
                pid,
                ..Default::default()
            })
            .await;
        Ok(pid)
    }

    async fn start_exec(&self, sandbox: Arc<dyn Guest>, id: &str, exec: &str) -> Result<u32> {
        let (spec, stdio) = self
            .containers
            .with_process(id, exec, |p| (p.exec_spec.clone(), p.stdio.clone()))?;
        let spec = spec.ok_or_else(|| ShimError::ExecStarted(exec.into()))?;
        let guest_pid = sandbox.agent().exec(id, exec, spec, stdio.wanted()).await?;
        tracing::debug!("exec {exec} in {id} started (guest pid {guest_pid})");
        let pid = sandbox.host_pid();
        let running = RunningExec::new(&sandbox, id, exec);
        let relay = sandbox.attach_stdio(id, exec, &stdio).await?;
        self.containers.with_process(id, exec, |p| {
            p.pid = pid;
            p.status = Status::RUNNING;
            p.exec_spec = None;
        })?;
        running.keep();
        self.watch_exit(
            sandbox,
            Watched {
                container: id.into(),
                exec: exec.into(),
                relay,
                stdin: stdio.stdin,
            },
        );
        self.events
            .publish(TaskExecStarted {
                container_id: id.into(),
                exec_id: exec.into(),
                pid,
                ..Default::default()
            })
            .await;
        Ok(pid)
    }
}

/// An exec running in the guest that nobody watches yet: killed (and its
/// exit collected) when dropped, unless kept.
struct RunningExec {
    sandbox: Arc<dyn Guest>,
    id: String,
    exec: String,
    kept: bool,
}

impl RunningExec {
    fn new(sandbox: &Arc<dyn Guest>, id: &str, exec: &str) -> Self {
        RunningExec {
            sandbox: sandbox.clone(),
            id: id.into(),
            exec: exec.into(),
            kept: false,
        }
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for RunningExec {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let sandbox = self.sandbox.clone();
        let (id, exec) = (self.id.clone(), self.exec.clone());
        tokio::spawn(async move {
            let agent = sandbox.agent();
            if let Err(error) = agent.signal(&id, &exec, SIGKILL, false).await {
                tracing::warn!("killing {id}/{exec} after a failed start: {error}");
                return;
            }
            // Collected, so the agent does not keep its exit for ever.
            let _ = tokio::time::timeout(KILLED_EXIT_TIMEOUT, agent.wait(&id, &exec)).await;
        });
    }
}
