//! The loop every device worker thread runs: wait (epoll) on the queue
//! notification eventfds, the stop eventfd and any fds of the device's own,
//! and hand what is ready to the device's [`EpollHandler`].
//!
//! The loop also keeps the rule every device follows: once a queue turned out
//! corrupt the device needs reset, and no queue is touched again until the
//! driver resets it (the transport then stops this worker).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use tracing::error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::VirtioInterrupt;
use super::worker_thread::{ParkedThreads, WorkerThreads};

/// epoll tokens from here up are the device's own (see [`EpollWorker::joining`]);
/// the ones below are the worker's: queue notifications, then the stop eventfd.
pub(crate) const FIRST_DEVICE_TOKEN: u64 = 8;
const STOP_TOKEN: u64 = FIRST_DEVICE_TOKEN - 1;
// Events taken per wait; more simply wait for the next round.
const EVENTS_PER_WAIT: usize = 64;

/// What a device's worker does when something is ready.
pub(crate) trait EpollHandler {
    /// A queue served once after every wake-up, whatever caused it, instead of
    /// on its own notifications: for a queue that host events also make work
    /// for (vsock's rx, fed by host sockets).
    const POLLED_QUEUE: Option<usize> = None;

    /// Serves queue `index` (its virtio index): the driver notified it, or
    /// the worker just started and the driver may have posted buffers before
    /// DRIVER_OK. An error means the queue itself is corrupt.
    fn process_queue(&mut self, index: usize) -> Result<(), virtio_queue::Error>;

    /// One of the device's own fds (token at least [`FIRST_DEVICE_TOKEN`]) is ready.
    fn handle_event(&mut self, _token: u64, _events: EventSet) {}

    /// The timer hook: milliseconds until the device wants [`on_timer`](Self::on_timer)
    /// at the latest (-1: no timer).
    fn timeout_ms(&self) -> i32 {
        -1
    }

    /// The timer hook: called after every wake-up, to run what is due.
    fn on_timer(&mut self) {}
}

/// One worker thread's epoll set and the loop around it.
pub(crate) struct EpollWorker {
    device: &'static str,
    interrupt: Arc<VirtioInterrupt>,
    epoll: Arc<Epoll>,
    // Registered under their position as token; kept open while we wait on them.
    queue_events: Vec<(usize, EventFd)>,
    _stop: EventFd,
}

impl EpollWorker {
    /// A fresh epoll set over `queue_events` (virtio queue index,
    /// notification eventfd) and `stop`.
    pub(crate) fn new(
        device: &'static str,
        interrupt: Arc<VirtioInterrupt>,
        queue_events: Vec<(usize, EventFd)>,
        stop: EventFd,
    ) -> io::Result<Self> {
        let epoll = Arc::new(Epoll::new()?);
        Self::joining(epoll, device, interrupt, queue_events, stop)
    }

    /// Adds `queue_events` and `stop` to `epoll`, a set the device already
    /// watches fds of its own in, under tokens of at least [`FIRST_DEVICE_TOKEN`].
    pub(crate) fn joining(
        epoll: Arc<Epoll>,
        device: &'static str,
        interrupt: Arc<VirtioInterrupt>,
        queue_events: Vec<(usize, EventFd)>,
        stop: EventFd,
    ) -> io::Result<Self> {
        if queue_events.len() > STOP_TOKEN as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more queues than epoll tokens",
            ));
        }
        let queues = queue_events.iter().map(|(_, event)| event).zip(0..);
        for (fd, token) in queues.chain([(&stop, STOP_TOKEN)]) {
            epoll.ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(Self {
            device,
            interrupt,
            epoll,
            queue_events,
            _stop: stop,
        })
    }

    /// Runs `handler` on the one worker thread of the device (lent from
    /// `parked`), woken by `queue_events`.
    pub(crate) fn run_single(
        parked: &ParkedThreads,
        interrupt: Arc<VirtioInterrupt>,
        queue_events: Vec<(usize, EventFd)>,
        handler: impl EpollHandler + Send + 'static,
    ) -> io::Result<WorkerThreads> {
        let mut threads = WorkerThreads::lend(parked, 1)?;
        let worker = Self::new(
            parked.device(),
            interrupt,
            queue_events,
            threads.stop_event()?,
        )?;
        threads.run(move || worker.run(handler))?;
        Ok(threads)
    }

    /// Serves `handler` until told to stop.
    pub(crate) fn run<H: EpollHandler>(self, mut handler: H) {
        // The driver may have posted buffers before it set DRIVER_OK.
        for index in self.queue_events.iter().map(|&(index, _)| index) {
            self.serve_notified(&mut handler, index);
        }
        self.after_wakeup(&mut handler);
        let mut events = [EpollEvent::default(); EVENTS_PER_WAIT];
        loop {
            let n = match self.epoll.wait(handler.timeout_ms(), &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!(error = %e, "{}: epoll wait failed, worker exits", self.device);
                    self.interrupt.signal_needs_reset();
                    return;
                }
            };
            for event in events.iter().take(n) {
                match event.data() {
                    STOP_TOKEN => return,
                    token if token < FIRST_DEVICE_TOKEN => {
                        let queue = usize::try_from(token)
                            .ok()
                            .and_then(|position| self.queue_events.get(position));
                        if let Some((index, queue_event)) = queue {
                            // Drain the counter; EAGAIN only means someone else did.
                            let _ = queue_event.read();
                            self.serve_notified(&mut handler, *index);
                        }
                    }
                    token => {
                        handler.handle_event(token, EventSet::from_bits_truncate(event.events()))
                    }
                }
            }
            self.after_wakeup(&mut handler);
        }
    }

    fn serve_notified<H: EpollHandler>(&self, handler: &mut H, index: usize) {
        if H::POLLED_QUEUE != Some(index) {
            self.serve(handler, index);
        }
    }

    fn after_wakeup<H: EpollHandler>(&self, handler: &mut H) {
        handler.on_timer();
        if let Some(index) = H::POLLED_QUEUE {
            self.serve(handler, index);
        }
    }

    fn serve<H: EpollHandler>(&self, handler: &mut H, index: usize) {
        // A broken device leaves its queues alone until the driver resets it.
        if self.interrupt.needs_reset() {
            return;
        }
        if let Err(e) = handler.process_queue(index) {
            // Only the first failure is worth a log line; the rest follow from it.
            if self.interrupt.signal_needs_reset() {
                error!(
                    queue = index,
                    error = %e,
                    "{}: queue is corrupt, device needs reset", self.device
                );
            }
        }
    }
}
