//! A device's worker thread and the eventfd that tells it to stop.

use std::io;
use std::thread::JoinHandle;

use tracing::error;
use vmm_sys_util::eventfd::EventFd;

pub(crate) struct WorkerThread {
    name: &'static str,
    stop: EventFd,
    thread: JoinHandle<()>,
}

impl WorkerThread {
    /// Runs `work` on a thread called `name`; `stop` is the eventfd (or a
    /// clone of the one) that its loop watches.
    pub(crate) fn spawn(
        name: &'static str,
        stop: EventFd,
        work: impl FnOnce() + Send + 'static,
    ) -> io::Result<Self> {
        let thread = crate::thread::builder(name).spawn(work)?;
        Ok(Self { name, stop, thread })
    }

    /// Tells the worker to stop and waits for it.
    pub(crate) fn stop(self) {
        if let Err(e) = self.stop.write(1) {
            // Joining would hang forever; leave the thread to die with the process.
            error!(error = %e, "{}: cannot stop worker, detaching it", self.name);
            return;
        }
        if self.thread.join().is_err() {
            error!("{}: worker thread panicked", self.name);
        }
    }
}
