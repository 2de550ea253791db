//! Kicking a vCPU thread out of KVM_RUN: a real-time signal whose handler
//! does nothing; KVM_RUN returns EINTR and the thread looks at its requests.

/// The signal that kicks a vCPU out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the kick signal's handler (a no-op: the point is the EINTR).
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn kicked(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kicked)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Kicks the vCPU thread `thread`.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is the pthread of a vCPU thread, which never exits
    // before the process does unless the guest ended (then the VMM is
    // exiting); the kick signal has a handler in every thread.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}
