//! Reaping, as PID 1 must: every child and every orphan that ends in the
//! guest is collected here with `waitpid(-1)`, and whoever waits for a
//! particular pid gets its status from here (never from `waitpid(pid)`, which
//! would race this loop).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a process ended, in the shell's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode(pub u32);

impl ExitCode {
    fn from_wait_status(status: WaitStatus) -> Option<Self> {
        match status {
            WaitStatus::Exited(_, code) => Some(ExitCode(code as u32)),
            WaitStatus::Signaled(_, signal, _) => Some(ExitCode(128 + signal as u32)),
            _ => None,
        }
    }
}

/// Exits nobody has claimed yet are kept this long at most, so that a process
/// that ends before its starter learns its pid is not missed, while orphans
/// nobody asks about do not pile up.
const UNCLAIMED_LIMIT: usize = 4096;

#[derive(Default)]
struct Table {
    /// Exits seen but not yet claimed, with when they were seen.
    unclaimed: HashMap<i32, (ExitCode, Instant)>,
    /// Claims waiting for an exit.
    waiting: HashMap<i32, oneshot::Sender<ExitCode>>,
}

#[derive(Clone, Default)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

impl Reaper {
    /// Starts reaping. Must run before the first child is spawned.
    pub fn start() -> std::io::Result<Self> {
        let reaper = Reaper::default();
        let mut sigchld = signal(SignalKind::child())?;
        let looping = reaper.clone();
        tokio::spawn(async move {
            loop {
                looping.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    let (Some(pid), Some(code)) =
                        (status.pid(), ExitCode::from_wait_status(status))
                    else {
                        continue;
                    };
                    self.record(pid.as_raw(), code);
                }
                Err(Errno::EINTR) => continue,
                Err(error) => {
                    tracing::warn!("waitpid: {error}");
                    return;
                }
            }
        }
    }

    fn record(&self, pid: i32, code: ExitCode) {
        let mut table = lock(&self.table);
        if let Some(waiter) = table.waiting.remove(&pid) {
            // A dropped receiver means nobody waits any more: nothing to do.
            let _ = waiter.send(code);
            return;
        }
        if table.unclaimed.len() >= UNCLAIMED_LIMIT {
            if let Some(oldest) = table
                .unclaimed
                .iter()
                .min_by_key(|(_, (_, seen))| *seen)
                .map(|(pid, _)| *pid)
            {
                table.unclaimed.remove(&oldest);
            }
        }
        table.unclaimed.insert(pid, (code, Instant::now()));
    }

    /// Claims the exit of `pid`, a process started at or after `started`
    /// (older records under the same pid belong to an earlier process).
    pub fn claim(&self, pid: i32, started: Instant) -> oneshot::Receiver<ExitCode> {
        let (sender, receiver) = oneshot::channel();
        let mut table = lock(&self.table);
        match table.unclaimed.remove(&pid) {
            Some((code, seen)) if seen >= started => {
                let _ = sender.send(code);
            }
            _ => {
                table.waiting.insert(pid, sender);
            }
        }
        receiver
    }
}

/// The table stays consistent even if a holder panicked: every update is a
/// single map operation.
fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_128_plus_n() {
        let pid = Pid::from_raw(7);
        let killed = WaitStatus::Signaled(pid, nix::sys::signal::Signal::SIGKILL, false);
        assert_eq!(ExitCode::from_wait_status(killed), Some(ExitCode(137)));
        assert_eq!(
            ExitCode::from_wait_status(WaitStatus::Exited(pid, 42)),
            Some(ExitCode(42))
        );
    }

    #[test]
    fn exit_before_claim_is_kept() {
        let reaper = Reaper::default();
        let started = Instant::now();
        reaper.record(10, ExitCode(3));
        let mut claim = reaper.claim(10, started);
        assert_eq!(claim.try_recv(), Ok(ExitCode(3)));
    }

    #[test]
    fn exit_of_an_earlier_process_with_the_same_pid_is_ignored() {
        let reaper = Reaper::default();
        reaper.record(10, ExitCode(3));
        let started = Instant::now();
        let mut claim = reaper.claim(10, started);
        assert!(claim.try_recv().is_err());
        reaper.record(10, ExitCode(0));
        assert_eq!(claim.try_recv(), Ok(ExitCode(0)));
    }
}
