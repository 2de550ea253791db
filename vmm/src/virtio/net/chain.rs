//! Descriptor chains as the net queues use them: a tx chain is read whole
//! into a host buffer (so the frame checked is the frame sent), an rx chain
//! is a list of device-writable guest buffers, every one checked against
//! guest memory before a frame is written into it.
//!
//! No layout is assumed: header and frame may share a descriptor or be
//! spread over any number of them. Bytes past the largest packet are never
//! read or counted, so a chain claiming 4 GiB costs nothing.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryError};

use super::header::MAX_PACKET_SIZE;
use crate::virtio::writable_chain::{collect_writable, write_across, Segment, WritableChainError};
use crate::virtio::GuestMemory;

/// Why a chain could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("device-writable descriptor at {0:#x} in a tx chain")]
    WriteOnly(u64),
    #[error(transparent)]
    Unwritable(#[from] WritableChainError),
    #[error("tx chain holds more than {MAX_PACKET_SIZE} bytes")]
    TooLong,
    #[error("guest memory access failed: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// Copies the tx chain into `buf` (at least [`MAX_PACKET_SIZE`] long) and
/// returns how many bytes it holds.
pub fn read_tx_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    let limit = MAX_PACKET_SIZE.min(buf.len());
    let mut total = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(ChainError::WriteOnly(desc.addr().0));
        }
        let len = usize::try_from(desc.len()).unwrap_or(usize::MAX);
        let end = total
            .checked_add(len)
            .filter(|&end| end <= limit)
            .ok_or(ChainError::TooLong)?;
        mem.read_slice(&mut buf[total..end], desc.addr())?;
        total = end;
    }
    Ok(total)
}

/// An rx chain taken from the avail ring, checked, not yet used.
#[derive(Debug)]
pub struct RxChain {
    pub head: u16,
    segs: Vec<Segment>,
    /// Bytes the device may write (capped at [`MAX_PACKET_SIZE`]).
    pub capacity: usize,
}

impl RxChain {
    /// Checks every descriptor of `chain`: device-writable, inside guest
    /// memory; zero-length ones are skipped.
    pub fn new(
        mem: &GuestMemory,
        chain: DescriptorChain<&GuestMemory>,
    ) -> Result<Self, ChainError> {
        let head = chain.head_index();
        let mut segs = Vec::new();
        let capacity = collect_writable(mem, chain, MAX_PACKET_SIZE, &mut segs)?;
        Ok(Self {
            head,
            segs,
            capacity,
        })
    }

    /// Writes `data` at the start of the chain; it must fit in `capacity`.
    pub fn write(&self, mem: &GuestMemory, data: &[u8]) -> Result<(), GuestMemoryError> {
        match write_across(mem, &self.segs, data)? {
            n if n == data.len() => Ok(()),
            n => Err(GuestMemoryError::PartialBuffer {
                expected: data.len(),
                completed: n,
            }),
        }
    }
}
