//! The worker threads of an active device and the eventfd that tells them to
//! stop.
//!
//! Every device thread starts in [`WorkerThreads::spawn`], so that is where
//! anything each of them must do first belongs (per-thread seccomp filters).

use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The threads one device runs while it is active; dropping this stops them.
pub(crate) struct WorkerThreads {
    device: &'static str,
    stop: EventFd,
    threads: Vec<JoinHandle<()>>,
    // Each thread holds a sender; the channel disconnects once all have exited.
    exit_tx: Option<mpsc::Sender<()>>,
    exited: mpsc::Receiver<()>,
    // How long a stop waits before leaving the threads behind; None: forever.
    patience: Option<Duration>,
    before_stop: Option<Box<dyn FnOnce() + Send>>,
}

impl WorkerThreads {
    /// No threads yet, and a fresh stop eventfd; `device` names them in logs.
    pub(crate) fn new(device: &'static str) -> io::Result<Self> {
        let (exit_tx, exited) = mpsc::channel();
        Ok(Self {
            device,
            stop: EventFd::new(EFD_NONBLOCK)?,
            threads: Vec::new(),
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

    /// Runs `work` on a new thread called `name`, with the VMM's stack size.
    pub(crate) fn spawn(
        &mut self,
        name: String,
        work: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        let exit_tx = self.exit_tx.clone();
        let thread = crate::thread::builder(name).spawn(move || {
            // Per-thread seccomp filters go here, before `work` runs.
            work();
            drop(exit_tx);
        })?;
        self.threads.push(thread);
        Ok(())
    }

    /// Tells the threads to stop and waits for them. Idempotent.
    pub(crate) fn stop(&mut self) {
        if let Some(hook) = self.before_stop.take() {
            hook();
        }
        // Ours must go first, or waiting for the channel would never end.
        self.exit_tx = None;
        let threads = std::mem::take(&mut self.threads);
        if threads.is_empty() {
            return;
        }
        if let Err(e) = self.stop.write(1) {
            // Joining would hang forever; leave the threads to die with the process.
            error!(error = %e, "{}: cannot stop workers, detaching them", self.device);
            return;
        }
        if let Some(patience) = self.patience {
            if !self.wait_for_exit(patience) {
                error!(
                    timeout = ?patience,
                    "{}: workers stuck in a request, detaching them", self.device
                );
                return;
            }
        }
        for thread in threads {
            if thread.join().is_err() {
                error!("{}: worker thread panicked", self.device);
            }
        }
    }

    // Whether every thread exited within `patience`.
    fn wait_for_exit(&self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.exited.recv_timeout(left) {
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
