//! One process of a container as the shim tracks it (the init, or an
//! exec): its status, stdio, and its exit, which every Wait subscribes to.

use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim::protos::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

use crate::io::StdioPaths;

/// Exit status reported for processes whose VM died under them (SIGKILL).
pub const VM_DIED_STATUS: u32 = 128 + 9;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at_unix_nanos: u64,
}

impl Exit {
    /// The exit of a process killed with its VM, now.
    pub fn vm_died() -> Self {
        Exit {
            status: VM_DIED_STATUS,
            at_unix_nanos: now_nanos(),
        }
    }

    pub fn timestamp(&self) -> Timestamp {
        let mut ts = Timestamp::new();
        ts.seconds = (self.at_unix_nanos / 1_000_000_000) as i64;
        ts.nanos = (self.at_unix_nanos % 1_000_000_000) as i32;
        ts
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub struct Process {
    /// The pid containerd is told: the sandbox VMM's (guest pids name
    /// unrelated processes on the host). 0 until the process runs.
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
    /// The OCI process of an exec that has not started yet.
    pub exec_spec: Option<Vec<u8>>,
    /// Dropping it (deleting the process) ends every Wait still waiting.
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(stdio: StdioPaths) -> Self {
        Process {
            pid: 0,
            status: Status::CREATED,
            stdio,
            exec_spec: None,
            exit: watch::Sender::new(None),
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Follows the exit, for a Wait.
    pub fn subscribe(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }

    /// Records `exit` unless an exit is recorded already (the VM's death
    /// may have come first); returns the one recorded.
    pub fn record_exit(&self, exit: Exit) -> Exit {
        self.exit.send_if_modified(|slot| {
            let first = slot.is_none();
            if first {
                *slot = Some(exit);
            }
            first
        });
        self.exit().unwrap_or(exit)
    }

    /// What containerd's State shows: an exited process is stopped.
    pub fn reported_status(&self) -> Status {
        if self.exit().is_some() {
            Status::STOPPED
        } else {
            self.status
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_exit_recorded_stands_and_wakes_waiters() {
        let process = Process::new(StdioPaths::default());
        let waiter = process.subscribe();
        assert_eq!(process.reported_status(), Status::CREATED);
        let died = Exit {
            status: VM_DIED_STATUS,
            at_unix_nanos: 1,
        };
        assert_eq!(process.record_exit(died), died);
        let late = Exit {
            status: 0,
            at_unix_nanos: 2,
        };
        assert_eq!(process.record_exit(late), died);
        assert_eq!(*waiter.borrow(), Some(died));
        assert_eq!(process.reported_status(), Status::STOPPED);
    }

    #[test]
    fn exit_times_become_timestamps() {
        let exit = Exit {
            status: 0,
            at_unix_nanos: 3_000_000_007,
        };
        let ts = exit.timestamp();
        assert_eq!((ts.seconds, ts.nanos), (3, 7));
    }
}
