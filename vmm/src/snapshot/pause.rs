//! Pausing every vCPU of a template boot at the snapshot point.
//!
//! The guest's agent writes to the snapshot point port ([`SnapshotPoint`]);
//! the vCPU that wrote it pauses right after the instruction, and the main
//! thread kicks the others out of KVM_RUN until each has paused too. A
//! paused vCPU completes the I/O its last exit started (KVM_RUN with
//! `immediate_exit`, as KVM asks before reading a vCPU's state), saves its
//! state, hands it over and never runs again: the VMM exits once the VM is
//! saved.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;

use super::{SnapshotError, VcpuState};
use crate::bus::BusDevice;
use crate::vm_event::VmEvent;

type Saved = Result<VcpuState, SnapshotError>;

/// The pause request every vCPU of a template boot looks at after each exit.
pub struct VcpuPause {
    requested: AtomicBool,
    saved_tx: Mutex<Sender<Saved>>,
    saved: Mutex<Receiver<Saved>>,
    // The MSRs KVM saves (KVM_GET_MSR_INDEX_LIST).
    msr_indices: Vec<u32>,
}

impl VcpuPause {
    pub fn new(msr_indices: Vec<u32>) -> Self {
        let (saved_tx, saved) = channel();
        Self {
            requested: AtomicBool::new(false),
            saved_tx: Mutex::new(saved_tx),
            saved: Mutex::new(saved),
            msr_indices,
        }
    }

    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The vCPU thread's side: completes the pending exit, saves the state,
    /// hands it over and parks for good.
    pub fn pause_here(&self, id: u8, fd: &mut VcpuFd) -> ! {
        fd.set_kvm_immediate_exit(1);
        // EINTR at once, after KVM finished the last exit's I/O.
        let _ = fd.run();
        fd.set_kvm_immediate_exit(0);
        let saved = VcpuState::save(id, fd, &self.msr_indices);
        if let Ok(sender) = self.saved_tx.lock() {
            let _ = sender.send(saved);
        }
        loop {
            std::thread::park();
        }
    }

    /// The main thread's side: kicks `vcpus` (their pthreads) until each has
    /// paused and saved itself, at most `patience`; the states by vCPU id.
    pub fn collect(
        &self,
        vcpus: &[libc::pthread_t],
        patience: Duration,
    ) -> Result<Vec<VcpuState>, SnapshotError> {
        self.request();
        let saved = self
            .saved
            .lock()
            .map_err(|_| SnapshotError::PauseTimeout(vcpus.len()))?;
        let deadline = Instant::now() + patience;
        let mut states = Vec::with_capacity(vcpus.len());
        while states.len() < vcpus.len() {
            if Instant::now() >= deadline {
                return Err(SnapshotError::PauseTimeout(vcpus.len() - states.len()));
            }
            // A vCPU about to enter KVM_RUN misses a kick: kick again.
            for &thread in vcpus {
                crate::vcpu::kick::kick(thread);
            }
            if let Ok(state) = saved.recv_timeout(Duration::from_millis(20)) {
                states.push(state?);
            }
        }
        states.sort_by_key(|state| state.id);
        Ok(states)
    }
}

/// The port the agent of a template boot writes to once it is ready to be
/// saved ([`cocoon_protocol::SNAPSHOT_POINT_PORT`]): it pauses the vCPUs and
/// tells the main thread, once.
pub struct SnapshotPoint {
    pause: std::sync::Arc<VcpuPause>,
    events: Sender<VmEvent>,
    reached: bool,
}

impl SnapshotPoint {
    pub fn new(pause: std::sync::Arc<VcpuPause>, events: Sender<VmEvent>) -> Self {
        Self {
            pause,
            events,
            reached: false,
        }
    }
}

impl BusDevice for SnapshotPoint {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data == [cocoon_protocol::SNAPSHOT_POINT] && !self.reached {
            self.reached = true;
            self.pause.request();
            let _ = self.events.send(VmEvent::SnapshotPoint);
        }
    }
}
