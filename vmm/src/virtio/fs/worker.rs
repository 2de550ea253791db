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
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::error;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::passthrough::{self, FsServer};
use super::request;
use crate::virtio::interrupt::VirtioInterrupt;
use crate::virtio::warn_limit::WarnLimiter;
use crate::virtio::GuestMemory;

/// Threads per device. Requests block in host syscalls, so a few threads buy
/// concurrency even on few cores; more would mostly cost memory.
pub(crate) const WORKER_THREADS: usize = 4;

/// How long a stop waits for workers stuck in a host syscall before leaving
/// them behind (detached) rather than hanging the vCPU that reset the device.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

const TOKEN_STOP: u64 = u64::MAX;

/// One enabled virtqueue and its notification eventfd.
pub(crate) struct VirtQueue {
    /// The virtio queue index (for logs).
    pub(crate) index: usize,
    pub(crate) queue: Queue,
    pub(crate) event: EventFd,
}

struct SharedQueue {
    index: usize,
    queue: Mutex<Queue>,
    event: EventFd,
}

// What all worker threads of one device share.
struct Shared {
    server: Arc<FsServer>,
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<SharedQueue>,
    // The device needs reset (corrupt queue, or a panic in the file system):
    // nobody touches the queues any more.
    broken: AtomicBool,
    // A stop was requested: the rings may already belong to a new driver, so
    // late completions are dropped. Checked under the queue lock.
    stopped: AtomicBool,
}

/// The running worker threads of one activated device.
pub(crate) struct WorkerPool {
    shared: Arc<Shared>,
    stop: EventFd,
    threads: Vec<JoinHandle<()>>,
    // Disconnects once every thread has exited (each holds a sender).
    exited: mpsc::Receiver<()>,
}

impl WorkerPool {
    /// Starts `threads` workers serving `queues`.
    pub(crate) fn start(
        server: Arc<FsServer>,
        mem: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<VirtQueue>,
        threads: usize,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
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
            broken: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        let stop = EventFd::new(EFD_NONBLOCK)?;
        // Each thread gets its own epoll over the same eventfds: all wake on a
        // notification, whoever finds work takes it. Created up front so a
        // failure leaves no thread behind.
        let epolls = (0..threads.max(1))
            .map(|_| shared.epoll(&stop))
            .collect::<io::Result<Vec<_>>>()?;
        let (exit_tx, exited) = mpsc::channel();
        let mut pool = Self {
            shared,
            stop,
            threads: Vec::with_capacity(epolls.len()),
            exited,
        };
        for (i, epoll) in epolls.into_iter().enumerate() {
            let shared = Arc::clone(&pool.shared);
            let thread_tx = exit_tx.clone();
            let spawned = crate::thread::builder(format!("virtio-fs-{i}")).spawn(move || {
                shared.run(&epoll);
                drop(thread_tx);
            });
            match spawned {
                Ok(thread) => pool.threads.push(thread),
                Err(e) => {
                    // Our sender must go first, or stopping would wait for it.
                    drop(exit_tx);
                    pool.stop();
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// Stops the workers and waits (bounded) for them to exit. Idempotent.
    pub(crate) fn stop(&mut self) {
        let threads = std::mem::take(&mut self.threads);
        if threads.is_empty() {
            return;
        }
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wait out completions that started before the flag was set; any later
        // one sees it under the same lock.
        for q in &self.shared.queues {
            drop(lock(&q.queue));
        }
        if let Err(e) = self.stop.write(1) {
            // Joining would hang forever; leave the threads to die with the process.
            error!(error = %e, "virtio-fs: cannot stop workers, detaching them");
            return;
        }
        // Our own sender is gone, so this disconnects once every thread exited.
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.exited.recv_timeout(left) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    error!(
                        timeout = ?STOP_TIMEOUT,
                        "virtio-fs: workers stuck in a request, detaching them"
                    );
                    return;
                }
            }
        }
        for thread in threads {
            if thread.join().is_err() {
                error!("virtio-fs: worker thread panicked");
            }
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn epoll(&self, stop: &EventFd) -> io::Result<Epoll> {
        let epoll = Epoll::new()?;
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| (&q.event, i as u64));
        for (fd, token) in queues.chain([(stop, TOKEN_STOP)]) {
            epoll.ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(epoll)
    }

    fn run(&self, epoll: &Epoll) {
        passthrough::enter_worker_thread();
        let mut log = WarnLimiter::default();
        // The driver may have posted requests before it set DRIVER_OK.
        for q in &self.queues {
            self.serve(q, &mut log);
        }
        let mut events = vec![EpollEvent::default(); self.queues.len() + 1];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!(error = %e, "virtio-fs: epoll wait failed, worker exits");
                    return;
                }
            };
            for event in events.iter().take(n) {
                let token = event.data();
                if token == TOKEN_STOP {
                    return;
                }
                let Some(q) = usize::try_from(token).ok().and_then(|i| self.queues.get(i)) else {
                    continue;
                };
                // Drain the counter; EAGAIN only means a sibling did.
                let _ = q.event.read();
                self.serve(q, &mut log);
            }
            if self.broken.load(Ordering::SeqCst) {
                // Nothing to do until the driver resets the device.
                return;
            }
        }
    }

    // Serves requests from `q` until it is empty.
    fn serve(&self, q: &SharedQueue, log: &mut WarnLimiter) {
        loop {
            if self.broken.load(Ordering::SeqCst) || self.stopped.load(Ordering::SeqCst) {
                return;
            }
            let chain = match self.pop(q) {
                Ok(Some(chain)) => chain,
                Ok(None) => return,
                Err(e) => return self.queue_failed(q, &e),
            };
            let head = chain.head_index();
            let done = request::handle_chain(&self.server, &self.mem, chain, log);
            if done.panicked {
                // The file system may hold poisoned locks or half-updated maps.
                // Answer this request (EIO), then stop serving until reset.
                self.broken.store(true, Ordering::SeqCst);
                self.interrupt.signal_needs_reset();
            }
            if let Err(e) = self.complete(q, head, done.len) {
                return self.queue_failed(q, &e);
            }
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
        if queue.needs_notification(&self.mem)? {
            if let Err(e) = self.interrupt.signal_used_queue() {
                error!(error = %e, "virtio-fs: cannot signal used queue");
            }
        }
        Ok(())
    }

    fn queue_failed(&self, q: &SharedQueue, e: &virtio_queue::Error) {
        // Only the first failure is worth a log line; the rest follow from it.
        if !self.broken.swap(true, Ordering::SeqCst) {
            error!(queue = q.index, error = %e, "virtio-fs: queue is corrupt, device needs reset");
            self.interrupt.signal_needs_reset();
        }
    }
}

// Queue locks are only held for ring bookkeeping, which does not panic; should
// one be poisoned anyway, the queue state itself is still consistent.
fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}
