//! Descriptor chains as the net queues use them: a tx chain's header is
//! copied out and checked, its frame written to the tap from where it is in
//! guest memory (only the header is interpreted, and the kernel copies
//! the frame before it parses anything in it); an rx chain
//! is a list of device-writable guest buffers, every one checked against
//! guest memory before a frame is written into it.
//!
//! No layout is assumed: header and frame may share a descriptor or be
//! spread over any number of them. Bytes past the largest packet are never
//! read or counted, so a chain claiming 4 GiB costs nothing.

use std::marker::PhantomData;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestMemory as _, GuestMemoryError};

use super::header::{HEADER_SIZE, MAX_PACKET_SIZE};
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

/// A tx chain ready for one writev: its header copied out (to be checked,
/// then replaced by a clean one), the frame left where it is in guest memory.
pub struct TxFrame<'m> {
    /// The chain's first [`HEADER_SIZE`] bytes (all of them when `len` is at
    /// least that).
    pub header: [u8; HEADER_SIZE],
    /// Header and frame bytes in the chain.
    pub len: usize,
    // Slot 0 is for the clean header, the rest the frame's bytes in guest
    // memory, which outlives `'m`.
    parts: Vec<libc::iovec>,
    _mem: PhantomData<&'m GuestMemory>,
}

impl TxFrame<'_> {
    /// The iovecs of `header` followed by the frame, for one writev; the
    /// frame's bytes are the guest's until the kernel has copied them.
    pub(super) fn with_header<'a>(
        &'a mut self,
        header: &'a [u8; HEADER_SIZE],
    ) -> &'a [libc::iovec] {
        self.parts[0] = libc::iovec {
            iov_base: header.as_ptr().cast_mut().cast(),
            iov_len: HEADER_SIZE,
        };
        &self.parts
    }
}

/// Gathers the tx chain: copies its header out and points at the rest in
/// guest memory (no copy: the kernel's write to the tap makes the only one).
/// Every descriptor is checked to be device-readable and inside guest
/// memory, and the whole at most [`MAX_PACKET_SIZE`] long.
pub fn gather_tx_chain<'m>(
    mem: &'m GuestMemory,
    chain: DescriptorChain<&'m GuestMemory>,
) -> Result<TxFrame<'m>, ChainError> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut frame = TxFrame {
        header: [0; HEADER_SIZE],
        len: 0,
        parts: vec![empty],
        _mem: PhantomData,
    };
    for desc in chain {
        if desc.is_write_only() {
            return Err(ChainError::WriteOnly(desc.addr().0));
        }
        let len = usize::try_from(desc.len()).unwrap_or(usize::MAX);
        let end = frame
            .len
            .checked_add(len)
            .filter(|&end| end <= MAX_PACKET_SIZE)
            .ok_or(ChainError::TooLong)?;
        let (mut addr, mut rest) = (desc.addr(), len);
        if frame.len < HEADER_SIZE {
            let taken = rest.min(HEADER_SIZE - frame.len);
            mem.read_slice(&mut frame.header[frame.len..frame.len + taken], addr)?;
            addr = addr
                .checked_add(taken as u64)
                .ok_or(GuestMemoryError::InvalidGuestAddress(addr))?;
            rest -= taken;
        }
        for slice in mem.get_slices(addr, rest) {
            let slice = slice?;
            frame.parts.push(libc::iovec {
                // Without Xen's grant mappings the guard is the plain
                // address of guest memory mapped for the VM's lifetime.
                iov_base: slice.ptr_guard().as_ptr().cast_mut().cast(),
                iov_len: slice.len(),
            });
        }
        frame.len = end;
    }
    Ok(frame)
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
