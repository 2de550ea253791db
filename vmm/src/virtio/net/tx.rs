//! The tx queue: frames the guest sends, to the tap.
//!
//! Each chain is copied whole into a host buffer (at most one header and
//! [`MAX_FRAME_SIZE`](super::header::MAX_FRAME_SIZE) bytes; a longer chain is
//! refused unread), its header checked and replaced by a clean one, and the
//! frame written to the tap with one writev. A bad chain, a refused header or
//! a tap that cannot take the frame (EAGAIN: its queue is full; EIO: the
//! interface is down) drops the frame; the chain is completed either way.

use std::io::IoSlice;

use virtio_queue::{DescriptorChain, Queue};

use super::chain::{read_tx_chain, ChainError};
use super::header::{HeaderError, NetHeader, HEADER_SIZE, MAX_PACKET_SIZE};
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
    // One packet, reused: read from the guest, checked, written to the tap.
    buf: Vec<u8>,
    acked: u64,
    warn_limit: WarnLimiter,
}

impl TxPath {
    pub(super) fn new(acked: u64) -> Self {
        Self {
            buf: vec![0; MAX_PACKET_SIZE],
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
            if let Err(e) = send(mem, chain, &mut self.buf, tap, self.acked) {
                limited!(self.warn_limit, warn, head, error = %e, "virtio-net: dropping tx frame");
            }
            0
        })
    }
}

fn send(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut [u8],
    tap: &Tap,
    acked: u64,
) -> Result<(), TxError> {
    let len = read_tx_chain(mem, chain, buf)?;
    let raw = buf
        .get(..HEADER_SIZE)
        .filter(|_| len >= HEADER_SIZE)
        .and_then(|raw| <&[u8; HEADER_SIZE]>::try_from(raw).ok())
        .ok_or(TxError::NoHeader(len))?;
    let clean = NetHeader::parse(raw).check_tx(len - HEADER_SIZE, acked)?;
    buf[..HEADER_SIZE].copy_from_slice(&clean.to_bytes());
    tap.write_frame(&[IoSlice::new(&buf[..len])])
        .map_err(TxError::Tap)?;
    Ok(())
}
