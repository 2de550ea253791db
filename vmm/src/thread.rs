//! Threads of the VMM.
//!
//! All of them get 1 MiB stacks instead of Rust's 2 MiB default: on hosts with
//! transparent huge pages set to "always", a 2 MiB stack that happens to be
//! 2 MiB-aligned (as the ones mapped right below guest RAM are) is backed by
//! a whole huge page, 2 MiB of resident memory per thread for a few KiB used.

/// Stack size of every VMM thread.
pub const STACK_SIZE: usize = 1 << 20;

/// A thread builder with the VMM's stack size and `name`.
pub fn builder(name: impl Into<String>) -> std::thread::Builder {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(STACK_SIZE)
}

/// Makes the calling thread SCHED_BATCH: it no longer preempts the thread
/// running on its CPU when it wakes, but waits for that thread to block or
/// for the scheduler's tick. For device threads that a busy vCPU wakes
/// again and again (virtio-net's worker, at every frame sent): preempted,
/// the vCPU leaves the guest each time, and the device gets one frame per
/// wakeup instead of a batch. Placement is unchanged: on a host with an idle
/// CPU the thread still runs there at once. Failing is not fatal (the
/// thread keeps the normal policy); the error is logged.
pub fn schedule_as_batch() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(0, ..) changes only this thread's policy;
    // `param` is a valid sched_param that outlives the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot make a device thread SCHED_BATCH; it keeps the normal policy"
        );
    }
}
