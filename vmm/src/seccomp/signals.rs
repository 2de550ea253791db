//! The signal thread: signal-hook's handler runs here (SIGTERM, SIGINT are
//! blocked on every other thread) and wakes the thread through a socket pair;
//! the thread turns them into a stop request on a channel.

use super::{runtime, Rules};

pub(super) fn rules() -> Rules {
    let mut rules = Rules::default();
    runtime(&mut rules);
    rules.allow(&[
        // Waiting on signal-hook's socket pair, and the handler's wake-up.
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_read,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
    ]);
    // Debug builds: SIGUSR1 kicks vCPU 0 out of KVM_RUN (the seccomp test hook).
    #[cfg(debug_assertions)]
    rules.allow(&[libc::SYS_tgkill, libc::SYS_getpid, libc::SYS_gettid]);
    rules
}
