//! virtio-rng: the guest's entropy source, fed from the host's getrandom.
//!
//! One queue; the driver posts device-writable buffers and we fill them. A
//! worker thread owns the queue after activation so vCPU threads never block on
//! the host entropy pool.

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::Bytes;

use super::device::{Activation, Device, DeviceState};
use super::epoll_worker::{EpollHandler, EpollWorker};
use super::interrupt::VirtioInterrupt;
use super::queue_drain::drain_queue;
use super::warn_limit::{limited, WarnLimiter};
use super::worker_thread::WorkerThreads;
use super::{
    ActivateError, GuestMemory, VIRTIO_F_VERSION_1, VIRTIO_ID_RNG, VIRTIO_RING_F_EVENT_IDX,
};
// The tests drive the device through the transport's interface.
#[cfg(test)]
use {
    super::VirtioDevice,
    vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK},
};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes handed out per request, so that a guest posting huge buffers
/// cannot make us allocate or read without bound; the driver simply asks again.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

const NAME: &str = "virtio-rng";
const AVAIL_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;

/// The virtio entropy device.
#[derive(Default)]
pub struct Rng {
    state: DeviceState,
}

impl Rng {
    /// A new, not yet activated entropy device.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Device for Rng {
    const NAME: &'static str = NAME;
    const TYPE: u32 = VIRTIO_ID_RNG;
    const QUEUE_SIZES: &'static [u16] = &[QUEUE_SIZE];
    const FEATURES: u64 = AVAIL_FEATURES;

    fn state(&mut self) -> &mut DeviceState {
        &mut self.state
    }

    fn required_queues(_acked_features: u64) -> &'static [usize] {
        &[0]
    }

    // virtio-rng has no config space: the defaults read zeros and refuse writes.

    fn start_workers(
        &mut self,
        mut activation: Activation,
    ) -> Result<WorkerThreads, ActivateError> {
        let [request] = activation.take_queues()?;
        let worker = Worker {
            mem: activation.mem,
            interrupt: Arc::clone(&activation.interrupt),
            queue: request.queue,
            buf: vec![0; MAX_REQUEST_BYTES],
            warn_limit: WarnLimiter::default(),
        };
        let queue_events = vec![(request.index, request.event)];
        EpollWorker::run_single(
            &activation.threads,
            activation.interrupt,
            queue_events,
            worker,
        )
        .map_err(ActivateError::Worker)
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
    Entropy(std::io::Error),
}

// Everything the worker thread owns.
struct Worker {
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    queue: Queue,
    // Reused for every request: getrandom writes here, then we copy to the guest.
    buf: Vec<u8>,
    warn_limit: WarnLimiter,
}

impl EpollHandler for Worker {
    fn process_queue(&mut self, _index: usize) -> Result<(), virtio_queue::Error> {
        let Self {
            mem,
            interrupt,
            queue,
            buf,
            warn_limit,
        } = self;
        drain_queue(NAME, queue, mem, interrupt, |chain| {
            let head = chain.head_index();
            match fill_chain(mem, buf, chain) {
                Ok(len) => len,
                Err(e) => {
                    limited!(
                        warn_limit,
                        warn,
                        head,
                        error = %e,
                        "virtio-rng: malformed request, completing it empty"
                    );
                    0
                }
            }
        })
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
        fill_random(bytes).map_err(RequestError::Entropy)?;
        mem.write_slice(bytes, desc.addr())?;
        written += len;
    }
    // At most MAX_REQUEST_BYTES, so the conversion cannot fail.
    Ok(u32::try_from(written).unwrap_or(0))
}

// The getrandom(2) syscall, always: the getrandom crate falls back to opening
// /dev/urandom in a static binary (no libc symbol to find), which the worker's
// seccomp filter forbids.
fn fill_random(bytes: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        let rest = &mut bytes[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`,
        // which we borrow mutably for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => done += n.min(rest.len()),
            Err(_) => {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
