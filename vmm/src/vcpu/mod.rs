//! vCPU threads: each installs its seccomp filter, waits to be released, then
//! runs KVM_RUN in a loop and hands port I/O and MMIO exits to the buses.
//! Anything that ends the guest is reported as a [`VmEvent`].

pub mod kick;
pub mod setup;
#[cfg(debug_assertions)]
pub mod test_hook;

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::Bus;
use crate::seccomp::{self, Filter, SeccompError};
use crate::snapshot::pause::VcpuPause;
use crate::vm_event::VmEvent;

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
}

/// The port I/O and MMIO address spaces every vCPU sees.
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

/// A vCPU thread's start: it reports on `ready` once its filter is installed
/// (or why it could not be), then waits for `release` before the guest's first
/// instruction.
pub struct VcpuStart {
    pub filter: Filter,
    pub ready: Sender<Result<(), SeccompError>>,
    pub release: Receiver<()>,
    /// A template boot's pause request, looked at after every exit.
    pub pause: Option<Arc<VcpuPause>>,
}

impl Vcpu {
    /// Runs the vCPU on a thread of its own until the guest stops it.
    pub fn spawn(
        mut self,
        buses: Arc<Buses>,
        events: Sender<VmEvent>,
        start: VcpuStart,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        crate::thread::builder(format!("vcpu{}", self.id)).spawn(move || {
            let VcpuStart {
                filter,
                ready,
                release,
                pause,
            } = start;
            let installed = seccomp::install(&filter);
            let ok = installed.is_ok();
            // Dropped once sent: the VM counts answers, not senders.
            let _ = ready.send(installed);
            drop(ready);
            // A dropped release (the VM failed to start) never runs the guest.
            if !ok || release.recv().is_err() {
                return;
            }
            let event = self.run(&buses, pause.as_deref());
            let _ = events.send(event);
        })
    }

    fn run(&mut self, buses: &Buses, pause: Option<&VcpuPause>) -> VmEvent {
        let id = self.id;
        let failed = |reason: String| VmEvent::VcpuFailed { vcpu: id, reason };
        loop {
            if let Some(pause) = pause.filter(|pause| pause.requested()) {
                pause.pause_here(id, &mut self.fd);
            }
            let exit = self.fd.run();
            #[cfg(debug_assertions)]
            test_hook::check(id);
            match exit {
                Ok(VcpuExit::IoIn(port, data)) => buses.pio.read(u64::from(port), data),
                Ok(VcpuExit::IoOut(port, data)) => buses.pio.write(u64::from(port), data),
                Ok(VcpuExit::MmioRead(address, data)) => buses.mmio.read(address, data),
                Ok(VcpuExit::MmioWrite(address, data)) => buses.mmio.write(address, data),
                // A triple fault: how `reboot=t` restarts, and how a wrecked
                // guest dies. Either way the guest is gone.
                Ok(VcpuExit::Shutdown) => return VmEvent::GuestReset,
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    return match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN
                        | kvm_bindings::KVM_SYSTEM_EVENT_RESET => VmEvent::GuestReset,
                        other => failed(format!("unexpected system event {other}")),
                    };
                }
                Ok(VcpuExit::Hlt) => return failed("halted with interrupts disabled".into()),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return failed(format!(
                        "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                    ))
                }
                Ok(VcpuExit::InternalError) => {
                    return failed("KVM internal error (emulation failure)".into())
                }
                Ok(other) => return failed(format!("unexpected exit {other:?}")),
                Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {}
                Err(error) => return failed(format!("KVM_RUN failed: {error}")),
            }
        }
    }
}
