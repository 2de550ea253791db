//! The virtio-vsock device: config space, feature negotiation, and the worker
//! thread that moves packets between the queues and the muxer.
//!
//! Queues: rx (0) carries packets to the guest in buffers it posts, tx (1)
//! carries the guest's packets, event (2) is for transport events we never
//! send (they only matter for live migration).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tracing::{error, info};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::header::{HEADER_SIZE, HOST_CID};
use super::muxer::{Muxer, MAX_CONNECTIONS};
use super::packet::{read_tx_packet, rx_capacity, write_rx_packet, Segment, MAX_PACKET_SIZE};
use super::unix_backend::{bind_listener, ListenError};
use crate::virtio::config::read_config_bytes;
use crate::virtio::interrupt::VirtioInterrupt;
use crate::virtio::warn_limit::{limited, WarnLimiter};
use crate::virtio::worker_thread::WorkerThread;
use crate::virtio::{
    ActivateError, GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_ID_VSOCK,
};

/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const AVAIL_FEATURES: u64 = VIRTIO_F_VERSION_1;

// epoll tokens of the worker's own fds; the muxer's start at TOKEN_LISTENER.
const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_EVENT: u64 = 2;
const TOKEN_STOP: u64 = 3;

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
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    // Device and inode of the socket file we created, so that Drop unlinks
    // only our own socket and not one a later VMM bound at the same path.
    socket_file: Option<(u64, u64)>,
    acked_features: u64,
    max_connections: usize,
    live: Arc<AtomicUsize>,
    worker: Option<WorkerThread>,
    warn_limit: WarnLimiter,
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
            guest_cid,
            uds_path,
            listener,
            socket_file,
            acked_features: 0,
            max_connections: MAX_CONNECTIONS,
            live: Arc::default(),
            worker: None,
            warn_limit: WarnLimiter::default(),
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
    #[cfg(test)]
    pub(crate) fn set_max_connections(&mut self, max: usize) {
        self.max_connections = max;
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & AVAIL_FEATURES;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        limited!(
            self.warn_limit,
            warn,
            offset,
            len = data.len(),
            "virtio-vsock: ignoring write to read-only config space"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != QUEUE_SIZES.len() || queue_events.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                queues: queues.len(),
                events: queue_events.len(),
            });
        }
        // The event queue only matters for migration; rx and tx are essential.
        for index in [RX_QUEUE, TX_QUEUE] {
            if !queues[index].ready() {
                return Err(ActivateError::QueueNotReady(index));
            }
        }
        let mut queues = queues.into_iter();
        let mut events = queue_events.into_iter();
        let (Some(rx), Some(tx), Some(rx_event), Some(tx_event), Some(event_event)) = (
            queues.next(),
            queues.next(),
            events.next(),
            events.next(),
            events.next(),
        ) else {
            // Counts were checked above.
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                queues: 0,
                events: 0,
            });
        };

        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let listener = self.listener.try_clone().map_err(ActivateError::Worker)?;
        let muxer = Muxer::new(
            self.guest_cid,
            self.uds_path.clone(),
            listener,
            self.max_connections,
            Arc::clone(&self.live),
        )
        .map_err(ActivateError::Worker)?;
        let worker_stop = stop.try_clone().map_err(ActivateError::Worker)?;
        for (fd, token) in [
            (&rx_event, TOKEN_RX),
            (&tx_event, TOKEN_TX),
            (&event_event, TOKEN_EVENT),
            (&worker_stop, TOKEN_STOP),
        ] {
            muxer
                .epoll()
                .ctl(
                    ControlOperation::Add,
                    fd.as_raw_fd(),
                    EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, token),
                )
                .map_err(ActivateError::Worker)?;
        }
        let worker = Worker {
            mem,
            interrupt,
            guest_cid: self.guest_cid,
            rx,
            tx,
            rx_event,
            tx_event,
            event_event,
            _stop: worker_stop,
            muxer,
            segs: Vec::new(),
            tx_data: Vec::new(),
            rx_buf: vec![0; MAX_PACKET_SIZE],
            broken: false,
            warn_limit: WarnLimiter::default(),
        };
        let thread = WorkerThread::spawn("virtio-vsock", stop, move || worker.run());
        self.worker = Some(thread.map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // Dropping the worker's muxer closes every host connection.
        self.stop_worker();
        self.acked_features = 0;
        true
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop_worker();
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
    rx_event: EventFd,
    tx_event: EventFd,
    event_event: EventFd,
    // Registered in the muxer's epoll; kept open for as long as we wait on it.
    _stop: EventFd,
    muxer: Muxer,
    // Scratch space reused for every packet.
    segs: Vec<Segment>,
    tx_data: Vec<u8>,
    rx_buf: Vec<u8>,
    // The driver corrupted a queue; nothing is touched until it resets us.
    broken: bool,
    warn_limit: WarnLimiter,
}

impl Worker {
    fn run(mut self) {
        // The driver may have queued packets before it set DRIVER_OK.
        self.process_tx();
        self.process_rx();
        let mut events = [EpollEvent::default(); 64];
        loop {
            let timeout = self.muxer.timeout_ms(Instant::now());
            let n = match self.muxer.epoll().wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!(error = %e, "virtio-vsock: epoll wait failed, worker exits");
                    self.interrupt.signal_needs_reset();
                    return;
                }
            };
            for event in events.iter().take(n) {
                // Drained eventfds only mean another wakeup got there first.
                match event.data() {
                    TOKEN_STOP => return,
                    // Fresh rx buffers: picked up by process_rx below.
                    TOKEN_RX => {
                        let _ = self.rx_event.read();
                    }
                    TOKEN_TX => {
                        let _ = self.tx_event.read();
                        self.process_tx();
                    }
                    TOKEN_EVENT => {
                        let _ = self.event_event.read();
                    }
                    token => self
                        .muxer
                        .handle_event(token, EventSet::from_bits_truncate(event.events())),
                }
            }
            self.muxer.expire(Instant::now());
            self.process_rx();
        }
    }

    fn process_tx(&mut self) {
        if self.broken {
            return;
        }
        if let Err(e) = self.try_process_tx() {
            self.queue_broken("tx", e);
        }
    }

    fn process_rx(&mut self) {
        if self.broken || !self.muxer.has_rx_work() {
            return;
        }
        if let Err(e) = self.try_process_rx() {
            self.queue_broken("rx", e);
        }
    }

    fn queue_broken(&mut self, queue: &str, e: virtio_queue::Error) {
        error!(queue, error = %e, "virtio-vsock: queue is corrupt, device needs reset");
        self.broken = true;
        self.interrupt.signal_needs_reset();
    }

    // Hands every packet the guest queued to the muxer. Bad packets are
    // dropped (and completed) without disturbing anything else.
    fn try_process_tx(&mut self) -> Result<(), virtio_queue::Error> {
        let mut used_any = false;
        loop {
            self.tx.disable_notification(&self.mem)?;
            loop {
                let next = self.tx.iter(&self.mem)?.next();
                let Some(chain) = next else {
                    break;
                };
                let head = chain.head_index();
                match read_tx_packet(&self.mem, chain, &mut self.segs, &mut self.tx_data) {
                    Ok(header) => match header.check_guest_addressing(self.guest_cid) {
                        Ok(()) => self.muxer.handle_guest_packet(&header, &self.tx_data),
                        Err(e) => limited!(
                            self.warn_limit,
                            warn,
                            head,
                            error = %e,
                            "virtio-vsock: dropping misaddressed tx packet"
                        ),
                    },
                    Err(e) => limited!(
                        self.warn_limit,
                        warn,
                        head,
                        error = %e,
                        "virtio-vsock: dropping malformed tx packet"
                    ),
                }
                self.tx.add_used(&self.mem, head, 0)?;
                used_any = true;
            }
            // Re-check after re-enabling notifications so a packet queued in
            // between is not left waiting for a kick that never comes.
            if !self.tx.enable_notification(&self.mem)? {
                break;
            }
        }
        if used_any && self.tx.needs_notification(&self.mem)? {
            self.signal_used();
        }
        Ok(())
    }

    // Fills rx buffers while the muxer has packets and the guest has buffers.
    // Out of buffers, we just stop: the guest kicks the rx queue when it posts
    // more (we never suppress rx notifications), and process_rx runs again.
    fn try_process_rx(&mut self) -> Result<(), virtio_queue::Error> {
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
        if used_any && self.rx.needs_notification(&self.mem)? {
            self.signal_used();
        }
        Ok(())
    }

    fn signal_used(&self) {
        if let Err(e) = self.interrupt.signal_used_queue() {
            error!(error = %e, "virtio-vsock: cannot signal used queue");
        }
    }
}
