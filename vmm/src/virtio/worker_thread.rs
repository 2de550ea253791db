//! Device threads: every thread a device will ever run on is created before
//! the guest runs ([`ParkedThreads::start`], at VM start), installs its
//! seccomp filter first thing and parks. Activation lends the parked threads
//! to the device's work ([`WorkerThreads`]); a reset gives them back.
//!
//! Why not spawn at activation: activation happens on a vCPU thread (the
//! driver writes DRIVER_OK) while the guest runs, and a thread inherits the
//! seccomp filter of the thread that creates it. Threads made by the main
//! thread before any filter is in place get exactly their role's filter, and
//! no vCPU ever needs `clone`. A device that finds no parked thread left (an
//! old worker stuck in a host syscall and detached after a reset) fails to
//! activate (DEVICE_NEEDS_RESET), it never spawns.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing::error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What a parked thread runs first, before it parks: its seccomp filter, or
/// anything else that must come before the filter.
pub type ThreadSetup = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

// Work handed to a parked thread, with the token that tells the lender it is
// done (dropped once the thread is back in the pool). `None` ends the thread.
type Job = Option<(Box<dyn FnOnce() + Send>, Sender<()>)>;

/// The parked threads of one device: a cheap handle, cloned by whoever needs
/// it (the device, the VM that starts them).
#[derive(Clone)]
pub struct ParkedThreads {
    shared: Arc<Pool>,
}

struct Pool {
    device: &'static str,
    device_type: u32,
    count: usize,
    // Runs on each thread before the filter, e.g. unsharing its fs context.
    prepare: Option<fn()>,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    threads: Vec<Sender<Job>>,
    started: bool,
    // The device is gone: threads that finish their work exit.
    closed: bool,
}

impl ParkedThreads {
    /// `count` threads for `device` (of virtio type `device_type`), none
    /// started yet; each runs `prepare` (if any) before its setup.
    pub(crate) fn new(
        device: &'static str,
        device_type: u32,
        count: usize,
        prepare: Option<fn()>,
    ) -> Self {
        Self {
            shared: Arc::new(Pool {
                device,
                device_type,
                count,
                prepare,
                idle: Mutex::default(),
            }),
        }
    }

    /// The device's name, which its threads carry (`name` or `name-i`).
    pub fn device(&self) -> &'static str {
        self.shared.device
    }

    /// The virtio device type (`VIRTIO_ID_*`), which picks the seccomp filter.
    pub fn device_type(&self) -> u32 {
        self.shared.device_type
    }

    /// How many threads the device runs on.
    pub fn count(&self) -> usize {
        self.shared.count
    }

    /// Creates the device's threads; each runs `setup` (its seccomp filter),
    /// then parks. Returns once all are parked; fails if any thread could not
    /// be created or its setup failed. Only the first call starts threads.
    pub fn start(&self, setup: Option<ThreadSetup>) -> io::Result<()> {
        if std::mem::replace(&mut self.shared.lock().started, true) {
            return Ok(());
        }
        let (ready_tx, ready) = mpsc::channel();
        let mut spawned = Ok(());
        for i in 0..self.shared.count {
            let name = match self.shared.count {
                1 => self.shared.device.to_owned(),
                _ => format!("{}-{i}", self.shared.device),
            };
            let (tx, rx) = mpsc::channel::<Job>();
            let pool = Arc::clone(&self.shared);
            let setup = setup.clone();
            let ready_tx = ready_tx.clone();
            spawned = crate::thread::builder(name)
                .spawn(move || {
                    if let Some(prepare) = pool.prepare {
                        prepare();
                    }
                    let set_up = setup.map_or(Ok(()), |setup| setup());
                    let failed = set_up.is_err();
                    let _ = ready_tx.send(set_up.map(|()| tx.clone()));
                    drop(ready_tx);
                    if !failed {
                        pool.park(tx, rx);
                    }
                })
                .map(drop);
            if spawned.is_err() {
                break;
            }
        }
        drop(ready_tx);
        // Every thread that started answers, whatever happened to the others.
        let (threads, failures): (Vec<_>, Vec<_>) = ready.into_iter().partition(Result::is_ok);
        let threads: Vec<_> = threads.into_iter().filter_map(Result::ok).collect();
        let failed = spawned.err().or(failures.into_iter().find_map(Result::err));
        let mut idle = self.shared.lock();
        match failed {
            None if !idle.closed => {
                idle.threads.extend(threads);
                Ok(())
            }
            failed => {
                drop(idle);
                for thread in threads {
                    let _ = thread.send(None);
                }
                failed.map_or(Ok(()), Err)
            }
        }
    }

    /// Threads parked now, waiting for work.
    pub fn parked(&self) -> usize {
        self.shared.lock().threads.len()
    }

    /// Ends the parked threads, and the lent ones once their work is done.
    pub(crate) fn close(&self) {
        let parked = {
            let mut idle = self.shared.lock();
            idle.closed = true;
            std::mem::take(&mut idle.threads)
        };
        for thread in parked {
            let _ = thread.send(None);
        }
    }

    // Takes `count` parked threads, or none at all.
    fn take(&self, count: usize) -> io::Result<Vec<Sender<Job>>> {
        let mut idle = self.shared.lock();
        if idle.threads.len() < count {
            return Err(io::Error::other(format!(
                "{}: {} worker threads needed, {} parked (were they started, or is one stuck?)",
                self.shared.device,
                count,
                idle.threads.len()
            )));
        }
        let at = idle.threads.len() - count;
        Ok(idle.threads.split_off(at))
    }

    // Gives back threads that were taken but got no work.
    fn give_back(&self, threads: Vec<Sender<Job>>) {
        let mut idle = self.shared.lock();
        if idle.closed {
            drop(idle);
            for thread in threads {
                let _ = thread.send(None);
            }
        } else {
            idle.threads.extend(threads);
        }
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Idle> {
        // Only plain bookkeeping happens under the lock.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // A parked thread's life: run what it is lent for, come back, repeat.
    // `me` sends to this thread: it puts itself back in the pool with it.
    fn park(&self, me: Sender<Job>, jobs: Receiver<Job>) {
        while let Ok(Some((work, done))) = jobs.recv() {
            if catch_unwind(AssertUnwindSafe(work)).is_err() {
                error!("{}: worker thread panicked", self.device);
            }
            // Back in the pool before the lender hears we are done, so that
            // an activation right after a reset finds us parked.
            {
                let mut idle = self.lock();
                if idle.closed {
                    return;
                }
                idle.threads.push(me.clone());
            }
            drop(done);
        }
    }
}

/// The threads one device runs on while it is active, lent by its
/// [`ParkedThreads`]; dropping this stops their work and gives them back.
pub(crate) struct WorkerThreads {
    device: &'static str,
    parked: ParkedThreads,
    stop: EventFd,
    // Taken from the pool, not yet given work.
    reserved: Vec<Sender<Job>>,
    running: usize,
    // Each job holds a sender; the channel disconnects once all are back.
    exit_tx: Option<Sender<()>>,
    exited: Receiver<()>,
    // How long a stop waits before leaving the threads behind; None: forever.
    patience: Option<Duration>,
    before_stop: Option<Box<dyn FnOnce() + Send>>,
}

impl WorkerThreads {
    /// Takes `count` of `parked`'s threads, and a fresh stop eventfd; fails
    /// (taking none) if fewer are parked.
    pub(crate) fn lend(parked: &ParkedThreads, count: usize) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let reserved = parked.take(count)?;
        let (exit_tx, exited) = mpsc::channel();
        Ok(Self {
            device: parked.device(),
            parked: parked.clone(),
            stop,
            reserved,
            running: 0,
            exit_tx: Some(exit_tx),
            exited,
            patience: None,
            before_stop: None,
        })
    }

    /// A stop waits at most `patience` for the threads (which may be stuck in
    /// a host syscall) before detaching them, rather than hanging the vCPU
    /// that reset the device.
    pub(crate) fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = Some(patience);
        self
    }

    /// Runs `hook` first when the threads are told to stop.
    pub(crate) fn with_before_stop(mut self, hook: impl FnOnce() + Send + 'static) -> Self {
        self.before_stop = Some(Box::new(hook));
        self
    }

    /// A copy of the stop eventfd, for a thread's epoll set: it becomes
    /// readable when the threads must stop.
    pub(crate) fn stop_event(&self) -> io::Result<EventFd> {
        self.stop.try_clone()
    }

    /// Runs `work` on one of the lent threads.
    pub(crate) fn run(&mut self, work: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let gone = || io::Error::other(format!("{}: no lent worker thread left", self.device));
        let thread = self.reserved.pop().ok_or_else(gone)?;
        let exit_tx = self.exit_tx.clone().ok_or_else(gone)?;
        thread
            .send(Some((Box::new(work), exit_tx)))
            .map_err(|_| gone())?;
        self.running += 1;
        Ok(())
    }

    /// Tells the threads to stop and waits for them. Idempotent.
    pub(crate) fn stop(&mut self) {
        if let Some(hook) = self.before_stop.take() {
            hook();
        }
        self.parked.give_back(std::mem::take(&mut self.reserved));
        // Ours must go first, or waiting for the channel would never end.
        self.exit_tx = None;
        if std::mem::take(&mut self.running) == 0 {
            return;
        }
        if let Err(e) = self.stop.write(1) {
            // Waiting would hang forever; leave the threads to come back later.
            error!(error = %e, "{}: cannot stop workers, detaching them", self.device);
            return;
        }
        let patience = self.patience.unwrap_or(Duration::MAX);
        if !self.wait_for_exit(patience) {
            error!(
                timeout = ?patience,
                "{}: workers stuck in a request, detaching them", self.device
            );
        }
    }

    // Whether every thread came back within `patience`.
    fn wait_for_exit(&self, patience: Duration) -> bool {
        let deadline = Instant::now().checked_add(patience);
        loop {
            let result = match deadline {
                Some(deadline) => self
                    .exited
                    .recv_timeout(deadline.saturating_duration_since(Instant::now())),
                None => self
                    .exited
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match result {
                Ok(()) => continue,
                Err(RecvTimeoutError::Disconnected) => return true,
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }
}

impl Drop for WorkerThreads {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
