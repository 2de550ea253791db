//! Starting a cocoon-vmm process whose exit the shim learns of.
//!
//! containerd-shim's reaper collects every child (waitpid(-1)), so a VMM's
//! exit only ever arrives through its monitor: subscribe before spawning.

use std::os::fd::RawFd;
use std::process::Command;

use containerd_shim::monitor::{monitor_subscribe, monitor_unsubscribe, Subject, Topic};
use tokio::sync::watch;

/// The descriptor number the VMM finds its network's tap under.
pub const VMM_TAP_FD: i32 = 3;

/// A started VMM: its pid and its exit code once it exited.
pub struct WatchedVmm {
    pub pid: i32,
    pub exit: watch::Receiver<Option<i32>>,
}

/// Spawns `command` and watches for its exit.
pub async fn spawn(command: &mut Command) -> std::io::Result<WatchedVmm> {
    let mut exits = monitor_subscribe(Topic::Pid)
        .await
        .map_err(|e| std::io::Error::other(format!("watching the VMM: {e}")))?;
    let child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let _ = monitor_unsubscribe(exits.id).await;
            return Err(error);
        }
    };
    let pid = child.id() as i32;
    let (exit_sender, exit) = watch::channel(None);
    tokio::spawn(async move {
        while let Some(event) = exits.rx.recv().await {
            if matches!(event.subject, Subject::Pid(exited) if exited == pid) {
                let _ = exit_sender.send(Some(event.exit_code));
                break;
            }
        }
        let _ = monitor_unsubscribe(exits.id).await;
    });
    Ok(WatchedVmm { pid, exit })
}

/// Has the VMM inherit the tap at `tap` as [`VMM_TAP_FD`], the one
/// descriptor besides stdio it inherits (everything the shim opens is
/// close-on-exec).
pub fn pass_tap(command: &mut std::process::Command, tap: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe calls (dup2, fcntl) on descriptors it owns.
    unsafe {
        command.pre_exec(move || {
            if tap == VMM_TAP_FD {
                // dup2 onto itself would keep close-on-exec.
                if libc::fcntl(tap, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(tap, VMM_TAP_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
