//! containerd's Task API for one sandbox: each call becomes agent calls in
//! the guest, plus the host-side work (root file systems, stdio relays,
//! events, the VM's lifecycle).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cocoon_protocol::api::agent as agent_api;
use cocoon_protocol::client::deadline;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::{self, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message as _, MessageDyn};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{TtrpcContext, TtrpcResult};
use tokio::sync::{watch, Mutex};
use ttrpc::Code;

use crate::config::Config;
use crate::io::{self, StdioPaths, OUTPUT_DRAIN_LIMIT};
use crate::rootfs;
use crate::runtime_options;
use crate::sandbox::{self, Sandbox, VmShape};

/// Time allowed for ordinary agent calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Exit status reported for processes whose VM died under them (SIGKILL).
const VM_DIED_STATUS: u32 = 128 + 9;
/// Annotations that size the VM.
const VCPUS_ANNOTATION: &str = "io.cocoon.vcpus";
const MEMORY_ANNOTATION: &str = "io.cocoon.memory-mib";

#[derive(Clone, Copy, Debug, Default)]
struct Exit {
    status: u32,
    at_unix_nanos: u64,
}

struct Process {
    pid: u32,
    status: Status,
    stdio: StdioPaths,
    /// The OCI process of an exec that has not started yet.
    exec_spec: Option<Vec<u8>>,
    exit: watch::Receiver<Option<Exit>>,
    exit_sender: Option<watch::Sender<Option<Exit>>>,
}

impl Process {
    fn new(stdio: StdioPaths) -> Self {
        let (sender, exit) = watch::channel(None);
        Process {
            pid: 0,
            status: Status::CREATED,
            stdio,
            exec_spec: None,
            exit,
            exit_sender: Some(sender),
        }
    }
}

struct Container {
    bundle: String,
    processes: HashMap<String, Process>,
}

#[derive(Default)]
struct State {
    sandbox: Option<Arc<Sandbox>>,
    containers: HashMap<String, Container>,
}

#[derive(Clone)]
pub struct TaskService {
    namespace: String,
    sandbox_id: String,
    /// `-debug` from containerd.
    debug: bool,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    state: Arc<Mutex<State>>,
}

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn not_found(what: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("{what} not found"))
}

fn timestamp(unix_nanos: u64) -> Timestamp {
    let mut ts = Timestamp::new();
    ts.seconds = (unix_nanos / 1_000_000_000) as i64;
    ts.nanos = (unix_nanos % 1_000_000_000) as i32;
    ts
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl TaskService {
    pub fn new(
        namespace: &str,
        sandbox_id: &str,
        debug: bool,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        TaskService {
            namespace: namespace.into(),
            sandbox_id: sandbox_id.into(),
            debug,
            publisher: Arc::new(publisher),
            exit,
            state: Arc::default(),
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let context = ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
        if let Err(error) = self
            .publisher
            .publish(context, topic, &self.namespace, event)
            .await
        {
            tracing::warn!("publishing {topic}: {error}");
        }
    }

    async fn sandbox(&self) -> TtrpcResult<Arc<Sandbox>> {
        self.state
            .lock()
            .await
            .sandbox
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the sandbox VM is not running"))
    }

    /// Starts the VM on the first Create, sized by the first container,
    /// with the config its runtime options name (or the default one).
    async fn ensure_sandbox(
        &self,
        req: &api::CreateTaskRequest,
        spec: &serde_json::Value,
    ) -> TtrpcResult<Arc<Sandbox>> {
        let mut state = self.state.lock().await;
        if let Some(sandbox) = &state.sandbox {
            return Ok(sandbox.clone());
        }
        let source = runtime_options::config_source(req.options.as_ref())
            .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        let config =
            Config::resolve(source).map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        log::set_max_level(config.log_filter(self.debug));
        let shape = vm_shape(&config, spec);
        let dir = sandbox::state_dir(&config, &self.namespace, &self.sandbox_id);
        if let Err(error) = sandbox::record_state_dir(Path::new(&req.bundle), &dir) {
            tracing::warn!("recording the state directory in {}: {error}", req.bundle);
        }
        let sandbox = Arc::new(
            Sandbox::start(&config, dir, &shape)
                .await
                .map_err(|e| status(Code::FAILED_PRECONDITION, e.to_string()))?,
        );
        state.sandbox = Some(sandbox.clone());
        drop(state);
        self.watch_vm(sandbox.clone());
        Ok(sandbox)
    }

    /// A dead VMM ends every process in it.
    fn watch_vm(&self, sandbox: Arc<Sandbox>) {
        let service = self.clone();
        tokio::spawn(async move {
            let mut exit = sandbox.vmm_exit();
            let Ok(code) = exit.wait_for(Option::is_some).await.map(|c| *c) else {
                return;
            };
            tracing::warn!("cocoon-vmm exited ({code:?}); every process in the sandbox is gone");
            let state = service.state.lock().await;
            for process in state.containers.values().flat_map(|c| c.processes.values()) {
                if let Some(sender) = &process.exit_sender {
                    sender.send_if_modified(|exit| {
                        exit.is_none()
                            .then(|| {
                                *exit = Some(Exit {
                                    status: VM_DIED_STATUS,
                                    at_unix_nanos: now_nanos(),
                                })
                            })
                            .is_some()
                    });
                }
            }
        });
    }

    /// After a process starts: waits for its exit in the guest (or the VM's
    /// death), lets its output drain, records the exit and reports it.
    fn watch_exit(
        &self,
        sandbox: Arc<Sandbox>,
        container: String,
        exec: String,
        relay: io::Relay,
        stdin: String,
    ) {
        let service = self.clone();
        tokio::spawn(async move {
            let mut request = agent_api::ProcessRequest::new();
            request.container_id = container.clone();
            request.exec_id = exec.clone();
            let mut vm_exit = sandbox.vmm_exit();
            let exit = tokio::select! {
                result = sandbox.agent.rpc().wait_process(ttrpc::context::Context::default(), &request) => match result {
                    Ok(exit) => {
                        if exit.oom_killed {
                            service.publish(containerd_shim::protos::topics::TASK_OOM_EVENT_TOPIC, Box::new(TaskOOM {
                                container_id: container.clone(),
                                ..Default::default()
                            })).await;
                        }
                        Exit { status: exit.exit_status, at_unix_nanos: exit.exited_at_unix_nanos }
                    }
                    Err(error) => {
                        tracing::warn!("waiting for {container}/{exec}: {error}");
                        Exit { status: VM_DIED_STATUS, at_unix_nanos: now_nanos() }
                    }
                },
                () = crate::sandbox::exited(&mut vm_exit) => Exit { status: VM_DIED_STATUS, at_unix_nanos: now_nanos() },
            };
            // All output reaches containerd before the exit does.
            if tokio::time::timeout(OUTPUT_DRAIN_LIMIT, relay.output)
                .await
                .is_err()
            {
                tracing::warn!(
                    "{container}/{exec}: output still open {OUTPUT_DRAIN_LIMIT:?} after exit"
                );
            }
            io::release_stdin(&stdin);
            if let Some(input) = relay.input {
                input.abort();
            }
            let pid = {
                let mut state = service.state.lock().await;
                let Some(process) = state
                    .containers
                    .get_mut(&container)
                    .and_then(|c| c.processes.get_mut(&exec))
                else {
                    return;
                };
                process.status = Status::STOPPED;
                if let Some(sender) = &process.exit_sender {
                    sender.send_if_modified(|slot| {
                        if slot.is_none() {
                            *slot = Some(exit);
                            true
                        } else {
                            false
                        }
                    });
                }
                process.pid
            };
            let recorded = {
                let state = service.state.lock().await;
                state
                    .containers
                    .get(&container)
                    .and_then(|c| c.processes.get(&exec))
                    .and_then(|p| *p.exit.borrow())
                    .unwrap_or(exit)
            };
            service
                .publish(
                    containerd_shim::protos::topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id: container.clone(),
                        id: if exec.is_empty() {
                            container.clone()
                        } else {
                            exec.clone()
                        },
                        pid,
                        exit_status: recorded.status,
                        exited_at: Some(timestamp(recorded.at_unix_nanos)).into(),
                        ..Default::default()
                    }),
                )
                .await;
        });
    }

    /// Freezes or thaws a container in the guest, then tells containerd.
    async fn set_paused(&self, id: &str, paused: bool) -> TtrpcResult<()> {
        let sandbox = self.sandbox().await?;
        let mut request = agent_api::ContainerRequest::new();
        request.container_id = id.into();
        let rpc = sandbox.agent.rpc();
        let context = deadline(CALL_TIMEOUT);
        if paused {
            rpc.pause_container(context, &request).await?;
        } else {
            rpc.resume_container(context, &request).await?;
        }
        let status = if paused {
            Status::PAUSED
        } else {
            Status::RUNNING
        };
        self.with_process(id, "", |p| p.status = status).await?;
        let container_id = id.to_owned();
        if paused {
            let event = TaskPaused {
                container_id,
                ..Default::default()
            };
            self.publish(
                containerd_shim::protos::topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(event),
            )
            .await;
        } else {
            let event = TaskResumed {
                container_id,
                ..Default::default()
            };
            self.publish(
                containerd_shim::protos::topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(event),
            )
            .await;
        }
        Ok(())
    }

    async fn with_process<T>(
        &self,
        id: &str,
        exec: &str,
        f: impl FnOnce(&mut Process) -> T,
    ) -> TtrpcResult<T> {
        let mut state = self.state.lock().await;
        let container = state
            .containers
            .get_mut(id)
            .ok_or_else(|| not_found(format!("container {id}")))?;
        let process = container
            .processes
            .get_mut(exec)
            .ok_or_else(|| not_found(format!("process {exec} of {id}")))?;
        Ok(f(process))
    }
}

/// vCPUs and memory: annotations first, then the container's CPU and memory
/// limits, then the config's defaults.
fn vm_shape(config: &Config, spec: &serde_json::Value) -> VmShape {
    let annotation = |key: &str| {
        spec.get("annotations")
            .and_then(|a| a.get(key))
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|v| *v > 0)
    };
    let resources = spec.get("linux").and_then(|l| l.get("resources"));
    let cpu_limit = resources.and_then(|r| r.get("cpu")).and_then(|cpu| {
        let quota = cpu.get("quota")?.as_i64()?;
        let period = cpu.get("period")?.as_u64()?;
        (quota > 0 && period > 0).then(|| (quota as u64).div_ceil(period) as u32)
    });
    let memory_limit = resources
        .and_then(|r| r.get("memory"))
        .and_then(|m| m.get("limit"))
        .and_then(|l| l.as_i64())
        .filter(|l| *l > 0)
        // Guest kernel and agent need room beside the container.
        .map(|l| ((l as u64) >> 20) as u32 + 64);
    VmShape {
        vcpus: annotation(VCPUS_ANNOTATION)
            .or(cpu_limit)
            .unwrap_or(config.vcpus)
            .max(1),
        memory_mib: annotation(MEMORY_ANNOTATION)
            .or(memory_limit)
            .unwrap_or(config.memory_mib)
            .max(config.memory_mib.min(128)),
    }
}

#[async_trait]
impl containerd_shim::Task for TaskService {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "cocoon cannot restore checkpoints",
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec_json = std::fs::read(bundle.join("config.json")).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("reading {}/config.json: {e}", req.bundle),
            )
        })?;
        let spec: serde_json::Value = serde_json::from_slice(&spec_json).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("invalid OCI spec in {}: {e}", req.bundle),
            )
        })?;
        let started = std::time::Instant::now();
        let sandbox = self.ensure_sandbox(&req, &spec).await?;

        let target = rootfs::target(&sandbox.share, &req.id);
        let root_path = spec["root"]["path"].as_str().unwrap_or("rootfs");
        if let Err(error) = rootfs::mount_rootfs(&req.rootfs, &bundle, root_path, &target).await {
            rootfs::unmount_rootfs(&sandbox.share, &req.id);
            return Err(status(Code::FAILED_PRECONDITION, error.to_string()));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut create = agent_api::CreateContainerRequest::new();
        create.container_id = req.id.clone();
        create.oci_spec_json = spec_json;
        create.rootfs = sandbox.guest_path(&target).unwrap_or_default();
        create.stdio = Some(stdio.wanted()).into();
        let created = sandbox
            .agent
            .rpc()
            .create_container(deadline(CALL_TIMEOUT), &create)
            .await;
        let pid = match created {
            Ok(started) => started.pid,
            Err(error) => {
                rootfs::unmount_rootfs(&sandbox.share, &req.id);
                return Err(error);
            }
        };
        let relay = match io::attach(&sandbox.agent, &self.namespace, &req.id, "", &stdio).await {
            Ok(relay) => relay,
            Err(error) => {
                let mut remove = agent_api::RemoveContainerRequest::new();
                remove.container_id = req.id.clone();
                remove.force = true;
                let _ = sandbox
                    .agent
                    .rpc()
                    .remove_container(deadline(CALL_TIMEOUT), &remove)
                    .await;
                rootfs::unmount_rootfs(&sandbox.share, &req.id);
                return Err(status(Code::FAILED_PRECONDITION, error.to_string()));
            }
        };
        tracing::info!("container {} created in {:?}", req.id, started.elapsed());
        let mut process = Process::new(stdio.clone());
        process.pid = pid;
        self.state.lock().await.containers.insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                processes: HashMap::from([(String::new(), process)]),
            },
        );
        self.watch_exit(
            sandbox,
            req.id.clone(),
            String::new(),
            relay,
            stdio.stdin.clone(),
        );
        self.publish(
            containerd_shim::protos::topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
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
            }),
        )
        .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let sandbox = self.sandbox().await?;
        if req.exec_id.is_empty() {
            let mut request = agent_api::ContainerRequest::new();
            request.container_id = req.id.clone();
            let pid = sandbox
                .agent
                .rpc()
                .start_container(deadline(CALL_TIMEOUT), &request)
                .await?
                .pid;
            self.with_process(&req.id, "", |p| p.status = Status::RUNNING)
                .await?;
            self.publish(
                containerd_shim::protos::topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
            return Ok(api::StartResponse {
                pid,
                ..Default::default()
            });
        }
        let (spec, stdio) = self
            .with_process(&req.id, &req.exec_id, |p| {
                (p.exec_spec.clone(), p.stdio.clone())
            })
            .await?;
        let spec = spec.ok_or_else(|| {
            status(
                Code::FAILED_PRECONDITION,
                format!("exec {} already started", req.exec_id),
            )
        })?;
        let mut exec = agent_api::ExecProcessRequest::new();
        exec.container_id = req.id.clone();
        exec.exec_id = req.exec_id.clone();
        exec.oci_process_json = spec;
        exec.stdio = Some(stdio.wanted()).into();
        let pid = sandbox
            .agent
            .rpc()
            .exec_process(deadline(CALL_TIMEOUT), &exec)
            .await?
            .pid;
        let relay = io::attach(
            &sandbox.agent,
            &self.namespace,
            &req.id,
            &req.exec_id,
            &stdio,
        )
        .await
        .map_err(|e| status(Code::INTERNAL, e.to_string()))?;
        self.with_process(&req.id, &req.exec_id, |p| {
            p.pid = pid;
            p.status = Status::RUNNING;
            p.exec_spec = None;
        })
        .await?;
        self.watch_exit(
            sandbox,
            req.id.clone(),
            req.exec_id.clone(),
            relay,
            stdio.stdin,
        );
        self.publish(
            containerd_shim::protos::topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "exec without a process spec"))?;
        {
            let mut state = self.state.lock().await;
            let container = state
                .containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(format!("container {}", req.id)))?;
            if container.processes.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
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
        self.publish(
            containerd_shim::protos::topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(api::Empty::new())
    }

    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let state = self.state.lock().await;
        let container = state
            .containers
            .get(&req.id)
            .ok_or_else(|| not_found(format!("container {}", req.id)))?;
        let process = container
            .processes
            .get(&req.exec_id)
            .ok_or_else(|| not_found(format!("process {} of {}", req.exec_id, req.id)))?;
        let exit = *process.exit.borrow();
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: container.bundle.clone(),
            pid: process.pid,
            status: if exit.is_some() {
                Status::STOPPED
            } else {
                process.status
            }
            .into(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| timestamp(e.at_unix_nanos)).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut exit = self
            .with_process(&req.id, &req.exec_id, |p| p.exit.clone())
            .await?;
        let exit = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| status(Code::INTERNAL, "the process was deleted while waiting"))?
            .unwrap_or_default();
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at_unix_nanos)).into(),
            ..Default::default()
        })
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let exited = self
            .with_process(&req.id, &req.exec_id, |p| p.exit.borrow().is_some())
            .await?;
        if exited && !req.all {
            return Err(status(
                Code::NOT_FOUND,
                format!("process {} has already exited", req.id),
            ));
        }
        let sandbox = self.sandbox().await?;
        let mut signal = agent_api::SignalProcessRequest::new();
        signal.container_id = req.id.clone();
        signal.exec_id = req.exec_id.clone();
        signal.signal = req.signal;
        signal.all = req.all;
        sandbox
            .agent
            .rpc()
            .signal_process(deadline(CALL_TIMEOUT), &signal)
            .await?;
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let (pid, exit) = self
            .with_process(&req.id, &req.exec_id, |p| (p.pid, *p.exit.borrow()))
            .await?;
        if !req.exec_id.is_empty() {
            if exit.is_none() && pid != 0 {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("exec {} is still running", req.exec_id),
                ));
            }
            if let Some(container) = self.state.lock().await.containers.get_mut(&req.id) {
                container.processes.remove(&req.exec_id);
            }
            let exit = exit.unwrap_or_default();
            return Ok(api::DeleteResponse {
                pid,
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at_unix_nanos)).into(),
                ..Default::default()
            });
        }
        let sandbox = self.sandbox().await?;
        let mut remove = agent_api::RemoveContainerRequest::new();
        remove.container_id = req.id.clone();
        remove.force = true;
        if sandbox.vmm_exit().borrow().is_none() {
            if let Err(error) = sandbox
                .agent
                .rpc()
                .remove_container(deadline(CALL_TIMEOUT), &remove)
                .await
            {
                tracing::warn!("removing {} in the guest: {error}", req.id);
            }
        }
        rootfs::unmount_rootfs(&sandbox.share, &req.id);
        let last = {
            let mut state = self.state.lock().await;
            state.containers.remove(&req.id);
            state.containers.is_empty()
        };
        let exit = exit.unwrap_or(Exit {
            status: VM_DIED_STATUS,
            at_unix_nanos: now_nanos(),
        });
        self.publish(
            containerd_shim::protos::topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at_unix_nanos)).into(),
                ..Default::default()
            }),
        )
        .await;
        if last {
            // The sandbox's last container is gone: so is its VM.
            sandbox.stop().await;
            self.state.lock().await.sandbox = None;
        }
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at_unix_nanos)).into(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let sandbox = self.sandbox().await?;
        let mut request = agent_api::ContainerRequest::new();
        request.container_id = req.id.clone();
        let listed = sandbox
            .agent
            .rpc()
            .list_processes(deadline(CALL_TIMEOUT), &request)
            .await?;
        Ok(api::PidsResponse {
            processes: listed
                .processes
                .into_iter()
                .map(|p| api::ProcessInfo {
                    pid: p.pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, true).await?;
        Ok(api::Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, false).await?;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let sandbox = self.sandbox().await?;
        let mut request = agent_api::ResizeTtyRequest::new();
        request.container_id = req.id.clone();
        request.exec_id = req.exec_id.clone();
        request.rows = req.height;
        request.columns = req.width;
        sandbox
            .agent
            .rpc()
            .resize_tty(deadline(CALL_TIMEOUT), &request)
            .await?;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        if req.stdin {
            let sandbox = self.sandbox().await?;
            let mut request = agent_api::ProcessRequest::new();
            request.container_id = req.id.clone();
            request.exec_id = req.exec_id.clone();
            sandbox
                .agent
                .rpc()
                .close_stdin(deadline(CALL_TIMEOUT), &request)
                .await?;
        }
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let sandbox = self.sandbox().await?;
        let mut request = agent_api::UpdateResourcesRequest::new();
        request.container_id = req.id.clone();
        // containerd marshals specs.LinuxResources (not a protobuf) as JSON.
        request.linux_resources_json = req
            .resources
            .as_ref()
            .map(|any| any.value.clone())
            .unwrap_or_default();
        sandbox
            .agent
            .rpc()
            .update_resources(deadline(CALL_TIMEOUT), &request)
            .await?;
        Ok(api::Empty::new())
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let sandbox = self.sandbox().await?;
        let mut request = agent_api::ContainerRequest::new();
        request.container_id = req.id.clone();
        let stats = sandbox
            .agent
            .rpc()
            .stats(deadline(CALL_TIMEOUT), &request)
            .await?;
        let metrics = crate::metrics::to_containerd(&stats);
        let any = Any {
            // containerd's typeurl registry knows the bare name, not the
            // type.googleapis.com/ form Any::pack would write.
            type_url: crate::metrics::TYPE_URL.into(),
            value: metrics
                .write_to_bytes()
                .map_err(|e| status(Code::INTERNAL, format!("encoding metrics: {e}")))?,
            ..Default::default()
        };
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        _: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            "checkpoint is not supported by the cocoon runtime (containers run inside microVMs)",
        ))
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .with_process(&req.id, "", |p| p.pid)
            .await
            .unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: crate::VERSION.into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let state = self.state.lock().await;
        if !state.containers.is_empty() {
            // Other containers of the sandbox still run here.
            return Ok(api::Empty::new());
        }
        let sandbox = state.sandbox.clone();
        drop(state);
        if let Some(sandbox) = sandbox {
            sandbox.stop().await;
        }
        self.exit.signal();
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vm_size_comes_from_annotations_then_limits_then_config() {
        let config = Config::default();
        let shape = vm_shape(&config, &json!({}));
        assert_eq!(
            (shape.vcpus, shape.memory_mib),
            (config.vcpus, config.memory_mib)
        );

        let limited = json!({ "linux": { "resources": {
            "cpu": { "quota": 150000, "period": 100000 },
            "memory": { "limit": 512i64 << 20 }
        } } });
        let shape = vm_shape(&config, &limited);
        assert_eq!((shape.vcpus, shape.memory_mib), (2, 576));

        let mut annotated = limited.clone();
        annotated["annotations"] =
            json!({ "io.cocoon.vcpus": "4", "io.cocoon.memory-mib": "1024" });
        let shape = vm_shape(&config, &annotated);
        assert_eq!((shape.vcpus, shape.memory_mib), (4, 1024));

        annotated["annotations"] =
            json!({ "io.cocoon.vcpus": "zero", "io.cocoon.memory-mib": "0" });
        let shape = vm_shape(&config, &annotated);
        assert_eq!((shape.vcpus, shape.memory_mib), (2, 576));
    }
}
