//! The task service's state machine against a fake sandbox: what
//! containerd sees (replies, error codes, events and their order) for the
//! orders of calls it makes, and for exits that race them.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::{self, Status};
use containerd_shim::protos::events::task::{TaskDelete, TaskExit};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::topics::{
    TASK_CREATE_EVENT_TOPIC as CREATE, TASK_DELETE_EVENT_TOPIC as DELETE,
    TASK_EXEC_ADDED_EVENT_TOPIC as EXEC_ADDED, TASK_EXEC_STARTED_EVENT_TOPIC as EXEC_STARTED,
    TASK_EXIT_EVENT_TOPIC as EXIT, TASK_OOM_EVENT_TOPIC as OOM, TASK_PAUSED_EVENT_TOPIC as PAUSED,
    TASK_RESUMED_EVENT_TOPIC as RESUMED, TASK_START_EVENT_TOPIC as START,
};
use containerd_shim::{Task, TtrpcContext};
use ttrpc::Code;

use super::fake::{FakeGuest, FakeLauncher, RecordedEvents, FAKE_VMM_PID, PATIENCE};
use super::TaskService;

struct Harness {
    service: TaskService,
    guest: Arc<FakeGuest>,
    events: Arc<RecordedEvents>,
    exit: Arc<ExitSignal>,
    bundle: tempfile::TempDir,
}

fn harness() -> Harness {
    let guest = Arc::new(FakeGuest::default());
    let events = Arc::new(RecordedEvents::default());
    let exit = Arc::new(ExitSignal::default());
    let service = TaskService::new(
        "testing",
        Arc::new(FakeLauncher(guest.clone())),
        events.clone(),
        exit.clone(),
    );
    let bundle = tempfile::tempdir().unwrap();
    std::fs::write(
        bundle.path().join("config.json"),
        r#"{"root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}]}}"#,
    )
    .unwrap();
    Harness {
        service,
        guest,
        events,
        exit,
        bundle,
    }
}

fn context() -> TtrpcContext {
    TtrpcContext {
        mh: ttrpc::MessageHeader::default(),
        metadata: HashMap::new(),
        timeout_nano: 0,
    }
}

/// The status containerd gets for a failed call.
fn status(error: ttrpc::Error) -> (Code, String) {
    match error {
        ttrpc::Error::RpcStatus(status) => (status.code(), status.message),
        other => panic!("not a status: {other}"),
    }
}

impl Harness {
    async fn create(&self, id: &str) -> Result<u32, ttrpc::Error> {
        let req = api::CreateTaskRequest {
            id: id.into(),
            bundle: self.bundle.path().display().to_string(),
            ..Default::default()
        };
        Ok(self.service.create(&context(), req).await?.pid)
    }

    async fn start(&self, id: &str, exec: &str) -> Result<u32, ttrpc::Error> {
        let req = api::StartRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        Ok(self.service.start(&context(), req).await?.pid)
    }

    async fn exec(&self, id: &str, exec: &str) -> Result<(), ttrpc::Error> {
        let req = api::ExecProcessRequest {
            id: id.into(),
            exec_id: exec.into(),
            spec: Some(Any::new()).into(),
            ..Default::default()
        };
        self.service.exec(&context(), req).await.map(drop)
    }

    async fn run(&self, id: &str) {
        self.create(id).await.unwrap();
        self.start(id, "").await.unwrap();
    }

    async fn wait(&self, id: &str, exec: &str) -> Result<u32, ttrpc::Error> {
        let req = api::WaitRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        let context = context();
        let waited = tokio::time::timeout(PATIENCE, self.service.wait(&context, req));
        Ok(waited.await.expect("Wait did not return")?.exit_status)
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), ttrpc::Error> {
        let req = api::KillRequest {
            id: id.into(),
            signal,
            all,
            ..Default::default()
        };
        self.service.kill(&context(), req).await.map(drop)
    }

    async fn delete(&self, id: &str, exec: &str) -> Result<u32, ttrpc::Error> {
        let req = api::DeleteRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        Ok(self.service.delete(&context(), req).await?.exit_status)
    }

    async fn state(&self, id: &str, exec: &str) -> Result<api::StateResponse, ttrpc::Error> {
        let req = api::StateRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        self.service.state(&context(), req).await
    }
}

#[tokio::test]
async fn a_container_runs_exits_and_is_deleted_in_containerds_order() {
    let h = harness();
    let pid = h.create("web").await.unwrap();
    assert_eq!(
        h.state("web", "").await.unwrap().status,
        Status::CREATED.into()
    );
    assert_eq!(h.start("web", "").await.unwrap(), pid);
    assert_eq!(
        h.state("web", "").await.unwrap().status,
        Status::RUNNING.into()
    );

    h.guest.exit("web", "", 3);
    assert_eq!(h.wait("web", "").await.unwrap(), 3);
    let exited: TaskExit = h.events.published(EXIT).await;
    assert_eq!(
        (exited.id.as_str(), exited.pid, exited.exit_status),
        ("web", pid, 3)
    );
    let state = h.state("web", "").await.unwrap();
    assert_eq!(
        (state.status, state.exit_status),
        (Status::STOPPED.into(), 3)
    );

    assert_eq!(h.delete("web", "").await.unwrap(), 3);
    assert_eq!(h.events.topics(), [CREATE, START, EXIT, DELETE]);
    // The last container took the VM with it, after its removal.
    let calls = h.guest.calls();
    let position = |call: &str| calls.iter().position(|c| c == call).unwrap();
    assert!(position("remove web") < position("unmount-rootfs web"));
    assert!(position("unmount-rootfs web") < position("stop"));
    let (code, _) = status(h.kill("web", 9, false).await.unwrap_err());
    assert_eq!(code, Code::NOT_FOUND);
}

#[tokio::test]
async fn an_exit_before_the_wait_is_kept_for_it() {
    let h = harness();
    h.run("web").await;
    h.guest.exit("web", "", 0);
    let _: TaskExit = h.events.published(EXIT).await;
    assert_eq!(h.wait("web", "").await.unwrap(), 0);
    assert_eq!(h.wait("web", "").await.unwrap(), 0, "a second Wait too");
}

#[tokio::test]
async fn a_killed_process_is_waited_for_and_cannot_be_killed_again() {
    let h = harness();
    h.run("web").await;
    h.kill("web", 9, false).await.unwrap();
    assert_eq!(h.wait("web", "").await.unwrap(), 137);
    let _: TaskExit = h.events.published(EXIT).await;

    let (code, message) = status(h.kill("web", 9, false).await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (Code::NOT_FOUND, "process web has already exited")
    );
    // `kill --all` still reaches whatever else runs in the container.
    h.kill("web", 9, true).await.unwrap();
    h.guest.made("signal web/ 9 all").await;
}

#[tokio::test]
async fn a_second_delete_finds_nothing() {
    let h = harness();
    h.run("web").await;
    h.kill("web", 15, false).await.unwrap();
    assert_eq!(h.wait("web", "").await.unwrap(), 143);
    assert_eq!(h.delete("web", "").await.unwrap(), 143);
    let (code, message) = status(h.delete("web", "").await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (Code::NOT_FOUND, "container web not found")
    );
    let deletes = h.events.topics().iter().filter(|t| *t == DELETE).count();
    assert_eq!(deletes, 1);
}

#[tokio::test]
async fn a_container_deleted_while_running_reports_a_kill() {
    let h = harness();
    h.run("web").await;
    h.run("db").await;
    assert_eq!(h.delete("web", "").await.unwrap(), 137);
    let deleted: TaskDelete = h.events.published(DELETE).await;
    assert_eq!((deleted.id.as_str(), deleted.exit_status), ("web", 137));
    // Another container still runs: the VM stays, and so does the shim.
    assert!(!h.guest.calls().contains(&"stop".to_owned()));
    h.service
        .shutdown(&context(), api::ShutdownRequest::new())
        .await
        .unwrap();
    assert!(!h.guest.calls().contains(&"stop".to_owned()));
    h.delete("db", "").await.unwrap();
    h.service
        .shutdown(&context(), api::ShutdownRequest::new())
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, h.exit.wait())
        .await
        .expect("the shim ends after Shutdown");
}

#[tokio::test]
async fn an_exec_runs_exits_and_is_deleted() {
    let h = harness();
    h.run("web").await;
    h.exec("web", "sh").await.unwrap();
    let (code, message) = status(h.exec("web", "sh").await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (Code::ALREADY_EXISTS, "exec sh already exists")
    );
    h.start("web", "sh").await.unwrap();
    let (code, message) = status(h.start("web", "sh").await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (Code::FAILED_PRECONDITION, "exec sh already started")
    );
    let (code, message) = status(h.delete("web", "sh").await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (Code::FAILED_PRECONDITION, "exec sh is still running")
    );
    h.guest.exit("web", "sh", 7);
    assert_eq!(h.wait("web", "sh").await.unwrap(), 7);
    assert_eq!(h.delete("web", "sh").await.unwrap(), 7);
    assert_eq!(
        h.events.topics(),
        [CREATE, START, EXEC_ADDED, EXEC_STARTED, EXIT]
    );
    assert_eq!(
        status(h.state("web", "sh").await.unwrap_err()).0,
        Code::NOT_FOUND
    );
}

#[tokio::test]
async fn a_wait_on_an_exec_deleted_unstarted_ends_with_an_error() {
    let h = harness();
    h.run("web").await;
    h.exec("web", "sh").await.unwrap();
    let req = api::WaitRequest {
        id: "web".into(),
        exec_id: "sh".into(),
        ..Default::default()
    };
    let context = context();
    let mut waiting = std::pin::pin!(h.service.wait(&context, req));
    // Polled once: the Wait is waiting when the Delete comes.
    tokio::select! {
        biased;
        _ = &mut waiting => panic!("an unstarted exec has no exit to wait for"),
        () = std::future::ready(()) => {}
    }
    h.delete("web", "sh").await.unwrap();
    let waited = tokio::time::timeout(PATIENCE, waiting).await.unwrap();
    assert_eq!(status(waited.unwrap_err()).0, Code::INTERNAL);
}

#[tokio::test]
async fn a_dead_vm_ends_every_process_with_sigkill() {
    let h = harness();
    h.run("web").await;
    h.exec("web", "sh").await.unwrap();
    h.start("web", "sh").await.unwrap();
    h.guest.kill_vm();
    assert_eq!(h.wait("web", "").await.unwrap(), 137);
    assert_eq!(h.wait("web", "sh").await.unwrap(), 137);
    assert_eq!(h.delete("web", "").await.unwrap(), 137);
    // The guest is gone: nothing is asked of it.
    assert!(!h.guest.calls().contains(&"remove web".to_owned()));
}

#[tokio::test]
async fn a_refused_create_leaves_nothing_and_keeps_the_agents_words() {
    let h = harness();
    h.guest.refuse_create.lock().unwrap().insert("web".into());
    let (code, message) = status(h.create("web").await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (
            Code::INVALID_ARGUMENT,
            "executable file not found in $PATH: nope"
        )
    );
    assert!(h.guest.calls().contains(&"unmount-rootfs web".to_owned()));
    assert_eq!(
        status(h.state("web", "").await.unwrap_err()).0,
        Code::NOT_FOUND
    );
    assert!(h.events.topics().is_empty());

    h.guest.refuse_create.lock().unwrap().clear();
    h.run("web").await;
}

#[tokio::test]
async fn failed_stdio_undoes_create_and_start_with_the_same_code() {
    let h = harness();
    h.guest.refuse_attach.lock().unwrap().insert("web/".into());
    let (create_code, _) = status(h.create("web").await.unwrap_err());
    // Removed from the guest first, then unmounted.
    let calls = h.guest.made("unmount-rootfs web").await;
    let position = |call: &str| calls.iter().position(|c| c == call);
    assert!(position("remove web") < position("unmount-rootfs web"));
    assert_eq!(
        status(h.state("web", "").await.unwrap_err()).0,
        Code::NOT_FOUND
    );

    h.run("db").await;
    h.exec("db", "sh").await.unwrap();
    h.guest.refuse_attach.lock().unwrap().insert("db/sh".into());
    let (start_code, _) = status(h.start("db", "sh").await.unwrap_err());
    assert_eq!(start_code, create_code);
    assert_eq!(start_code, Code::FAILED_PRECONDITION);
    // The exec does not stay running in the guest.
    h.guest.made("signal db/sh 9").await;
    assert!(!h.events.topics().contains(&EXEC_STARTED.to_owned()));
}

#[tokio::test]
async fn calls_before_the_vm_starts_say_so() {
    let h = harness();
    let (code, message) = status(h.kill("web", 9, false).await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (Code::NOT_FOUND, "container web not found")
    );
    let (code, message) = status(h.start("web", "").await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (Code::FAILED_PRECONDITION, "the sandbox VM is not running")
    );
}

#[tokio::test]
async fn the_first_create_starts_the_vm_and_a_duplicate_is_refused() {
    let h = harness();
    h.run("web").await;
    h.run("db").await;
    let launches = h.guest.calls().iter().filter(|c| *c == "launch").count();
    assert_eq!(launches, 1);
    let (code, message) = status(h.create("web").await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (Code::ALREADY_EXISTS, "container web already exists")
    );
    assert_eq!(
        h.state("web", "").await.unwrap().status,
        Status::RUNNING.into()
    );
}

#[tokio::test]
async fn an_oom_kill_is_reported_before_the_exit() {
    let h = harness();
    h.run("web").await;
    h.guest.oom_kill("web");
    assert_eq!(h.wait("web", "").await.unwrap(), 137);
    let _: TaskExit = h.events.published(EXIT).await;
    assert_eq!(h.events.topics(), [CREATE, START, OOM, EXIT]);
}

#[tokio::test]
async fn pause_and_resume_show_in_state_and_events() {
    let h = harness();
    h.run("web").await;
    let id = || "web".to_owned();
    let paused = api::PauseRequest {
        id: id(),
        ..Default::default()
    };
    h.service.pause(&context(), paused).await.unwrap();
    assert_eq!(
        h.state("web", "").await.unwrap().status,
        Status::PAUSED.into()
    );
    let resumed = api::ResumeRequest {
        id: id(),
        ..Default::default()
    };
    h.service.resume(&context(), resumed).await.unwrap();
    assert_eq!(
        h.state("web", "").await.unwrap().status,
        Status::RUNNING.into()
    );
    assert_eq!(h.events.topics(), [CREATE, START, PAUSED, RESUMED]);
}

#[tokio::test]
async fn containerd_is_told_the_vmms_pid_and_listpids_the_guests() {
    let h = harness();
    assert_eq!(h.create("web").await.unwrap(), FAKE_VMM_PID);
    assert_eq!(h.start("web", "").await.unwrap(), FAKE_VMM_PID);
    assert_eq!(h.state("web", "").await.unwrap().pid, FAKE_VMM_PID);
    h.exec("web", "sh").await.unwrap();
    assert_eq!(h.start("web", "sh").await.unwrap(), FAKE_VMM_PID);
    let req = api::PidsRequest {
        id: "web".into(),
        ..Default::default()
    };
    let listed = h.service.pids(&context(), req).await.unwrap();
    let pids: Vec<u32> = listed.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [1, 7]);
}
