//! The agent's API as the host calls it: one typed method a call, each
//! building its request and carrying its deadline, so no caller builds raw
//! requests or contexts.

use async_trait::async_trait;

use super::{Agent, GuestRootfs};
use crate::api::agent::{
    ContainerRequest, CreateContainerRequest, ExecProcessRequest, HealthRequest, HealthResponse,
    MountRequest, ProcessExit, ProcessInfo, ProcessRequest, RemoveContainerRequest,
    ResizeTtyRequest, SetupNetworkRequest, ShutdownRequest, SignalProcessRequest, StatsResponse,
    Stdio, UpdateResourcesRequest,
};

/// A call the agent did not carry out.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The agent answered with an error status. Code and message are the
    /// guest's word: untrusted, but meant for the user.
    #[error("{message}")]
    Refused { code: ttrpc::Code, message: String },
    /// No answer: the connection failed or the deadline passed.
    #[error(transparent)]
    NoAnswer(ttrpc::Error),
}

impl From<ttrpc::Error> for CallError {
    fn from(error: ttrpc::Error) -> Self {
        match error {
            ttrpc::Error::RpcStatus(status) => CallError::Refused {
                code: status.code(),
                message: status.message,
            },
            other => CallError::NoAnswer(other),
        }
    }
}

pub type CallResult<T> = Result<T, CallError>;

/// Every call of the agent API. [`Agent`] makes them over vsock with its
/// call timeout (none for [`AgentCalls::wait`], which lasts as long as the
/// process); a fake can stand in for it in tests.
#[async_trait]
pub trait AgentCalls: Send + Sync {
    async fn health(&self) -> CallResult<HealthResponse>;
    /// Mounts `source` (of type `fstype`) at the guest path `target`.
    async fn mount(
        &self,
        source: &str,
        fstype: &str,
        target: &str,
        options: &[String],
    ) -> CallResult<()>;
    /// Mounts the sandbox share ([`crate::SHARE_TAG`], virtio-fs) at
    /// [`crate::GUEST_SHARE_DIR`], where container root file systems are,
    /// and the image share ([`crate::IMAGES_TAG`]) at
    /// [`crate::GUEST_IMAGES_DIR`], read-only.
    async fn mount_share(&self) -> CallResult<()> {
        self.mount(crate::SHARE_TAG, "virtiofs", crate::GUEST_SHARE_DIR, &[])
            .await?;
        let read_only = ["ro".to_string()];
        self.mount(
            crate::IMAGES_TAG,
            "virtiofs",
            crate::GUEST_IMAGES_DIR,
            &read_only,
        )
        .await
    }
    /// Creates container `id` from its OCI spec; returns its init's pid.
    /// Configures the guest's interfaces, routes, neighbours, hostname and
    /// DNS.
    async fn setup_network(&self, request: SetupNetworkRequest) -> CallResult<()>;
    async fn create_container(
        &self,
        id: &str,
        oci_spec_json: Vec<u8>,
        rootfs: &GuestRootfs,
        stdio: Stdio,
    ) -> CallResult<u32>;
    /// Starts the init process of a created container; returns its pid.
    async fn start(&self, id: &str) -> CallResult<u32>;
    async fn pause(&self, id: &str) -> CallResult<()>;
    async fn resume(&self, id: &str) -> CallResult<()>;
    async fn update_resources(&self, id: &str, linux_resources_json: Vec<u8>) -> CallResult<()>;
    async fn stats(&self, id: &str) -> CallResult<StatsResponse>;
    async fn list_processes(&self, id: &str) -> CallResult<Vec<ProcessInfo>>;
    /// Removes a container; `force` kills what still runs in it.
    async fn remove_container(&self, id: &str, force: bool) -> CallResult<()>;
    /// Runs process `exec` in container `id`; returns its pid.
    async fn exec(
        &self,
        id: &str,
        exec: &str,
        oci_process_json: Vec<u8>,
        stdio: Stdio,
    ) -> CallResult<u32>;
    /// Signals a process (`exec` "" is the init), or with `all` every
    /// process of the container.
    async fn signal(&self, id: &str, exec: &str, signal: u32, all: bool) -> CallResult<()>;
    /// Waits for a process to exit.
    async fn wait(&self, id: &str, exec: &str) -> CallResult<ProcessExit>;
    async fn resize_tty(&self, id: &str, exec: &str, rows: u32, columns: u32) -> CallResult<()>;
    async fn close_stdin(&self, id: &str, exec: &str) -> CallResult<()>;
    /// Stops every container and ends the VM.
    async fn shutdown(&self) -> CallResult<()>;
}

fn container(id: &str) -> ContainerRequest {
    let mut request = ContainerRequest::new();
    request.container_id = id.into();
    request
}

fn process(id: &str, exec: &str) -> ProcessRequest {
    let mut request = ProcessRequest::new();
    request.container_id = id.into();
    request.exec_id = exec.into();
    request
}

#[async_trait]
impl AgentCalls for Agent {
    async fn health(&self) -> CallResult<HealthResponse> {
        Ok(self
            .rpc
            .health(self.deadline(), &HealthRequest::new())
            .await?)
    }

    async fn mount(
        &self,
        source: &str,
        fstype: &str,
        target: &str,
        options: &[String],
    ) -> CallResult<()> {
        let mut request = MountRequest::new();
        request.source = source.into();
        request.fstype = fstype.into();
        request.target = target.into();
        request.options = options.to_vec();
        self.rpc.mount(self.deadline(), &request).await?;
        Ok(())
    }

    async fn setup_network(&self, request: SetupNetworkRequest) -> CallResult<()> {
        self.rpc.setup_network(self.deadline(), &request).await?;
        Ok(())
    }

    async fn create_container(
        &self,
        id: &str,
        oci_spec_json: Vec<u8>,
        rootfs: &GuestRootfs,
        stdio: Stdio,
    ) -> CallResult<u32> {
        let mut request = CreateContainerRequest::new();
        request.container_id = id.into();
        request.oci_spec_json = oci_spec_json;
        request.rootfs = rootfs.path.clone();
        request.writable_layer_on_scratch_disk = rootfs.writable_layer_on_scratch_disk;
        request.stdio = Some(stdio).into();
        Ok(self
            .rpc
            .create_container(self.deadline(), &request)
            .await?
            .pid)
    }

    async fn start(&self, id: &str) -> CallResult<u32> {
        let request = container(id);
        Ok(self
            .rpc
            .start_container(self.deadline(), &request)
            .await?
            .pid)
    }

    async fn pause(&self, id: &str) -> CallResult<()> {
        self.rpc
            .pause_container(self.deadline(), &container(id))
            .await?;
        Ok(())
    }

    async fn resume(&self, id: &str) -> CallResult<()> {
        self.rpc
            .resume_container(self.deadline(), &container(id))
            .await?;
        Ok(())
    }

    async fn update_resources(&self, id: &str, linux_resources_json: Vec<u8>) -> CallResult<()> {
        let mut request = UpdateResourcesRequest::new();
        request.container_id = id.into();
        request.linux_resources_json = linux_resources_json;
        self.rpc.update_resources(self.deadline(), &request).await?;
        Ok(())
    }

    async fn stats(&self, id: &str) -> CallResult<StatsResponse> {
        Ok(self.rpc.stats(self.deadline(), &container(id)).await?)
    }

    async fn list_processes(&self, id: &str) -> CallResult<Vec<ProcessInfo>> {
        let request = container(id);
        let listed = self.rpc.list_processes(self.deadline(), &request).await?;
        Ok(listed.processes)
    }

    async fn remove_container(&self, id: &str, force: bool) -> CallResult<()> {
        let mut request = RemoveContainerRequest::new();
        request.container_id = id.into();
        request.force = force;
        self.rpc.remove_container(self.deadline(), &request).await?;
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        exec: &str,
        oci_process_json: Vec<u8>,
        stdio: Stdio,
    ) -> CallResult<u32> {
        let mut request = ExecProcessRequest::new();
        request.container_id = id.into();
        request.exec_id = exec.into();
        request.oci_process_json = oci_process_json;
        request.stdio = Some(stdio).into();
        Ok(self.rpc.exec_process(self.deadline(), &request).await?.pid)
    }

    async fn signal(&self, id: &str, exec: &str, signal: u32, all: bool) -> CallResult<()> {
        let mut request = SignalProcessRequest::new();
        request.container_id = id.into();
        request.exec_id = exec.into();
        request.signal = signal;
        request.all = all;
        self.rpc.signal_process(self.deadline(), &request).await?;
        Ok(())
    }

    async fn wait(&self, id: &str, exec: &str) -> CallResult<ProcessExit> {
        // No deadline: a process may run for as long as it likes.
        let no_deadline = ttrpc::context::Context::default();
        Ok(self
            .rpc
            .wait_process(no_deadline, &process(id, exec))
            .await?)
    }

    async fn resize_tty(&self, id: &str, exec: &str, rows: u32, columns: u32) -> CallResult<()> {
        let mut request = ResizeTtyRequest::new();
        request.container_id = id.into();
        request.exec_id = exec.into();
        request.rows = rows;
        request.columns = columns;
        self.rpc.resize_tty(self.deadline(), &request).await?;
        Ok(())
    }

    async fn close_stdin(&self, id: &str, exec: &str) -> CallResult<()> {
        self.rpc
            .close_stdin(self.deadline(), &process(id, exec))
            .await?;
        Ok(())
    }

    async fn shutdown(&self) -> CallResult<()> {
        let request = ShutdownRequest::new();
        self.rpc.shutdown(self.deadline(), &request).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_status_keeps_the_agents_code_and_words() {
        let refused = ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::NOT_FOUND,
            "container ghost not found",
        ));
        let error = CallError::from(refused);
        assert!(matches!(
            error,
            CallError::Refused {
                code: ttrpc::Code::NOT_FOUND,
                ..
            }
        ));
        assert_eq!(error.to_string(), "container ghost not found");

        let lost = CallError::from(ttrpc::Error::RemoteClosed);
        assert!(matches!(lost, CallError::NoAnswer(_)));
    }
}
