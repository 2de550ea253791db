//! Task calls the agent answers for a running container: Pids, Pause and
//! Resume, ResizePty, CloseIO, Update, Stats.

use containerd_shim::protos::api::{
    CloseIORequest, Empty, PidsRequest, PidsResponse, ProcessInfo, ResizePtyRequest, StatsRequest,
    StatsResponse, Status, UpdateTaskRequest,
};
use containerd_shim::protos::events::task::{TaskPaused, TaskResumed};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message as _;

use super::TaskService;
use crate::error::Result;
use crate::metrics;

impl TaskService {
    pub(super) async fn list_pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        let listed = self
            .sandbox()
            .await?
            .agent()
            .list_processes(&req.id)
            .await?;
        Ok(PidsResponse {
            processes: listed
                .into_iter()
                .map(|p| ProcessInfo {
                    pid: p.pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    /// Freezes or thaws a container in the guest, then tells containerd.
    pub(super) async fn set_paused(&self, id: &str, paused: bool) -> Result<Empty> {
        let sandbox = self.sandbox().await?;
        let agent = sandbox.agent();
        let status = if paused {
            agent.pause(id).await?;
            Status::PAUSED
        } else {
            agent.resume(id).await?;
            Status::RUNNING
        };
        self.containers
            .with_process(id, "", |p| p.status = status)?;
        let container_id = id.to_owned();
        if paused {
            self.events
                .publish(TaskPaused {
                    container_id,
                    ..Default::default()
                })
                .await;
        } else {
            self.events
                .publish(TaskResumed {
                    container_id,
                    ..Default::default()
                })
                .await;
        }
        Ok(Empty::new())
    }

    pub(super) async fn resize_tty(&self, req: ResizePtyRequest) -> Result<Empty> {
        let sandbox = self.sandbox().await?;
        let (rows, columns) = (req.height, req.width);
        let agent = sandbox.agent();
        agent
            .resize_tty(&req.id, &req.exec_id, rows, columns)
            .await?;
        Ok(Empty::new())
    }

    pub(super) async fn close_stdin(&self, req: CloseIORequest) -> Result<Empty> {
        if req.stdin {
            let sandbox = self.sandbox().await?;
            sandbox.agent().close_stdin(&req.id, &req.exec_id).await?;
        }
        Ok(Empty::new())
    }

    pub(super) async fn update_resources(&self, req: UpdateTaskRequest) -> Result<Empty> {
        let sandbox = self.sandbox().await?;
        // containerd marshals specs.LinuxResources (not a protobuf) as JSON.
        let resources = req.resources.as_ref().map(|any| any.value.clone());
        let agent = sandbox.agent();
        agent
            .update_resources(&req.id, resources.unwrap_or_default())
            .await?;
        Ok(Empty::new())
    }

    pub(super) async fn container_stats(&self, req: StatsRequest) -> Result<StatsResponse> {
        let stats = self.sandbox().await?.agent().stats(&req.id).await?;
        let any = Any {
            // containerd's typeurl registry knows the bare name, not the
            // type.googleapis.com/ form Any::pack would write.
            type_url: metrics::TYPE_URL.into(),
            value: metrics::to_containerd(&stats).write_to_bytes()?,
            ..Default::default()
        };
        Ok(StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }
}
