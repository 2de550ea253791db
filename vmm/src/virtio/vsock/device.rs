//! The virtio-vsock device: config space, feature negotiation, and the worker
//! thread that moves packets between the queues and the muxer.
//!
//! Queues: rx (0) carries packets to the guest in buffers it posts, tx (1)
//! carries the guest's packets, event (2) is for transport events we never
//! send (they only matter for live migration).

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tracing::info;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;

use super::header::{HEADER_SIZE, HOST_CID};
use super::muxer::{Muxer, MAX_CONNECTIONS};
use super::packet::{read_tx_packet, rx_capacity, write_rx_packet, Segment, MAX_PACKET_SIZE};
use super::unix_backend::{bind_listener, ListenError};
use crate::virtio::config::read_config_bytes;
use crate::virtio::device::{Activation, Device, DeviceState};
use crate::virtio::epoll_worker::{EpollHandler, EpollWorker};
use crate::virtio::interrupt::VirtioInterrupt;
use crate::virtio::queue_drain::{drain_queue, notify_driver};
use crate::virtio::warn_limit::{limited, WarnLimiter};
use crate::virtio::worker_thread::WorkerThreads;
use crate::virtio::{ActivateError, GuestMemory, VIRTIO_F_VERSION_1, VIRTIO_ID_VSOCK};

/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const NAME: &str = "virtio-vsock";
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const AVAIL_FEATURES: u64 = VIRTIO_F_VERSION_1;

/// Why a vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0-2 are reserved (hypervisor, local, host) and `u32::MAX` means "any".
    #[error("guest CID {0} is invalid: it must be at least 3 and below 2^32 - 1")]
    InvalidCid(u64),
    /// The host-side listening socket could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// The virtio socket device, backed by Unix sockets ("hybrid vsock").
pub struct Vsock {
    state: DeviceState,
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    // Device and inode of the socket file we created, so that Drop unlinks
    // only our own socket and not one a later VMM bound at the same path.
    socket_file: Option<(u64, u64)>,
    max_connections: usize,
    live: Arc<AtomicUsize>,
}

impl Vsock {
    /// A vsock device for a guest with CID `guest_cid` (>= 3). Host processes
    /// connect to guest ports through the Unix socket `uds_path`; guest
    /// connections to host port P go to `<uds_path>_P`.
    ///
    /// Binds the listener immediately (removing a stale socket file left by a
    /// dead VMM first), so errors surface at VM build time.
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> Result<Self, VsockError> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let uds_path = uds_path.into();
        let listener = bind_listener(&uds_path)?;
        let socket_file = std::fs::symlink_metadata(&uds_path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        info!(guest_cid, path = %uds_path.display(), "virtio-vsock: listening");
        Ok(Self {
            state: DeviceState::default(),
            guest_cid,
            uds_path,
            listener,
            socket_file,
            max_connections: MAX_CONNECTIONS,
            live: Arc::default(),
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The Unix socket host processes connect to.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Live connections (for monitoring and tests).
    pub fn connection_count(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Lowers the connection limit; takes effect at the next activation.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn set_max_connections(&mut self, max: usize) {
        self.max_connections = max;
    }
}

impl Device for Vsock {
    const NAME: &'static str = NAME;
    const TYPE: u32 = VIRTIO_ID_VSOCK;
    const QUEUE_SIZES: &'static [u16] = &[QUEUE_SIZE; 3];
    const FEATURES: u64 = AVAIL_FEATURES;

    fn state(&mut self) -> &mut DeviceState {
        &mut self.state
    }

    fn required_queues(_acked_features: u64) -> &'static [usize] {
        // The event queue only matters for migration; rx and tx are essential.
        &[RX_QUEUE, TX_QUEUE]
    }

    fn read_config_space(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn start_workers(
        &mut self,
        mut activation: Activation,
    ) -> Result<WorkerThreads, ActivateError> {
        let [rx, tx, event] = activation.take_queues()?;
        let queue_events = [rx.index, tx.index, event.index]
            .into_iter()
            .zip([rx.event, tx.event, event.event])
            .collect();
        let muxer = Muxer::new(
            self.guest_cid,
            self.uds_path.clone(),
            self.listener.try_clone()?,
            self.max_connections,
            Arc::clone(&self.live),
        )?;
        let mut threads = WorkerThreads::lend(&activation.threads, 1)?;
        // One epoll set for the queues and every host socket.
        let epoll_worker = EpollWorker::joining(
            muxer.epoll(),
            NAME,
            Arc::clone(&activation.interrupt),
            queue_events,
            threads.stop_event()?,
        )?;
        let worker = Worker {
            mem: activation.mem,
            interrupt: activation.interrupt,
            guest_cid: self.guest_cid,
            rx: rx.queue,
            tx: tx.queue,
            muxer,
            segs: Vec::new(),
            tx_data: Vec::new(),
            rx_buf: vec![0; MAX_PACKET_SIZE],
            warn_limit: WarnLimiter::default(),
        };
        threads.run(move || epoll_worker.run(worker))?;
        Ok(threads)
    }

    // Dropping the worker's muxer at reset closes every host connection.
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.state.stop_workers();
        let ours = std::fs::symlink_metadata(&self.uds_path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        if ours.is_some() && ours == self.socket_file {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}

// Everything the worker thread owns.
struct Worker {
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    guest_cid: u64,
    rx: Queue,
    tx: Queue,
    muxer: Muxer,
    // Scratch space reused for every packet.
    segs: Vec<Segment>,
    tx_data: Vec<u8>,
    rx_buf: Vec<u8>,
    warn_limit: WarnLimiter,
}

impl EpollHandler for Worker {
    // Host sockets, tx packets and fresh rx buffers all make work for rx.
    const POLLED_QUEUE: Option<usize> = Some(RX_QUEUE);

    fn process_queue(&mut self, index: usize) -> Result<(), virtio_queue::Error> {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            // The event queue: we never send transport events.
            _ => Ok(()),
        }
    }

    fn handle_event(&mut self, token: u64, events: EventSet) {
        self.muxer.handle_event(token, events);
    }

    fn timeout_ms(&self) -> i32 {
        self.muxer.timeout_ms(Instant::now())
    }

    fn on_timer(&mut self) {
        self.muxer.expire(Instant::now());
    }
}

impl Worker {
    // Hands every packet the guest queued to the muxer. Bad packets are
    // dropped (and completed) without disturbing anything else.
    fn process_tx(&mut self) -> Result<(), virtio_queue::Error> {
        let Self {
            mem,
            interrupt,
            guest_cid,
            tx,
            muxer,
            segs,
            tx_data,
            warn_limit,
            ..
        } = self;
        drain_queue(NAME, tx, mem, interrupt, |chain| {
            let head = chain.head_index();
            match read_tx_packet(mem, chain, segs, tx_data) {
                Ok(header) => match header.check_guest_addressing(*guest_cid) {
                    Ok(()) => muxer.handle_guest_packet(&header, tx_data),
                    Err(e) => limited!(
                        warn_limit,
                        warn,
                        head,
                        error = %e,
                        "virtio-vsock: dropping misaddressed tx packet"
                    ),
                },
                Err(e) => limited!(
                    warn_limit,
                    warn,
                    head,
                    error = %e,
                    "virtio-vsock: dropping malformed tx packet"
                ),
            }
            0
        })
    }

    // Fills rx buffers while the muxer has packets and the guest has buffers.
    // Out of buffers, we just stop: the guest kicks the rx queue when it posts
    // more (we never suppress rx notifications), and process_rx runs again.
    fn process_rx(&mut self) -> Result<(), virtio_queue::Error> {
        let mut used_any = false;
        while self.muxer.has_rx_work() {
            let next = self.rx.iter(&self.mem)?.next();
            let Some(chain) = next else {
                break;
            };
            let head = chain.head_index();
            let len = match rx_capacity(&self.mem, chain, &mut self.segs) {
                Ok(capacity) if capacity >= HEADER_SIZE => {
                    let Some(len) = self.muxer.next_rx_packet(&mut self.rx_buf[..capacity]) else {
                        // Nothing to send after all: leave the buffer to the guest.
                        self.rx.go_to_previous_position();
                        break;
                    };
                    match write_rx_packet(&self.mem, &self.segs, &self.rx_buf[..len]) {
                        Ok(()) => len,
                        Err(e) => {
                            // Checked by rx_capacity; only a racing memory change gets here.
                            limited!(self.warn_limit, warn, head, error = %e, "virtio-vsock: rx packet lost");
                            0
                        }
                    }
                }
                Ok(capacity) => {
                    limited!(
                        self.warn_limit,
                        warn,
                        head,
                        capacity,
                        "virtio-vsock: rx buffer cannot hold a header, returning it empty"
                    );
                    0
                }
                Err(e) => {
                    limited!(
                        self.warn_limit,
                        warn,
                        head,
                        error = %e,
                        "virtio-vsock: unusable rx buffer, returning it empty"
                    );
                    0
                }
            };
            // len <= MAX_PACKET_SIZE, far below u32::MAX.
            self.rx
                .add_used(&self.mem, head, u32::try_from(len).unwrap_or(0))?;
            used_any = true;
        }
        if used_any {
            notify_driver(NAME, &mut self.rx, &self.mem, &self.interrupt)?;
        }
        Ok(())
    }
}
