//! Debug builds only: makes vCPU 0 call a syscall its seccomp filter forbids,
//! so tests can check that this kills the VMM (SIGSYS) and how the shim then
//! reports the VM's death. SIGUSR1 to the VMM sets the request (signal
//! thread) and kicks vCPU 0 out of KVM_RUN with a real-time signal whose
//! handler does nothing; the vCPU sees the request after KVM_RUN returns.

use std::sync::atomic::{AtomicBool, Ordering};

static FORBIDDEN_SYSCALL: AtomicBool = AtomicBool::new(false);

/// The signal that kicks a vCPU out of KVM_RUN (KVM_RUN returns EINTR).
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the kick signal's handler (a no-op: the point is the EINTR).
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn kicked(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kicked)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Asks vCPU 0 to make a forbidden syscall, and kicks `vcpu0` (its pthread).
pub fn request_forbidden_syscall(vcpu0: libc::pthread_t) {
    FORBIDDEN_SYSCALL.store(true, Ordering::SeqCst);
    // SAFETY: `vcpu0` is the pthread of a vCPU thread, which never exits
    // before the process does unless the guest ended (then the VMM is
    // exiting); the kick signal has a handler in every thread.
    unsafe { libc::pthread_kill(vcpu0, kick_signal()) };
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
