//! Moving vsock packets between descriptor chains and plain byte buffers.
//!
//! Nothing here assumes a particular descriptor layout: the driver may put the
//! header and payload in one descriptor, in two, or spread either of them
//! (even the 44-byte header) over several. Every chain is walked, checked for
//! the right direction and bounds-checked against guest memory before use.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use super::header::{parse_header, HeaderError, VsockHeader, HEADER_SIZE, MAX_PKT_LEN};
pub(crate) use crate::virtio::writable_chain::Segment;
use crate::virtio::writable_chain::{collect_writable, write_across, WritableChainError};
use crate::virtio::GuestMemory;

/// Largest packet (header and payload) that ever crosses a queue.
pub(crate) const MAX_PACKET_SIZE: usize = HEADER_SIZE + MAX_PKT_LEN as usize;

/// Why a descriptor chain could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChainError {
    #[error("device-writable descriptor at {0:#x} in a tx chain")]
    WriteOnly(u64),
    #[error(transparent)]
    Unwritable(#[from] WritableChainError),
    #[error("descriptor [{addr:#x}, +{len:#x}) is outside guest memory")]
    OutOfBounds { addr: u64, len: usize },
    #[error("chain holds {have} bytes, the packet needs {need}")]
    TooShort { have: usize, need: usize },
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("guest memory access failed: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// Reads the tx packet in `chain`: returns its header and leaves its payload
/// (exactly `header.len` bytes) in `data`. `segs` is scratch space.
///
/// Fails if any descriptor is device-writable, if the header is invalid, or if
/// the chain holds fewer bytes than the header claims.
pub(crate) fn read_tx_packet(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    segs: &mut Vec<Segment>,
    data: &mut Vec<u8>,
) -> Result<VsockHeader, ChainError> {
    segs.clear();
    let mut total = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(ChainError::WriteOnly(desc.addr().0));
        }
        // Bytes past the largest possible packet are never read; do not even count them.
        let len = usize::try_from(desc.len()).unwrap_or(usize::MAX);
        let take = len.min(MAX_PACKET_SIZE - total);
        if take > 0 {
            segs.push(Segment {
                addr: desc.addr(),
                len: take,
            });
            total += take;
        }
    }
    let mut raw = [0u8; HEADER_SIZE];
    if total < HEADER_SIZE {
        return Err(ChainError::TooShort {
            have: total,
            need: HEADER_SIZE,
        });
    }
    gather(mem, segs, 0, &mut raw)?;
    let header = parse_header(&raw)?;
    // parse_header capped len at MAX_PKT_LEN, so this cannot overflow.
    let need = HEADER_SIZE + header.len as usize;
    if total < need {
        return Err(ChainError::TooShort { have: total, need });
    }
    data.clear();
    data.resize(header.len as usize, 0);
    gather(mem, segs, HEADER_SIZE, data)?;
    Ok(header)
}

/// Collects the device-writable buffers of an rx chain into `segs` and returns
/// how many bytes the device may write (capped at [`MAX_PACKET_SIZE`]).
///
/// Every buffer is checked against guest memory up front, so that a packet
/// built for this chain (which may already hold data read from a host socket)
/// cannot be lost halfway through writing.
pub(crate) fn rx_capacity(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    segs: &mut Vec<Segment>,
) -> Result<usize, ChainError> {
    Ok(collect_writable(mem, chain, MAX_PACKET_SIZE, segs)?)
}

/// Writes `packet` into the buffers collected by [`rx_capacity`].
pub(crate) fn write_rx_packet(
    mem: &GuestMemory,
    segs: &[Segment],
    packet: &[u8],
) -> Result<(), ChainError> {
    match write_across(mem, segs, packet)? {
        n if n == packet.len() => Ok(()),
        n => Err(ChainError::TooShort {
            have: n,
            need: packet.len(),
        }),
    }
}

// Copies `out.len()` bytes starting `offset` bytes into the chain described by `segs`.
fn gather(
    mem: &GuestMemory,
    segs: &[Segment],
    mut offset: usize,
    out: &mut [u8],
) -> Result<(), ChainError> {
    let mut filled = 0;
    for seg in segs {
        if filled == out.len() {
            break;
        }
        if offset >= seg.len {
            offset -= seg.len;
            continue;
        }
        let n = (seg.len - offset).min(out.len() - filled);
        let addr = seg
            .addr
            .0
            .checked_add(offset as u64)
            .ok_or(ChainError::OutOfBounds {
                addr: seg.addr.0,
                len: seg.len,
            })?;
        mem.read_slice(&mut out[filled..filled + n], GuestAddress(addr))
            .map_err(|_| ChainError::OutOfBounds {
                addr: seg.addr.0,
                len: seg.len,
            })?;
        filled += n;
        offset = 0;
    }
    if filled == out.len() {
        Ok(())
    } else {
        Err(ChainError::TooShort {
            have: filled,
            need: out.len(),
        })
    }
}
