//! A sandbox without a VM, for the task service's tests: its agent records
//! every call and runs processes that exit when a test (or a kill) says.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cocoon_protocol::api::agent::{
    HealthResponse, ProcessExit, ProcessInfo, SetupNetworkRequest, StatsResponse, Stdio,
};
use cocoon_protocol::client::{AgentCalls, CallError, CallResult, GuestRootfs};
use containerd_shim::protos::api::{CreateTaskRequest, Mount};
use containerd_shim::protos::protobuf::MessageDyn;
use tokio::sync::watch;

use crate::error::Result;
use crate::events::EventSink;
use crate::guest::{Guest, Launch};
use crate::io::{IoError, Relay, StdioPaths};
use crate::volumes::HostVolume;

/// How long a test waits for something the service does in the background.
pub const PATIENCE: Duration = Duration::from_secs(5);

type ProcessKey = (String, String);

#[derive(Default)]
pub struct FakeGuest {
    /// Every call, in order, e.g. "create web", "signal web/sh 9".
    calls: watch::Sender<Vec<String>>,
    exits: Mutex<HashMap<ProcessKey, watch::Sender<Option<ProcessExit>>>>,
    vmm_exit: watch::Sender<Option<i32>>,
    next_pid: AtomicU32,
    /// The agent refuses to create these containers.
    pub refuse_create: Mutex<HashSet<String>>,
    /// Stdio of these processes ("container/exec") cannot be attached.
    pub refuse_attach: Mutex<HashSet<String>>,
}

impl FakeGuest {
    fn record(&self, call: String) {
        self.calls.send_modify(|calls| calls.push(call));
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    /// Waits until `call` has been made.
    pub async fn made(&self, call: &str) -> Vec<String> {
        let mut calls = self.calls.subscribe();
        let made = calls.wait_for(|calls| calls.iter().any(|c| c == call));
        let made = match tokio::time::timeout(PATIENCE, made).await {
            Ok(Ok(calls)) => Some(calls.clone()),
            _ => None,
        };
        made.unwrap_or_else(|| panic!("no {call:?} within {PATIENCE:?}: {:?}", self.calls()))
    }

    fn run(&self, id: &str, exec: &str) -> u32 {
        let (sender, _) = watch::channel(None);
        let key = (id.to_owned(), exec.to_owned());
        self.exits.lock().unwrap().insert(key, sender);
        self.next_pid.fetch_add(1, Ordering::SeqCst) + 100
    }

    /// Process (`id`, `exec`) exits with `status`, unless it has.
    pub fn exit(&self, id: &str, exec: &str, status: u32) {
        self.end(id, exec, status, false);
    }

    /// The kernel's OOM killer ends container `id`'s init.
    pub fn oom_kill(&self, id: &str) {
        self.end(id, "", 137, true);
    }

    fn end(&self, id: &str, exec: &str, status: u32, oom_killed: bool) {
        let exits = self.exits.lock().unwrap();
        if let Some(slot) = exits.get(&(id.to_owned(), exec.to_owned())) {
            slot.send_if_modified(|exit| {
                let first = exit.is_none();
                if first {
                    let mut ended = ProcessExit::new();
                    ended.exit_status = status;
                    ended.oom_killed = oom_killed;
                    ended.exited_at_unix_nanos = 1_000_000_000 + u64::from(status);
                    *exit = Some(ended);
                }
                first
            });
        }
    }

    /// The VMM dies.
    pub fn kill_vm(&self) {
        self.vmm_exit.send_replace(Some(1));
    }

    fn exit_all(&self, id: &str, status: u32) {
        let execs: Vec<String> = (self.exits.lock().unwrap().keys())
            .filter(|(container, _)| container == id)
            .map(|(_, exec)| exec.clone())
            .collect();
        for exec in execs {
            self.exit(id, &exec, status);
        }
    }
}

fn not_found(what: String) -> CallError {
    CallError::Refused {
        code: ttrpc::Code::NOT_FOUND,
        message: format!("{what} not found"),
    }
}

#[async_trait]
impl AgentCalls for FakeGuest {
    async fn health(&self) -> CallResult<HealthResponse> {
        Ok(HealthResponse::new())
    }

    async fn mount(&self, _: &str, _: &str, target: &str, _: &[String]) -> CallResult<()> {
        self.record(format!("mount {target}"));
        Ok(())
    }

    async fn setup_network(&self, _: SetupNetworkRequest) -> CallResult<()> {
        self.record("setup network".into());
        Ok(())
    }

    async fn create_container(
        &self,
        id: &str,
        _: Vec<u8>,
        _: &GuestRootfs,
        _: Stdio,
    ) -> CallResult<u32> {
        self.record(format!("create {id}"));
        if self.refuse_create.lock().unwrap().contains(id) {
            return Err(CallError::Refused {
                code: ttrpc::Code::INVALID_ARGUMENT,
                message: "executable file not found in $PATH: nope".into(),
            });
        }
        Ok(self.run(id, ""))
    }

    async fn start(&self, id: &str) -> CallResult<u32> {
        self.record(format!("start {id}"));
        Ok(100)
    }

    async fn pause(&self, id: &str) -> CallResult<()> {
        self.record(format!("pause {id}"));
        Ok(())
    }

    async fn resume(&self, id: &str) -> CallResult<()> {
        self.record(format!("resume {id}"));
        Ok(())
    }

    async fn update_resources(&self, id: &str, _: Vec<u8>) -> CallResult<()> {
        self.record(format!("update {id}"));
        Ok(())
    }

    async fn stats(&self, _: &str) -> CallResult<StatsResponse> {
        Ok(StatsResponse::new())
    }

    async fn list_processes(&self, _: &str) -> CallResult<Vec<ProcessInfo>> {
        // The guest's own pids, which only ListPids reports.
        Ok([1, 7]
            .map(|pid| ProcessInfo {
                pid,
                ..Default::default()
            })
            .into())
    }

    async fn remove_container(&self, id: &str, _: bool) -> CallResult<()> {
        self.record(format!("remove {id}"));
        self.exit_all(id, 137);
        Ok(())
    }

    async fn exec(&self, id: &str, exec: &str, _: Vec<u8>, _: Stdio) -> CallResult<u32> {
        self.record(format!("exec {id}/{exec}"));
        Ok(self.run(id, exec))
    }

    async fn signal(&self, id: &str, exec: &str, signal: u32, all: bool) -> CallResult<()> {
        self.record(format!(
            "signal {id}/{exec} {signal}{}",
            if all { " all" } else { "" }
        ));
        if all {
            self.exit_all(id, 128 + signal);
        } else {
            self.exit(id, exec, 128 + signal);
        }
        Ok(())
    }

    async fn wait(&self, id: &str, exec: &str) -> CallResult<ProcessExit> {
        let key = (id.to_owned(), exec.to_owned());
        let slot = self.exits.lock().unwrap().get(&key).map(|s| s.subscribe());
        let mut slot = slot.ok_or_else(|| not_found(format!("{id}/{exec}")))?;
        let exit = slot.wait_for(Option::is_some).await.map(|e| e.clone());
        exit.ok()
            .flatten()
            .ok_or_else(|| not_found(format!("{id}/{exec}")))
    }

    async fn resize_tty(&self, id: &str, exec: &str, rows: u32, columns: u32) -> CallResult<()> {
        self.record(format!("resize {id}/{exec} {rows}x{columns}"));
        Ok(())
    }

    async fn close_stdin(&self, id: &str, exec: &str) -> CallResult<()> {
        self.record(format!("close-stdin {id}/{exec}"));
        Ok(())
    }

    async fn shutdown(&self) -> CallResult<()> {
        self.record("shutdown".into());
        Ok(())
    }
}

/// The pid the fake sandbox's VMM has.
pub const FAKE_VMM_PID: u32 = 4242;

#[async_trait]
impl Guest for FakeGuest {
    fn agent(&self) -> &dyn AgentCalls {
        self
    }

    async fn mount_rootfs(&self, id: &str, _: &[Mount], _: &Path) -> Result<GuestRootfs> {
        self.record(format!("mount-rootfs {id}"));
        Ok(GuestRootfs::writable(format!(
            "/run/cocoon/share/{id}/rootfs"
        )))
    }

    fn mount_volumes(&self, id: &str, volumes: &[HostVolume]) -> Result<()> {
        if !volumes.is_empty() {
            self.record(format!("mount-volumes {id} {}", volumes.len()));
        }
        Ok(())
    }

    fn unmount_container(&self, id: &str) {
        self.record(format!("unmount-rootfs {id}"));
    }

    async fn attach_stdio(&self, id: &str, exec: &str, _: &StdioPaths) -> Result<Relay> {
        let process = format!("{id}/{exec}");
        self.record(format!("attach {process}"));
        if self.refuse_attach.lock().unwrap().contains(&process) {
            let message = "refused".into();
            return Err(IoError::Attach {
                what: process,
                message,
            }
            .into());
        }
        Ok(Relay {
            output: tokio::spawn(async {}),
            input: None,
        })
    }

    fn host_pid(&self) -> u32 {
        FAKE_VMM_PID
    }

    fn vmm_exit(&self) -> watch::Receiver<Option<i32>> {
        self.vmm_exit.subscribe()
    }

    async fn stop(&self) {
        self.record("stop".into());
        self.vmm_exit.send_replace(Some(0));
    }
}

/// Launches the one fake guest, counting launches.
pub struct FakeLauncher(pub Arc<FakeGuest>);

#[async_trait]
impl Launch for FakeLauncher {
    async fn launch(&self, _: &CreateTaskRequest, _: &serde_json::Value) -> Result<Arc<dyn Guest>> {
        self.0.record("launch".into());
        Ok(self.0.clone())
    }
}

/// Every event published, in order.
#[derive(Default)]
pub struct RecordedEvents(watch::Sender<Vec<(String, Box<dyn MessageDyn>)>>);

impl RecordedEvents {
    pub fn topics(&self) -> Vec<String> {
        self.0
            .borrow()
            .iter()
            .map(|(topic, _)| topic.clone())
            .collect()
    }

    /// Waits until an event of `topic` has been published; returns it.
    pub async fn published<M: containerd_shim::protos::protobuf::MessageFull>(
        &self,
        topic: &str,
    ) -> M {
        let mut events = self.0.subscribe();
        let seen = events.wait_for(|events| events.iter().any(|(t, _)| t == topic));
        let found = match tokio::time::timeout(PATIENCE, seen).await {
            Ok(Ok(events)) => events
                .iter()
                .find(|(t, _)| t == topic)
                .and_then(|(_, event)| event.downcast_ref::<M>().cloned()),
            _ => None,
        };
        found.unwrap_or_else(|| panic!("no {topic} within {PATIENCE:?}: {:?}", self.topics()))
    }
}

#[async_trait]
impl EventSink for RecordedEvents {
    async fn send(
        &self,
        topic: &str,
        _: &str,
        event: Box<dyn MessageDyn>,
    ) -> containerd_shim::Result<()> {
        self.0
            .send_modify(|events| events.push((topic.to_owned(), event)));
        Ok(())
    }
}
