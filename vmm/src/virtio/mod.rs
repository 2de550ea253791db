//! Virtio devices and the virtio-mmio transport that exposes them to the guest.
//!
//! Everything the guest writes into a transport register or a virtqueue is
//! untrusted: devices and transport validate it and fail the request (or mark
//! the device as needing reset) instead of panicking.

pub mod balloon;
pub mod block;
pub mod config;
mod device;
mod epoll_worker;
pub mod fs;
pub mod interrupt;
pub mod mmio;
pub mod net;
mod queue_drain;
pub mod rng;
pub mod vsock;
pub mod worker_thread;

// Public for the fuzz targets (feature `fuzzing`), which drive devices
// through the same rings as the unit tests.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod test_driver;
mod warn_limit;
mod writable_chain;

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

pub use virtio_queue::Queue;

/// The guest memory type every device works with (defined with guest RAM).
pub use crate::memory::GuestMemory;

/// Virtio device type of the entropy device.
pub const VIRTIO_ID_RNG: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
/// Virtio device type of the network device.
pub const VIRTIO_ID_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// Virtio device type of the socket device.
pub const VIRTIO_ID_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
/// Virtio device type of the file system device.
pub const VIRTIO_ID_FS: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_FS;
/// Virtio device type of the block device.
pub const VIRTIO_ID_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// Virtio device type of the memory balloon device.
pub const VIRTIO_ID_BALLOON: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;

/// Feature bit every modern (virtio 1.x) device must offer and every driver must accept.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit for used/avail event index notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The transport handed over a different number of queues than the device has.
    #[error("expected {expected} queues and queue events, got {queues} and {events}")]
    QueueCount {
        /// Queues the device declares.
        expected: usize,
        /// Queues received.
        queues: usize,
        /// Queue events received.
        events: usize,
    },
    /// The driver did not enable a queue the device cannot work without.
    #[error("queue {0} was not enabled by the driver")]
    QueueNotReady(usize),
    /// `activate` was called on a device that is already running.
    #[error("device is already active")]
    AlreadyActive,
    /// No parked worker thread was left, or a resource of the workers could
    /// not be created.
    #[error("cannot start the device worker: {0}")]
    Worker(#[from] std::io::Error),
}

/// A virtio device behind a transport. Devices run their own worker thread after activation.
pub trait VirtioDevice: Send {
    /// The virtio device type (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the length is the number of queues.
    /// Every size must be a power of two no larger than 32768.
    fn queue_max_sizes(&self) -> &[u16];

    /// Features offered to the driver; must include [`VIRTIO_F_VERSION_1`].
    fn avail_features(&self) -> u64;

    /// Kernel command line parameters for the guest's driver of this device.
    fn kernel_args(&self) -> &'static [&'static str] {
        &[]
    }

    /// Every thread the device will run on, parked until activation; the VM
    /// starts them before the guest runs (activation never spawns one).
    fn threads(&mut self) -> worker_thread::ParkedThreads;

    /// Features the driver accepted. Only a subset of `avail_features` is ever passed.
    fn set_acked_features(&mut self, features: u64);

    /// Reads the device config space; out-of-range reads yield zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device config space; out-of-range writes are ignored (and logged).
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Called once the driver sets DRIVER_OK with valid queues. `queue_events[i]` is signalled
    /// when the driver notifies queue i (by KVM ioeventfd, or by the transport's slow path).
    ///
    /// `queues` has one entry per `queue_max_sizes()` entry. Every queue the driver enabled
    /// has been checked to lie inside guest memory; a queue the driver left disabled is
    /// passed with `ready() == false` and must not be used.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<interrupt::VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_events: Vec<EventFd>,
    ) -> Result<(), ActivateError>;

    /// Stops the workers for good, keeping what the driver set: the VM is
    /// being saved and ends afterwards.
    fn quiesce(&mut self) {}

    /// Stop workers and forget queue state; returns true if the device supports reset.
    fn reset(&mut self) -> bool {
        false
    }
}
