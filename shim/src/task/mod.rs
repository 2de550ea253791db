//! containerd's Task API for one sandbox. Each call is a method of
//! [`TaskService`] in the file of its concern; this file is the API's
//! surface, where shim errors become ttrpc statuses (`?`, through
//! [`crate::error`]).

mod container_calls;
mod create;
mod end;
#[cfg(test)]
mod fake;
mod start;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api;
use containerd_shim::{TtrpcContext, TtrpcResult};
use tokio::sync::Mutex;

use crate::container::ContainerTable;
use crate::error::{Result, ShimError};
use crate::events::{EventSink, Events};
use crate::exits::{self, Watched};
use crate::guest::{Guest, Launch};

#[derive(Clone)]
pub struct TaskService {
    launcher: Arc<dyn Launch>,
    events: Events,
    /// Ends the shim's server (after Shutdown).
    exit: Arc<ExitSignal>,
    /// The sandbox VM, from the first Create until its last container is
    /// deleted. Held while the VM starts, so that one VM starts.
    sandbox: Arc<Mutex<Option<Arc<dyn Guest>>>>,
    containers: ContainerTable,
}

impl TaskService {
    pub fn new(
        namespace: &str,
        launcher: Arc<dyn Launch>,
        events: Arc<dyn EventSink>,
        exit: Arc<ExitSignal>,
    ) -> Self {
        TaskService {
            launcher,
            events: Events::new(events, namespace),
            exit,
            sandbox: Arc::default(),
            containers: ContainerTable::default(),
        }
    }

    async fn sandbox(&self) -> Result<Arc<dyn Guest>> {
        self.sandbox
            .lock()
            .await
            .clone()
            .ok_or(ShimError::NoSandbox)
    }

    /// The sandbox VM, started by the first Create (then `true`: the
    /// launch ran that container's create hooks).
    async fn ensure_sandbox(
        &self,
        req: &api::CreateTaskRequest,
        spec: &serde_json::Value,
    ) -> Result<(Arc<dyn Guest>, bool)> {
        let mut slot = self.sandbox.lock().await;
        if let Some(sandbox) = &*slot {
            return Ok((sandbox.clone(), false));
        }
        let sandbox = self.launcher.launch(req, spec).await?;
        *slot = Some(sandbox.clone());
        drop(slot);
        exits::watch_vm(sandbox.clone(), self.containers.clone());
        Ok((sandbox, true))
    }

    fn watch_exit(&self, sandbox: Arc<dyn Guest>, watched: Watched) {
        exits::watch_exit(
            sandbox,
            self.containers.clone(),
            self.events.clone(),
            watched,
        );
    }
}

#[async_trait]
impl containerd_shim::Task for TaskService {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        Ok(self.create_task(req).await?)
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        Ok(self.start_process(req).await?)
    }

    async fn exec(
        &self,
        _: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        Ok(self.add_exec(req).await?)
    }

    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        Ok(self.process_state(req)?)
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        Ok(self.wait_process(req).await?)
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        Ok(self.kill_process(req).await?)
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        Ok(self.delete_process(req).await?)
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        Ok(self.list_pids(req).await?)
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Ok(self.set_paused(&req.id, true).await?)
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        Ok(self.set_paused(&req.id, false).await?)
    }

    async fn resize_pty(
        &self,
        _: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        Ok(self.resize_tty(req).await?)
    }

    async fn close_io(
        &self,
        _: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        Ok(self.close_stdin(req).await?)
    }

    async fn update(
        &self,
        _: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Ok(self.update_resources(req).await?)
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        Ok(self.container_stats(req).await?)
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        _: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(ShimError::Unsupported(
            "checkpoint is not supported by the cocoon runtime (containers run inside microVMs)",
        )
        .into())
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .containers
            .with_process(&req.id, "", |p| p.pid)
            .unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: crate::VERSION.into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        self.shut_down().await;
        Ok(api::Empty::new())
    }
}
