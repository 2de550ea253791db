//! virtio-vsock in userspace, mapped to Unix sockets ("hybrid vsock", the
//! Firecracker convention).
//!
//! The host needs no `/dev/vhost-vsock`: the device speaks the virtio-vsock
//! stream protocol to the guest itself and relays each connection to a Unix
//! socket on the host:
//!
//! - host → guest: connect to the device socket, write `CONNECT <port>\n`,
//!   read `OK <host-port>\n`, then the stream is the guest connection;
//! - guest → host port P: delivered to the Unix socket `<device-socket>_P`.
//!
//! Layout: [`header`] parses the wire header, `packet` moves packets between
//! descriptor chains and bytes, [`unix_backend`] holds the Unix-socket side of
//! the convention, `connection` is one connection's state machine and credit
//! accounting, `muxer` the connection table and its epoll, and `device` the
//! [`VirtioDevice`](crate::virtio::VirtioDevice) with its worker thread.
//!
//! Everything the guest sends is untrusted: headers, descriptor chains and the
//! protocol state are validated, and a misbehaving guest only ever loses its
//! own packets or connections.

mod connection;
mod device;
pub mod header;
mod muxer;
mod packet;
pub mod unix_backend;

pub use connection::{BUF_ALLOC, CONNECT_TIMEOUT};
pub use device::{Vsock, VsockError, QUEUE_SIZE};
pub use header::{parse_header, HeaderError, VsockHeader};
pub use muxer::MAX_CONNECTIONS;

#[cfg(test)]
mod test_guest;
#[cfg(test)]
mod tests;
