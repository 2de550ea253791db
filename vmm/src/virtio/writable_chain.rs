//! The device-writable buffers of an rx descriptor chain, as net and vsock
//! fill them: every buffer is checked against guest memory when the chain is
//! taken, so that a packet built for it (maybe already read from the host)
//! cannot be lost halfway through writing; then the packet is written
//! across the buffers front to back.
//!
//! No layout is assumed: the packet may fit one descriptor or be spread over
//! any number of them. Bytes past the largest packet are never counted, so a
//! chain claiming 4 GiB costs nothing.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory as _, GuestMemoryError};

use super::GuestMemory;

/// One guest buffer of a chain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Segment {
    pub(crate) addr: GuestAddress,
    pub(crate) len: usize,
}

/// Why an rx chain cannot be written to.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WritableChainError {
    #[error("device-readable descriptor at {0:#x} in an rx chain")]
    ReadOnly(u64),
    #[error("descriptor [{addr:#x}, +{len:#x}) is outside guest memory")]
    OutOfBounds { addr: u64, len: usize },
}

/// Collects the buffers of `chain` into `segs` (cleared first) and returns
/// how many bytes the device may write, capped at `max`. Every descriptor
/// must be device-writable and, up to the cap, inside guest memory;
/// zero-length ones (and those past the cap) are skipped.
pub(crate) fn collect_writable(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    max: usize,
    segs: &mut Vec<Segment>,
) -> Result<usize, WritableChainError> {
    segs.clear();
    let mut total = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(WritableChainError::ReadOnly(desc.addr().0));
        }
        let len = usize::try_from(desc.len()).unwrap_or(usize::MAX);
        let take = len.min(max - total);
        if take == 0 {
            continue;
        }
        if !mem.check_range(desc.addr(), take) {
            return Err(WritableChainError::OutOfBounds {
                addr: desc.addr().0,
                len: take,
            });
        }
        segs.push(Segment {
            addr: desc.addr(),
            len: take,
        });
        total += take;
    }
    Ok(total)
}

/// Writes `data` across `segs` from the start and returns how many bytes it
/// wrote: all of `data` unless the buffers hold fewer.
pub(crate) fn write_across(
    mem: &GuestMemory,
    segs: &[Segment],
    data: &[u8],
) -> Result<usize, GuestMemoryError> {
    let mut rest = data;
    for seg in segs {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(seg.len.min(rest.len()));
        mem.write_slice(now, seg.addr)?;
        rest = later;
    }
    Ok(data.len() - rest.len())
}
