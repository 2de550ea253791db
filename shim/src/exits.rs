//! Exit watching: a task per started process waits for its exit in the
//! guest (or the VM's death), lets its output drain, records the exit and
//! publishes TaskExit, so output reaches containerd before the exit does.
//! Another task ends every process when the VMM dies.

use std::sync::Arc;

use containerd_shim::protos::api::Status;
use containerd_shim::protos::events::task::{TaskExit, TaskOOM};

use crate::container::ContainerTable;
use crate::events::Events;
use crate::guest::{vm_exited, Guest};
use crate::io::{self, Relay, OUTPUT_DRAIN_LIMIT};
use crate::process::Exit;

/// A dead VMM ends every process in it.
pub fn watch_vm(guest: Arc<dyn Guest>, table: ContainerTable) {
    tokio::spawn(async move {
        let mut exit = guest.vmm_exit();
        let Ok(code) = exit.wait_for(Option::is_some).await.map(|c| *c) else {
            return;
        };
        tracing::warn!("cocoon-vmm exited ({code:?}); every process in the sandbox is gone");
        for process in table.lock().processes() {
            process.record_exit(Exit::vm_died());
        }
    });
}

/// A started process (`container`, `exec` "" for the init) and what its
/// exit watcher needs.
pub struct Watched {
    pub container: String,
    pub exec: String,
    pub relay: Relay,
    /// containerd's stdin path, released once the process is gone.
    pub stdin: String,
}

/// Watches a started process until its exit is recorded and published.
pub fn watch_exit(guest: Arc<dyn Guest>, table: ContainerTable, events: Events, watched: Watched) {
    tokio::spawn(async move {
        let Watched {
            container,
            exec,
            relay,
            stdin,
        } = watched;
        let mut vm_exit = guest.vmm_exit();
        let exit = tokio::select! {
            result = guest.agent().wait(&container, &exec) => match result {
                Ok(exit) => {
                    if exit.oom_killed {
                        events.publish(TaskOOM {
                            container_id: container.clone(),
                            ..Default::default()
                        }).await;
                    }
                    Exit { status: exit.exit_status, at_unix_nanos: exit.exited_at_unix_nanos }
                }
                Err(error) => {
                    tracing::warn!("waiting for {container}/{exec}: {error}");
                    Exit::vm_died()
                }
            },
            () = vm_exited(&mut vm_exit) => Exit::vm_died(),
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
        // A process deleted meanwhile has no exit left to report.
        let Ok((pid, recorded)) = table.with_process(&container, &exec, |process| {
            process.status = Status::STOPPED;
            (process.pid, process.record_exit(exit))
        }) else {
            return;
        };
        events
            .publish(TaskExit {
                id: if exec.is_empty() {
                    container.clone()
                } else {
                    exec
                },
                container_id: container,
                pid,
                exit_status: recorded.status,
                exited_at: Some(recorded.timestamp()).into(),
                ..Default::default()
            })
            .await;
    });
}
