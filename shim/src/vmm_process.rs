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

/// Has the VMM inherit each `(fd, number)` of `fds` as descriptor
/// `number` (the tap as [`VMM_TAP_FD`], the disk as
/// [`crate::scratch_disk::VMM_DISK_FD`]): the only descriptors besides stdio
/// it inherits (everything the shim opens is close-on-exec).
pub fn pass_fds(command: &mut std::process::Command, fds: Vec<(RawFd, RawFd)>) {
    use std::os::unix::process::CommandExt;
    // Above every target, so that no dup2 below overwrites a source.
    const FIRST_SPARE: RawFd = 64;
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe calls (fcntl, dup2) on descriptors it owns;
    // it allocates nothing (the Vec was made before the fork).
    unsafe {
        command.pre_exec(move || {
            let mut spares = [0 as RawFd; 4];
            if fds.len() > spares.len() {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            for (spare, &(fd, _)) in spares.iter_mut().zip(&fds) {
                *spare = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FIRST_SPARE);
                if *spare < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // dup2 clears close-on-exec on the target; the spares close at exec.
            for (spare, &(_, number)) in spares.iter().zip(&fds) {
                if libc::dup2(*spare, number) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
