//! The tx queue: frames the guest sends, to the tap.
//!
//! Each chain's header is copied out, checked and replaced by a clean one,
//! and header and frame written to the tap with one writev straight from
//! guest memory (at most one header and
//! [`MAX_FRAME_SIZE`](super::header::MAX_FRAME_SIZE) bytes; a longer chain is
//! refused unread). No copy in the VMM: the tap's own is the only one. A bad chain, a refused header or
//! a tap that cannot take the frame (EAGAIN: its queue is full; EIO: the
//! interface is down) drops the frame; the chain is completed either way.

use virtio_queue::{DescriptorChain, Queue};

use super::chain::{gather_tx_chain, ChainError};
use super::header::{HeaderError, NetHeader, HEADER_SIZE};
use super::tap::Tap;
use super::NAME;
use crate::virtio::interrupt::VirtioInterrupt;
use crate::virtio::queue_drain::drain_queue;
use crate::virtio::warn_limit::{limited, WarnLimiter};
use crate::virtio::GuestMemory;

#[derive(Debug, thiserror::Error)]
enum TxError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("chain of {0} bytes cannot hold a header")]
    NoHeader(usize),
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("the tap refused the frame: {0}")]
    Tap(std::io::Error),
}

/// The tx side of one activation.
pub(super) struct TxPath {
    acked: u64,
    warn_limit: WarnLimiter,
}

impl TxPath {
    pub(super) fn new(acked: u64) -> Self {
        Self {
            acked,
            warn_limit: WarnLimiter::default(),
        }
    }

    /// Sends every frame the guest queued. An error means the queue itself is corrupt.
    pub(super) fn process(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        interrupt: &VirtioInterrupt,
        tap: &Tap,
    ) -> Result<(), virtio_queue::Error> {
        drain_queue(NAME, queue, mem, interrupt, |chain| {
            let head = chain.head_index();
            if let Err(e) = send(mem, chain, tap, self.acked) {
                limited!(self.warn_limit, warn, head, error = %e, "virtio-net: dropping tx frame");
            }
            0
        })
    }
}

fn send(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    tap: &Tap,
    acked: u64,
) -> Result<(), TxError> {
    let mut frame = gather_tx_chain(mem, chain)?;
    let frame_len = frame
        .len
        .checked_sub(HEADER_SIZE)
        .ok_or(TxError::NoHeader(frame.len))?;
    let clean = NetHeader::parse(&frame.header)
        .check_tx(frame_len, acked)?
        .to_bytes();
    tap.write_frame(&clean, &mut frame).map_err(TxError::Tap)?;
    Ok(())
}
