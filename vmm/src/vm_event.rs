//! Why a VM stops: what vCPU threads, the reset line and the signal handler
//! report to the thread that waits on the VM.

/// Why the guest stopped, or why the VM could not go on.
#[derive(Debug, Clone)]
pub enum VmEvent {
    /// The guest restarted or powered off: it is done.
    GuestReset,
    VcpuFailed {
        vcpu: u8,
        reason: String,
    },
    /// The host asked us to stop (SIGTERM/SIGINT).
    Stop,
    /// The agent of a template boot is ready to be saved; the vCPUs are
    /// pausing.
    SnapshotPoint,
}
