//! virtio-rng: the guest's entropy source, fed from the host's getrandom.
//!
//! One queue; the driver posts device-writable buffers and we fill them. A
//! worker thread owns the queue after activation so vCPU threads never block on
//! the host entropy pool.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use tracing::error;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::VirtioInterrupt;
use super::warn_limit::{limited, WarnLimiter};
use super::worker_thread::WorkerThread;
use super::{
    ActivateError, GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_ID_RNG,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes handed out per request, so that a guest posting huge buffers
/// cannot make us allocate or read without bound; the driver simply asks again.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
const AVAIL_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;

/// The virtio entropy device.
#[derive(Default)]
pub struct Rng {
    acked_features: u64,
    worker: Option<WorkerThread>,
    warn_limit: WarnLimiter,
}

impl Rng {
    /// A new, not yet activated entropy device.
    pub fn new() -> Self {
        Self::default()
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & AVAIL_FEATURES;
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no config space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        limited!(
            self.warn_limit,
            warn,
            offset,
            len = data.len(),
            "virtio-rng: ignoring write to nonexistent config space"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        mut queues: Vec<Queue>,
        mut queue_events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let count_error = |queues: &Vec<Queue>, events: &Vec<EventFd>| ActivateError::QueueCount {
            expected: QUEUE_SIZES.len(),
            queues: queues.len(),
            events: events.len(),
        };
        if queues.len() != 1 || queue_events.len() != 1 {
            return Err(count_error(&queues, &queue_events));
        }
        let (Some(queue), Some(queue_event)) = (queues.pop(), queue_events.pop()) else {
            return Err(count_error(&queues, &queue_events));
        };
        if !queue.ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let worker = Worker {
            mem,
            interrupt,
            queue,
            queue_event,
            stop: stop.try_clone().map_err(ActivateError::Worker)?,
            buf: vec![0; MAX_REQUEST_BYTES],
            warn_limit: WarnLimiter::default(),
        };
        let thread = WorkerThread::spawn("virtio-rng", stop, move || worker.run());
        self.worker = Some(thread.map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.stop_worker();
        self.acked_features = 0;
        true
    }
}

impl Drop for Rng {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

// Why one request got no entropy.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("descriptor {0:#x} is device-readable")]
    ReadOnly(u64),
    #[error("buffer outside guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("host entropy source failed: {0}")]
    Entropy(getrandom::Error),
}

const TOKEN_QUEUE: u64 = 0;
const TOKEN_STOP: u64 = 1;

// Everything the worker thread owns.
struct Worker {
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    queue: Queue,
    queue_event: EventFd,
    stop: EventFd,
    // Reused for every request: getrandom writes here, then we copy to the guest.
    buf: Vec<u8>,
    warn_limit: WarnLimiter,
}

impl Worker {
    fn run(mut self) {
        let epoll = match self.epoll() {
            Ok(epoll) => epoll,
            Err(e) => {
                error!(error = %e, "virtio-rng: cannot set up epoll");
                self.interrupt.signal_needs_reset();
                return;
            }
        };
        // The driver may have posted buffers before it set DRIVER_OK.
        let mut broken = !self.process_queue();
        let mut events = [EpollEvent::default(); 2];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!(error = %e, "virtio-rng: epoll wait failed, worker exits");
                    return;
                }
            };
            for event in events.iter().take(n) {
                match event.data() {
                    TOKEN_STOP => return,
                    TOKEN_QUEUE => {
                        // Drain the counter; EAGAIN only means someone else did.
                        let _ = self.queue_event.read();
                        // A broken queue stays untouched until the driver resets us.
                        if !broken {
                            broken = !self.process_queue();
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn epoll(&self) -> io::Result<Epoll> {
        let epoll = Epoll::new()?;
        for (fd, token) in [(&self.queue_event, TOKEN_QUEUE), (&self.stop, TOKEN_STOP)] {
            epoll.ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(epoll)
    }

    // Serves every pending request. Returns false (after flagging the device as
    // needing reset) if the queue itself is corrupt.
    fn process_queue(&mut self) -> bool {
        match self.try_process_queue() {
            Ok(()) => true,
            Err(e) => {
                error!(error = %e, "virtio-rng: queue is corrupt, device needs reset");
                self.interrupt.signal_needs_reset();
                false
            }
        }
    }

    fn try_process_queue(&mut self) -> Result<(), virtio_queue::Error> {
        let mut used_any = false;
        loop {
            self.queue.disable_notification(&self.mem)?;
            loop {
                let next = self.queue.iter(&self.mem)?.next();
                let Some(chain) = next else {
                    break;
                };
                let head = chain.head_index();
                let len = match fill_chain(&self.mem, &mut self.buf, chain) {
                    Ok(len) => len,
                    Err(e) => {
                        limited!(
                            self.warn_limit,
                            warn,
                            head,
                            error = %e,
                            "virtio-rng: malformed request, completing it empty"
                        );
                        0
                    }
                };
                self.queue.add_used(&self.mem, head, len)?;
                used_any = true;
            }
            // Re-check after re-enabling notifications so a request posted in
            // between is not left waiting for a kick that never comes.
            if !self.queue.enable_notification(&self.mem)? {
                break;
            }
        }
        if used_any && self.queue.needs_notification(&self.mem)? {
            if let Err(e) = self.interrupt.signal_used_queue() {
                error!(error = %e, "virtio-rng: cannot signal used queue");
            }
        }
        Ok(())
    }
}

// Fills the device-writable buffers of one request with entropy, up to
// MAX_REQUEST_BYTES, and returns how many bytes were written.
fn fill_chain(
    mem: &GuestMemory,
    buf: &mut [u8],
    chain: DescriptorChain<&GuestMemory>,
) -> Result<u32, RequestError> {
    let mut written = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(RequestError::ReadOnly(desc.addr().0));
        }
        let room = buf.len().saturating_sub(written);
        if room == 0 {
            break;
        }
        let len = usize::try_from(desc.len()).map_or(room, |len| len.min(room));
        let bytes = &mut buf[..len];
        getrandom::fill(bytes).map_err(RequestError::Entropy)?;
        mem.write_slice(bytes, desc.addr())?;
        written += len;
    }
    // At most MAX_REQUEST_BYTES, so the conversion cannot fail.
    Ok(u32::try_from(written).unwrap_or(0))
}

#[cfg(test)]
mod tests;
