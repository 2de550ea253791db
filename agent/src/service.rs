//! The ttrpc service: each call of `proto/agent.proto`, decoded and handed to
//! the part of the agent that does it.

use std::sync::Arc;

use async_trait::async_trait;
use cocoon_protocol::api::agent::*;
use cocoon_protocol::api::agent_ttrpc;
use ttrpc::r#async::TtrpcContext;

use crate::containers::Containers;
use crate::error::AgentError;
use crate::events::Events;
use crate::identity::IdentityGate;

pub struct AgentService {
    pub containers: Containers,
    pub events: Events,
    pub shutdown: Arc<tokio::sync::Notify>,
    /// Holds back workloads of a template boot until SetIdentity.
    pub identity: IdentityGate,
}

impl AgentService {
    /// The check of every call that prepares or runs a workload: a guest
    /// restored from a template must first get its own identity.
    fn identity_given(&self) -> Reply<()> {
        done(self.identity.check())
    }
}

type Reply<T> = ttrpc::Result<T>;

fn done<T>(result: Result<T, AgentError>) -> Reply<T> {
    result.map_err(|error| {
        tracing::info!("request failed: {error}");
        error.into()
    })
}

#[async_trait]
impl agent_ttrpc::Agent for AgentService {
    async fn health(&self, _: &TtrpcContext, _: HealthRequest) -> Reply<HealthResponse> {
        let mut response = HealthResponse::new();
        response.version = crate::VERSION.into();
        response.uptime_ms = crate::init::uptime_ms();
        Ok(response)
    }

    async fn set_identity(&self, _: &TtrpcContext, request: IdentityRequest) -> Reply<Empty> {
        done(self.identity.set(&request).map(|()| Empty::new()))
    }

    async fn mount(&self, _: &TtrpcContext, request: MountRequest) -> Reply<Empty> {
        self.identity_given()?;
        done(crate::mounts::mount(&request).map(|()| Empty::new()))
    }

    async fn setup_network(&self, _: &TtrpcContext, request: SetupNetworkRequest) -> Reply<Empty> {
        self.identity_given()?;
        done(crate::network::setup_network(&request).map(|()| Empty::new()))
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        request: CreateContainerRequest,
    ) -> Reply<ProcessStarted> {
        self.identity_given()?;
        let stdio = request.stdio.clone().unwrap_or_default();
        let created = self
            .containers
            .create(
                &request.container_id,
                &request.oci_spec_json,
                &request.rootfs,
                request.writable_layer_on_scratch_disk,
                &stdio,
            )
            .await;
        done(created.map(started))
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        request: ContainerRequest,
    ) -> Reply<ProcessStarted> {
        self.identity_given()?;
        done(
            self.containers
                .start(&request.container_id)
                .await
                .map(started),
        )
    }

    async fn pause_container(&self, _: &TtrpcContext, request: ContainerRequest) -> Reply<Empty> {
        done(
            self.containers
                .pause(&request.container_id)
                .await
                .map(|()| Empty::new()),
        )
    }

    async fn resume_container(&self, _: &TtrpcContext, request: ContainerRequest) -> Reply<Empty> {
        done(
            self.containers
                .resume(&request.container_id)
                .await
                .map(|()| Empty::new()),
        )
    }

    async fn update_resources(
        &self,
        _: &TtrpcContext,
        request: UpdateResourcesRequest,
    ) -> Reply<Empty> {
        let updated = self
            .containers
            .cgroup(&request.container_id)
            .and_then(|cgroup| Ok(cgroup.update(&request.linux_resources_json)?));
        done(updated.map(|()| Empty::new()))
    }

    async fn stats(&self, _: &TtrpcContext, request: ContainerRequest) -> Reply<StatsResponse> {
        done(
            self.containers
                .cgroup(&request.container_id)
                .and_then(|cgroup| Ok(cgroup.stats()?)),
        )
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        request: ContainerRequest,
    ) -> Reply<ListProcessesResponse> {
        done(
            self.containers
                .processes(&request.container_id)
                .map(|processes| {
                    let mut response = ListProcessesResponse::new();
                    response.processes = processes
                        .into_iter()
                        .map(|(pid, exec_id)| {
                            let mut info = ProcessInfo::new();
                            info.pid = pid as u32;
                            info.exec_id = exec_id;
                            info
                        })
                        .collect();
                    response
                }),
        )
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        request: RemoveContainerRequest,
    ) -> Reply<Empty> {
        done(
            self.containers
                .remove(&request.container_id, request.force)
                .await
                .map(|()| Empty::new()),
        )
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        request: ExecProcessRequest,
    ) -> Reply<ProcessStarted> {
        self.identity_given()?;
        let stdio = request.stdio.clone().unwrap_or_default();
        let started_exec = self
            .containers
            .exec(
                &request.container_id,
                &request.exec_id,
                &request.oci_process_json,
                &stdio,
            )
            .await;
        done(started_exec.map(started))
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        request: SignalProcessRequest,
    ) -> Reply<Empty> {
        done(
            self.containers
                .signal(
                    &request.container_id,
                    &request.exec_id,
                    request.signal,
                    request.all,
                )
                .map(|()| Empty::new()),
        )
    }

    async fn wait_process(&self, _: &TtrpcContext, request: ProcessRequest) -> Reply<ProcessExit> {
        done(
            self.containers
                .wait(&request.container_id, &request.exec_id)
                .await,
        )
    }

    async fn resize_tty(&self, _: &TtrpcContext, request: ResizeTtyRequest) -> Reply<Empty> {
        done(
            self.containers
                .resize(
                    &request.container_id,
                    &request.exec_id,
                    request.rows,
                    request.columns,
                )
                .map(|()| Empty::new()),
        )
    }

    async fn close_stdin(&self, _: &TtrpcContext, request: ProcessRequest) -> Reply<Empty> {
        done(
            self.containers
                .close_stdin(&request.container_id, &request.exec_id)
                .map(|()| Empty::new()),
        )
    }

    async fn next_event(&self, _: &TtrpcContext, _: NextEventRequest) -> Reply<Event> {
        Ok(self.events.next().await)
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> Reply<Empty> {
        // Answer first; the main loop stops the containers and the VM.
        self.shutdown.notify_one();
        Ok(Empty::new())
    }
}

fn started(pid: u32) -> ProcessStarted {
    let mut response = ProcessStarted::new();
    response.pid = pid;
    response
}
