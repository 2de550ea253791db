//! What all our devices share: feature negotiation, the checks before
//! activation, the worker threads' life (parked before the guest runs, lent
//! at activation, given back at reset and drop) and refusing config writes.
//!
//! A device keeps a [`DeviceState`] and implements [`Device`] for what is its
//! own; that makes it a [`VirtioDevice`].

use std::sync::Arc;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::VirtioInterrupt;
use super::warn_limit::{limited, WarnLimiter};
use super::worker_thread::{ParkedThreads, WorkerThreads};
use super::{ActivateError, GuestMemory, Queue, VirtioDevice};

/// The state every device keeps between the transport's calls.
#[derive(Default)]
pub(crate) struct DeviceState {
    acked_features: u64,
    // Every thread the device will run on; made on first use.
    parked: Option<ParkedThreads>,
    // Running between activation and reset; dropping them stops them.
    workers: Option<WorkerThreads>,
    config_log: WarnLimiter,
}

impl Drop for DeviceState {
    fn drop(&mut self) {
        self.stop_workers();
        if let Some(parked) = &self.parked {
            parked.close();
        }
    }
}

impl DeviceState {
    /// Stops the workers; returns whether any were running.
    pub(crate) fn stop_workers(&mut self) -> bool {
        match self.workers.take() {
            Some(mut workers) => {
                workers.stop();
                true
            }
            None => false,
        }
    }
}

/// One queue as the driver set it up, handed to the device at activation.
pub(crate) struct ActiveQueue {
    /// The virtio queue index.
    pub(crate) index: usize,
    /// Whether the driver enabled it; a disabled queue must not be used.
    pub(crate) ready: bool,
    pub(crate) queue: Queue,
    /// Signalled when the driver notifies the queue.
    pub(crate) event: EventFd,
}

/// What a device starts its workers with.
pub(crate) struct Activation {
    /// The device's parked threads, to lend the workers from.
    pub(crate) threads: ParkedThreads,
    pub(crate) mem: GuestMemory,
    pub(crate) interrupt: Arc<VirtioInterrupt>,
    /// Every queue of the device, in index order; the required ones are ready.
    pub(crate) queues: Vec<ActiveQueue>,
    pub(crate) acked_features: u64,
}

impl Activation {
    /// Takes the queues as an array of `N`, the device's queue count (which
    /// the activation checks made sure of).
    pub(crate) fn take_queues<const N: usize>(
        &mut self,
    ) -> Result<[ActiveQueue; N], ActivateError> {
        let queues = std::mem::take(&mut self.queues);
        let count = queues.len();
        queues.try_into().map_err(|_| ActivateError::QueueCount {
            expected: N,
            queues: count,
            events: count,
        })
    }
}

/// What makes one kind of device itself; the rest of [`VirtioDevice`] comes
/// from [`DeviceState`].
pub(crate) trait Device: Send {
    /// Name in logs and of worker threads, e.g. "virtio-rng".
    const NAME: &'static str;
    /// The virtio device type (`VIRTIO_ID_*`).
    const TYPE: u32;
    /// Maximum size of each queue (see [`VirtioDevice::queue_max_sizes`]).
    const QUEUE_SIZES: &'static [u16];
    /// Features offered to the driver, [`VIRTIO_F_VERSION_1`](super::VIRTIO_F_VERSION_1) included.
    const FEATURES: u64;
    /// How many threads the device's workers run on while it is active.
    const THREADS: usize = 1;
    /// Runs on each of the device's threads before its seccomp filter.
    const PREPARE_THREAD: Option<fn()> = None;
    /// Parameters for the guest driver, added to the kernel command line.
    const KERNEL_ARGS: &'static [&'static str] = &[];

    /// The state the device keeps for the shared half.
    fn state(&mut self) -> &mut DeviceState;

    /// The queues the driver must enable before the device can start.
    fn required_queues(acked_features: u64) -> &'static [usize];

    /// Reads the config space; the default is a device without one.
    fn read_config_space(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    /// Writes the config space; returns false for a write the device does
    /// not take (the default: a read-only config space), which is logged.
    fn write_config_space(&mut self, _offset: u64, _data: &[u8]) -> bool {
        false
    }

    /// Starts the worker threads on queues that passed the checks.
    fn start_workers(&mut self, activation: Activation) -> Result<WorkerThreads, ActivateError>;

    /// Forgets what the driver set, at reset, once the workers have stopped;
    /// `workers_were_running` tells whether the device was active.
    fn forget_driver_state(&mut self, _workers_were_running: bool) {}
}

fn parked_threads<D: Device>(device: &mut D) -> ParkedThreads {
    device
        .state()
        .parked
        .get_or_insert_with(|| ParkedThreads::new(D::NAME, D::TYPE, D::THREADS, D::PREPARE_THREAD))
        .clone()
}

impl<D: Device> VirtioDevice for D {
    fn device_type(&self) -> u32 {
        D::TYPE
    }

    fn threads(&mut self) -> ParkedThreads {
        parked_threads(self)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        D::QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        D::FEATURES
    }

    fn kernel_args(&self) -> &'static [&'static str] {
        D::KERNEL_ARGS
    }

    fn set_acked_features(&mut self, features: u64) {
        self.state().acked_features = features & D::FEATURES;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.read_config_space(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if !self.write_config_space(offset, data) {
            limited!(
                self.state().config_log,
                warn,
                offset,
                len = data.len(),
                "{}: ignoring config write the device does not take",
                D::NAME
            );
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        if self.state().workers.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != D::QUEUE_SIZES.len() || queue_events.len() != D::QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                expected: D::QUEUE_SIZES.len(),
                queues: queues.len(),
                events: queue_events.len(),
            });
        }
        let acked_features = self.state().acked_features;
        let required = D::required_queues(acked_features);
        if let Some(&index) = required
            .iter()
            .find(|&&index| !queues.get(index).is_some_and(Queue::ready))
        {
            return Err(ActivateError::QueueNotReady(index));
        }
        let queues = queues
            .into_iter()
            .zip(queue_events)
            .enumerate()
            .map(|(index, (queue, event))| ActiveQueue {
                index,
                ready: queue.ready(),
                queue,
                event,
            })
            .collect();
        let activation = Activation {
            threads: parked_threads(self),
            mem,
            interrupt,
            queues,
            acked_features,
        };
        let workers = self.start_workers(activation)?;
        self.state().workers = Some(workers);
        Ok(())
    }

    fn quiesce(&mut self) {
        self.state().stop_workers();
    }

    fn reset(&mut self) -> bool {
        let workers_were_running = self.state().stop_workers();
        self.state().acked_features = 0;
        self.forget_driver_state(workers_were_running);
        true
    }
}
