//! virtio-net with a tap backend: the guest's network interface.
//!
//! The VMM is given an open tap (`--net-fd`, made by the shim in the pod's
//! network namespace) and the guest's MAC (`--net-mac`). Frames cross as
//! `[virtio_net_hdr_v1][Ethernet frame]` both ways, so the tap's GSO and
//! checksum offloads carry over to the guest's without copies of their own.
//!
//! Layout: [`tap`] is the fd (checks, ioctls, reads and writes), [`header`]
//! the virtio-net header and its checks, `features` what is offered and the
//! config space, `chain` descriptor chains, `rx` and `tx` the two queue
//! paths, `device` the [`VirtioDevice`](crate::virtio::VirtioDevice) and its
//! worker. docs/security/net.md says what the guest controls.

mod chain;
mod device;
mod features;
pub mod header;
mod rx;
pub mod tap;
mod tx;

/// Name in logs and of the worker thread.
const NAME: &str = "virtio-net";

pub use device::{format_mac, Net, QUEUE_SIZE};
pub use features::AVAIL_FEATURES;
pub use tap::{Tap, TapError};

#[cfg(test)]
mod tests;
