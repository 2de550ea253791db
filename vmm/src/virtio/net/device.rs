//! The virtio-net device and its worker: one thread, one epoll set over the
//! two queue notifications, the stop eventfd and the tap (watched only while
//! rx waits for frames, see rx.rs).
//!
//! Queues: rx (0), tx (1); no control queue, no multiqueue.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use tracing::{error, info};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::features::{read_config, tap_offloads, AVAIL_FEATURES};
use super::rx::{RxPath, RxWait};
use super::tap::Tap;
use super::tx::TxPath;
use super::NAME;
use crate::virtio::device::{Activation, Device, DeviceState};
use crate::virtio::epoll_worker::{EpollHandler, EpollWorker, FIRST_DEVICE_TOKEN};
use crate::virtio::interrupt::VirtioInterrupt;
use crate::virtio::worker_thread::WorkerThreads;
use crate::virtio::{ActivateError, GuestMemory, VIRTIO_ID_NET};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const TAP_TOKEN: u64 = FIRST_DEVICE_TOKEN;

/// The virtio network device, backed by a tap.
pub struct Net {
    state: DeviceState,
    tap: Arc<Tap>,
    mac: [u8; 6],
}

impl Net {
    /// A device for the guest interface with address `mac`, whose frames go
    /// through `tap` (see [`Tap::from_inherited_fd`]).
    pub fn new(tap: Tap, mac: [u8; 6]) -> Self {
        info!(tap = tap.name(), mac = %format_mac(mac), "virtio-net: attached");
        Self {
            state: DeviceState::default(),
            tap: Arc::new(tap),
            mac,
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

impl Device for Net {
    const NAME: &'static str = NAME;
    const TYPE: u32 = VIRTIO_ID_NET;
    const QUEUE_SIZES: &'static [u16] = &[QUEUE_SIZE; 2];
    const FEATURES: u64 = AVAIL_FEATURES;
    // Tx completions without interrupts: the guest frees a sent frame when
    // it next sends (or when the ring fills) instead of in a tx interrupt.
    // Over virtio-mmio each interrupt costs the guest three exits (the
    // injection's EOI, and an InterruptStatus read and an InterruptACK
    // write that return to the VMM), and a busy sender took one per frame.
    // The price: frames are orphaned when queued, so TCP small queues no
    // longer hold a socket back while its frames wait in the ring.
    // Measured in docs/performance.md (virtio-net throughput).
    const KERNEL_ARGS: &'static [&'static str] = &["virtio_net.napi_tx=0"];
    // The worker must not preempt the vCPU that just kicked it: with one
    // CPU for both, each kick cost a trip out of the guest and the worker
    // sent one frame per wakeup; as SCHED_BATCH it sends what the guest
    // queued by the time the vCPU blocks (on a host with a free CPU it runs
    // there at once, as before). Measured in docs/performance.md.
    const PREPARE_THREAD: Option<fn()> = Some(crate::thread::schedule_as_batch);

    fn state(&mut self) -> &mut DeviceState {
        &mut self.state
    }

    fn required_queues(_acked_features: u64) -> &'static [usize] {
        &[RX_QUEUE, TX_QUEUE]
    }

    fn read_config_space(&self, offset: u64, data: &mut [u8]) {
        read_config(self.mac, offset, data);
    }

    fn start_workers(
        &mut self,
        mut activation: Activation,
    ) -> Result<WorkerThreads, ActivateError> {
        let [rx, tx] = activation.take_queues()?;
        let acked = activation.acked_features;
        let epoll = Arc::new(Epoll::new()?);
        let mut threads = WorkerThreads::lend(&activation.threads, 1)?;
        let epoll_worker = EpollWorker::joining(
            Arc::clone(&epoll),
            NAME,
            Arc::clone(&activation.interrupt),
            vec![(rx.index, rx.event), (tx.index, tx.event)],
            threads.stop_event()?,
        )?;
        let rx_size = rx.queue.size();
        let worker = Worker {
            mem: activation.mem,
            interrupt: activation.interrupt,
            rx: rx.queue,
            tx: tx.queue,
            tap: Arc::clone(&self.tap),
            epoll,
            tap_watched: false,
            rx_path: RxPath::new(acked, rx_size),
            tx_path: TxPath::new(acked),
        };
        threads.run(move || {
            // On the worker, whose filter allows it (activation runs on a vCPU).
            if let Err(e) = worker.tap.set_offload(tap_offloads(acked)) {
                error!(error = %e, "virtio-net: cannot set the tap's offloads, device needs reset");
                worker.interrupt.signal_needs_reset();
                return;
            }
            epoll_worker.run(worker);
        })?;
        Ok(threads)
    }
}

// Everything the worker thread owns.
struct Worker {
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
    tap: Arc<Tap>,
    epoll: Arc<Epoll>,
    // Whether the tap is in the epoll set now.
    tap_watched: bool,
    rx_path: RxPath,
    tx_path: TxPath,
}

impl EpollHandler for Worker {
    fn process_queue(&mut self, index: usize) -> Result<(), virtio_queue::Error> {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self
                .tx_path
                .process(&mut self.tx, &self.mem, &self.interrupt, &self.tap),
            _ => Ok(()),
        }
    }

    fn handle_event(&mut self, token: u64, _events: EventSet) {
        if token != TAP_TOKEN {
            return;
        }
        // A broken device leaves its queues alone until the driver resets it.
        if self.interrupt.needs_reset() {
            self.watch_tap(false);
            return;
        }
        if let Err(e) = self.process_rx() {
            if self.interrupt.signal_needs_reset() {
                error!(error = %e, "virtio-net: rx queue is corrupt, device needs reset");
            }
        }
    }
}

impl Worker {
    fn process_rx(&mut self) -> Result<(), virtio_queue::Error> {
        let wait = self
            .rx_path
            .process(&mut self.rx, &self.mem, &self.interrupt, &self.tap)?;
        self.watch_tap(wait == RxWait::Tap);
        Ok(())
    }

    // Adds the tap to the epoll set or takes it out (level-triggered: left
    // in while frames wait for guest buffers, it would wake us forever).
    fn watch_tap(&mut self, watch: bool) {
        if watch == self.tap_watched {
            return;
        }
        let (op, events) = if watch {
            (ControlOperation::Add, EventSet::IN)
        } else {
            (ControlOperation::Delete, EventSet::empty())
        };
        let fd = self.tap.as_raw_fd();
        match self.epoll.ctl(op, fd, EpollEvent::new(events, TAP_TOKEN)) {
            Ok(()) => self.tap_watched = watch,
            Err(e) => {
                error!(error = %e, "virtio-net: cannot watch the tap, device needs reset");
                self.interrupt.signal_needs_reset();
            }
        }
    }
}
