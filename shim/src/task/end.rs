//! How processes, containers and the shim end (Kill, Wait, Delete,
//! Shutdown), and State, which reports where a process is.

use containerd_shim::protos::api::{
    DeleteRequest, DeleteResponse, Empty, KillRequest, StateRequest, StateResponse, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::events::task::TaskDelete;

use super::TaskService;
use crate::error::{Result, ShimError};
use crate::hooks;
use crate::process::Exit;

impl TaskService {
    pub(super) fn process_state(&self, req: StateRequest) -> Result<StateResponse> {
        let mut table = self.containers.lock();
        let bundle = table.container(&req.id)?.bundle.clone();
        let process = table.process_mut(&req.id, &req.exec_id)?;
        let exit = process.exit();
        Ok(StateResponse {
            id: req.id,
            bundle,
            pid: process.pid,
            status: process.reported_status().into(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| e.timestamp()).into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    pub(super) async fn wait_process(&self, req: WaitRequest) -> Result<WaitResponse> {
        let mut exit = self
            .containers
            .with_process(&req.id, &req.exec_id, |p| p.subscribe())?;
        let exit = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ShimError::DeletedWhileWaiting)?
            .unwrap_or_default();
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    pub(super) async fn kill_process(&self, req: KillRequest) -> Result<Empty> {
        let exited = self
            .containers
            .with_process(&req.id, &req.exec_id, |p| p.exit().is_some())?;
        if exited && !req.all {
            return Err(ShimError::AlreadyExited(req.id));
        }
        let sandbox = self.sandbox().await?;
        sandbox
            .agent()
            .signal(&req.id, &req.exec_id, req.signal, req.all)
            .await?;
        Ok(Empty::new())
    }

    pub(super) async fn delete_process(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let (pid, exit) = self
            .containers
            .with_process(&req.id, &req.exec_id, |p| (p.pid, p.exit()))?;
        let exit = if req.exec_id.is_empty() {
            self.delete_container(&req.id, pid, exit).await?
        } else {
            if exit.is_none() && pid != 0 {
                return Err(ShimError::ExecRunning(req.exec_id));
            }
            if let Ok(container) = self.containers.lock().container_mut(&req.id) {
                container.processes.remove(&req.exec_id);
            }
            exit.unwrap_or_default()
        };
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    /// Removes a container from the guest, the share and the table; the
    /// sandbox's last container takes the VM with it.
    async fn delete_container(&self, id: &str, pid: u32, exit: Option<Exit>) -> Result<Exit> {
        let sandbox = self.sandbox().await?;
        let bundle = self.containers.lock().container(id)?.bundle.clone();
        if sandbox.vmm_exit().borrow().is_none() {
            if let Err(error) = sandbox.agent().remove_container(id, true).await {
                tracing::warn!("removing {id} in the guest: {error}");
            }
        }
        sandbox.unmount_container(id);
        let last = self.containers.lock().remove(id);
        // Deleted before it exited: it was killed with the container.
        let exit = exit.unwrap_or_else(Exit::vm_died);
        self.events
            .publish(TaskDelete {
                container_id: id.into(),
                id: id.into(),
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                ..Default::default()
            })
            .await;
        if last {
            sandbox.stop().await;
            *self.sandbox.lock().await = None;
        }
        // After the VM (or the container in a VM its pod keeps) is gone.
        let (hooks, state) = hooks::of_bundle(id, &bundle, sandbox.netns().as_deref());
        hooks.run_poststop(&state).await;
        Ok(exit)
    }

    /// Ends the shim once no container is left (other containers of the
    /// sandbox may still run here).
    pub(super) async fn shut_down(&self) {
        if !self.containers.lock().is_empty() {
            return;
        }
        let sandbox = self.sandbox.lock().await.clone();
        if let Some(sandbox) = sandbox {
            sandbox.stop().await;
        }
        self.exit.signal();
    }
}
