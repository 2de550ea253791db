//! The agent's vsock listeners, which answer only the host.
//!
//! Both agent ports (the API and the stdio streams) would otherwise take a
//! connection from any peer the guest's vsock reaches: a process in a
//! container connecting to the guest's own CID, or to CID 1 through a
//! loopback transport. The guest kernel has no loopback transport, and the
//! VMM forwards only packets addressed to the host; this check is the last
//! line: a connection whose peer is not the host (CID 2) is closed unread.

use futures::stream::{self, Stream};
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY, VMADDR_CID_HOST};

/// A vsock listener on `port` that yields only connections from the host.
pub struct HostOnlyListener {
    port: u32,
    listener: VsockListener,
}

impl HostOnlyListener {
    pub fn bind(port: u32) -> std::io::Result<Self> {
        let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))?;
        Ok(Self { port, listener })
    }

    /// The next connection from the host; others are closed and logged.
    pub async fn accept(&self) -> std::io::Result<VsockStream> {
        loop {
            let (connection, peer) = self.listener.accept().await?;
            if is_host(&peer) {
                return Ok(connection);
            }
            tracing::warn!(
                "port {}: refused a connection from CID {} (only the host may connect)",
                self.port,
                peer.cid()
            );
        }
    }

    /// The listener as a stream of host connections, for the ttrpc server.
    pub fn into_stream(self) -> impl Stream<Item = std::io::Result<VsockStream>> + Send {
        stream::unfold(self, |listener| async move {
            let next = listener.accept().await;
            Some((next, listener))
        })
    }
}

/// Whether `peer` is the host.
pub fn is_host(peer: &VsockAddr) -> bool {
    peer.cid() == VMADDR_CID_HOST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_cid_is_the_host() {
        assert!(is_host(&VsockAddr::new(2, 5000)));
        for cid in [0, 1, 3, 4, VMADDR_CID_ANY] {
            assert!(!is_host(&VsockAddr::new(cid, 5000)), "CID {cid}");
        }
    }
}
