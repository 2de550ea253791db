//! virtio-fs: a host directory shared with the guest, served inside the VMM.
//!
//! The guest's virtio-fs driver sends FUSE requests over two virtqueues (one
//! high-priority queue for FORGET/INTERRUPT, one request queue). We answer them
//! in-process with fuse-backend-rs's `PassthroughFs` (behind its `Vfs`), as
//! Dragonball does, so there is no separate virtiofsd to spawn, supervise and
//! sandbox.
//!
//! Wiring it into a VM is the same as for virtio-rng: one device per share,
//!
//! ```ignore
//! let share = Fs::new("cocoon-rootfs", "/run/cocoon/<id>/shared", Caching::Coherent)?;
//! virtio.attach(Box::new(share), &mut mmio)?;
//! ```
//!
//! and in the guest `mount -t virtiofs cocoon-rootfs /mnt`.
//!
//! Layout of this module:
//! - [`device`]: the [`Fs`] device ([`VirtioDevice`](super::VirtioDevice) impl, lifecycle);
//! - `error`: [`FsError`], why a device could not be built;
//! - [`config_space`]: the virtio-fs config space and tag validation;
//! - [`passthrough`]: how the shared directory is served (Vfs + PassthroughFs settings);
//! - `request`: one FUSE request, from descriptor chain to reply, panic-proof;
//! - `whole_batches`: directory reads that leave no host entry behind (tmpfs offsets);
//! - `worker`: the worker threads that take requests off the queues;
//! - [`fuzz`]: a self-contained entry point for fuzz targets.
//!
//! DAX (the shared-memory window for mapping file contents) is not offered:
//! without it the guest page cache serves mmap, MAP_SHARED included.

pub mod config_space;
pub mod device;
mod error;
pub mod fuzz;
pub mod passthrough;
mod request;
mod whole_batches;
mod worker;

pub use config_space::{validate_tag, TagError, CONFIG_SPACE_SIZE, TAG_LEN};
pub use device::{Fs, NUM_QUEUES, NUM_REQUEST_QUEUES, QUEUE_SIZE};
pub use error::FsError;
pub use fuzz::{handle_request_bytes, FuzzReply};
pub use passthrough::{new_server, Caching, FsServer};

#[cfg(test)]
mod tests;
