//! Running a short host program (an OCI hook, mkfs.xfs) to its end.
//!
//! containerd-shim's reaper collects every child (waitpid(-1)), so our own
//! wait may find the child gone (ECHILD): its exit then only arrives
//! through the reaper's monitor. We subscribe before the spawn and take
//! whichever of the two tells first.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use containerd_shim::monitor::{monitor_subscribe, monitor_unsubscribe, Subject, Topic};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::tempfile;

/// Why a program could not be run to its end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("a file for its output: {0}")]
    OutputFile(std::io::Error),
    #[error("watching it: {0}")]
    Watch(String),
    #[error("starting it: {0}")]
    Start(std::io::Error),
    #[error("still running after {0:?}; killed")]
    TimedOut(Duration),
    #[error("lost track of it")]
    Lost,
}

/// How a program ended, and the end of what it wrote.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// The last bytes of its stdout and stderr together, trimmed.
    pub output_tail: String,
}

/// Runs `command` with `stdin` as its input and its stdout and stderr in a
/// file (read up while anything it left behind may keep a pipe open), and
/// kills it after `limit`. Keeps at most `kept` bytes of its output.
pub async fn run(
    mut command: Command,
    stdin: Vec<u8>,
    limit: Duration,
    kept: usize,
) -> Result<Finished, RunError> {
    let mut output = tempfile().map_err(RunError::OutputFile)?;
    let stdout = output.try_clone().map_err(RunError::OutputFile)?;
    let stderr = output.try_clone().map_err(RunError::OutputFile)?;
    // No input: no pipe, and no thread to feed it.
    let input = if stdin.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    };
    command
        .stdin(input)
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    let mut exits = monitor_subscribe(Topic::Pid)
        .await
        .map_err(|e| RunError::Watch(e.to_string()))?;
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let _ = monitor_unsubscribe(exits.id).await;
            return Err(RunError::Start(error));
        }
    };
    let pid = child.id() as i32;
    if let Some(mut pipe) = child.stdin.take() {
        // A program that never reads its stdin must not hold us up.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&stdin);
        });
    }
    let mut waited = tokio::task::spawn_blocking(move || child.wait());
    let mut waiting = true;
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let status = loop {
        tokio::select! {
            done = &mut waited, if waiting => match done {
                Ok(Ok(status)) => break Ok(status),
                // Reaped by the shim's reaper: the monitor has it.
                _ => waiting = false,
            },
            event = exits.rx.recv() => match event {
                Some(event) if matches!(event.subject, Subject::Pid(p) if p == pid) => {
                    break Ok(ExitStatus::from_raw(event.exit_code << 8));
                }
                Some(_) => {}
                None => break Err(RunError::Lost),
            },
            () = &mut deadline => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                break Err(RunError::TimedOut(limit));
            }
        }
    };
    let _ = monitor_unsubscribe(exits.id).await;
    Ok(Finished {
        status: status?,
        output_tail: tail(&mut output, kept),
    })
}

/// The last `kept` bytes (at most) of `file`, trimmed: only those are
/// read, however much the program wrote.
fn tail(file: &mut File, kept: usize) -> String {
    let len = file.metadata().map_or(0, |meta| meta.len());
    let from = len.saturating_sub(kept as u64);
    let mut said = Vec::with_capacity(kept.min(len as usize));
    let _ = file
        .seek(SeekFrom::Start(from))
        .and_then(|_| file.take(kept as u64).read_to_end(&mut said));
    // A character cut at `from` becomes one replacement character.
    String::from_utf8_lossy(&said).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_program_runs_with_its_input_and_its_output_tail_is_kept() {
        let mut command = Command::new("sh");
        command.args(["-c", "cat; echo done >&2; exit 3"]);
        let finished = run(command, b"0123456789".to_vec(), Duration::from_secs(30), 9)
            .await
            .unwrap();
        assert_eq!(finished.status.code(), Some(3));
        assert_eq!(finished.output_tail, "6789done");
    }

    #[tokio::test]
    async fn a_program_past_its_limit_is_killed() {
        let mut command = Command::new("sleep");
        command.arg("600");
        let error = run(command, Vec::new(), Duration::from_millis(200), 8)
            .await
            .unwrap_err();
        assert!(matches!(error, RunError::TimedOut(_)), "{error}");
    }
}
