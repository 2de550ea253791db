//! The threads that take FUSE requests off the virtqueues.
//!
//! A small pool: every thread waits (epoll) on the notification eventfds of all
//! enabled queues plus a stop eventfd, pops one descriptor chain at a time
//! under that queue's lock, serves it without any lock held, then completes it
//! under the lock again. So one slow request (an fsync, a cold read) does not
//! hold up the rest, and the high-priority queue (FORGET, INTERRUPT) is served
//! by whichever thread is free.
//!
//! Notifications stay enabled (with EVENT_IDX, avail_event is republished at
//! every pop) so a new request wakes an idle thread while others are busy; a
//! thread that sees more requests waiting after its pop kicks the queue's
//! eventfd itself to wake a sibling.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::passthrough::FsServer;
use super::request;
use crate::virtio::device::ActiveQueue;
use crate::virtio::epoll_worker::{EpollHandler, EpollWorker};
use crate::virtio::interrupt::VirtioInterrupt;
use crate::virtio::queue_drain::notify_driver;
use crate::virtio::warn_limit::WarnLimiter;
use crate::virtio::worker_thread::{ParkedThreads, WorkerThreads};
use crate::virtio::GuestMemory;

/// Threads per device. Requests block in host syscalls, so a few threads buy
/// concurrency even on few cores; more would mostly cost memory.
pub(crate) const WORKER_THREADS: usize = 4;

/// How long a stop waits for workers stuck in a host syscall before leaving
/// them behind (detached) rather than hanging the vCPU that reset the device.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

struct SharedQueue {
    index: usize,
    queue: Mutex<Queue>,
    event: EventFd,
}

// What all worker threads of one device share.
struct Shared {
    device: &'static str,
    server: Arc<FsServer>,
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<SharedQueue>,
    // A stop was requested: the rings may already belong to a new driver, so
    // late completions are dropped. Checked under the queue lock.
    stopped: AtomicBool,
}

/// Lends the device's parked threads (all [`WORKER_THREADS`] of them) to
/// serving the enabled `queues`.
pub(crate) fn start(
    parked: &ParkedThreads,
    server: Arc<FsServer>,
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<ActiveQueue>,
) -> io::Result<WorkerThreads> {
    let device = parked.device();
    let shared = Arc::new(Shared {
        device,
        server,
        mem,
        interrupt,
        queues: queues
            .into_iter()
            .map(|q| SharedQueue {
                index: q.index,
                queue: Mutex::new(q.queue),
                event: q.event,
            })
            .collect(),
        stopped: AtomicBool::new(false),
    });
    let stopping = Arc::clone(&shared);
    let mut threads = WorkerThreads::lend(parked, WORKER_THREADS)?
        .with_patience(STOP_TIMEOUT)
        .with_before_stop(move || stopping.stop_serving());
    // Each thread gets its own epoll over the same eventfds: all wake on a
    // notification, whoever finds work takes it. Created up front so a
    // failure leaves no thread behind.
    let workers = (0..WORKER_THREADS)
        .map(|_| shared.epoll_worker(threads.stop_event()?))
        .collect::<io::Result<Vec<_>>>()?;
    for worker in workers {
        let handler = Handler {
            shared: Arc::clone(&shared),
            log: WarnLimiter::default(),
        };
        threads.run(move || worker.run(handler))?;
    }
    Ok(threads)
}

// One worker thread's view.
struct Handler {
    shared: Arc<Shared>,
    log: WarnLimiter,
}

impl EpollHandler for Handler {
    fn process_queue(&mut self, index: usize) -> Result<(), virtio_queue::Error> {
        match self.shared.queues.iter().find(|q| q.index == index) {
            Some(q) => self.shared.serve(q, &mut self.log),
            None => Ok(()),
        }
    }
}

impl Shared {
    fn epoll_worker(&self, stop: EventFd) -> io::Result<EpollWorker> {
        let queue_events = self
            .queues
            .iter()
            .map(|q| Ok((q.index, q.event.try_clone()?)))
            .collect::<io::Result<Vec<_>>>()?;
        EpollWorker::new(self.device, Arc::clone(&self.interrupt), queue_events, stop)
    }

    // Serves requests from `q` until it is empty. An error means the queue
    // itself is corrupt.
    fn serve(&self, q: &SharedQueue, log: &mut WarnLimiter) -> Result<(), virtio_queue::Error> {
        loop {
            if self.interrupt.needs_reset() || self.stopped.load(Ordering::SeqCst) {
                return Ok(());
            }
            let Some(chain) = self.pop(q)? else {
                return Ok(());
            };
            let head = chain.head_index();
            let done = request::handle_chain(&self.server, &self.mem, chain, log);
            if done.panicked {
                // The file system may hold poisoned locks or half-updated maps.
                // Answer this request (EIO), then stop serving until reset.
                self.interrupt.signal_needs_reset();
            }
            self.complete(q, head, done.len)?;
        }
    }

    fn pop(
        &self,
        q: &SharedQueue,
    ) -> Result<Option<DescriptorChain<&GuestMemory>>, virtio_queue::Error> {
        let mut queue = lock(&q.queue);
        // Two rounds: the second catches a request posted while notifications
        // were being re-enabled. Bounded, so a ring whose avail entries cannot
        // be read never spins us.
        for _ in 0..2 {
            if let Some(chain) = queue.iter(&self.mem)?.next() {
                // Republishes avail_event (EVENT_IDX) so the next request kicks
                // us, and tells whether more are already waiting.
                if queue.enable_notification(&self.mem)? {
                    // Wake an idle sibling for them; EAGAIN cannot happen short
                    // of 2^64 kicks, and then everyone is awake anyway.
                    let _ = q.event.write(1);
                }
                return Ok(Some(chain));
            }
            if !queue.enable_notification(&self.mem)? {
                break;
            }
        }
        Ok(None)
    }

    fn complete(&self, q: &SharedQueue, head: u16, len: u32) -> Result<(), virtio_queue::Error> {
        let mut queue = lock(&q.queue);
        if self.stopped.load(Ordering::SeqCst) {
            return Ok(());
        }
        queue.add_used(&self.mem, head, len)?;
        notify_driver(self.device, &mut queue, &self.mem, &self.interrupt)
    }

    // Makes late completions drop out, then waits out those that started
    // before: any later one sees the flag under the same lock.
    fn stop_serving(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for q in &self.queues {
            drop(lock(&q.queue));
        }
    }
}

// Queue locks are only held for ring bookkeeping, which does not panic; should
// one be poisoned anyway, the queue state itself is still consistent.
fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}
