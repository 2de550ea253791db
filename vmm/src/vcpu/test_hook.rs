//! Debug builds only: makes vCPU 0 call a syscall its seccomp filter forbids,
//! so tests can check that this kills the VMM (SIGSYS) and how the shim then
//! reports the VM's death. SIGUSR1 to the VMM sets the request (signal
//! thread) and kicks vCPU 0 out of KVM_RUN (`super::kick`); the vCPU sees
//! the request after KVM_RUN returns.

use std::sync::atomic::{AtomicBool, Ordering};

static FORBIDDEN_SYSCALL: AtomicBool = AtomicBool::new(false);

/// Asks vCPU 0 to make a forbidden syscall, and kicks `vcpu0` (its pthread).
pub fn request_forbidden_syscall(vcpu0: libc::pthread_t) {
    FORBIDDEN_SYSCALL.store(true, Ordering::SeqCst);
    super::kick::kick(vcpu0);
}

/// Called by vCPU `id` after every KVM_RUN.
pub(super) fn check(id: u8) {
    if id == 0 && FORBIDDEN_SYSCALL.load(Ordering::SeqCst) {
        tracing::error!("test hook: vCPU 0 makes a forbidden syscall (getppid)");
        // SAFETY: getppid takes no arguments and changes nothing; the vCPU
        // filter forbids it, so this ends the process with SIGSYS.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}
