//! One virtio-blk request, read from a descriptor chain the guest wrote and
//! checked before the disk is touched (virtio 1.2, 5.2.6).
//!
//! The layout we take is the one Linux's driver uses, one descriptor per
//! part: a 16-byte device-readable header (type, reserved, sector), the data
//! buffers (device-readable for a write, device-writable for a read or an
//! id), and a device-writable status byte last. Anything else is answered
//! with an error status, or, without a status byte to write it to, completed
//! empty: only the guest's own request fails.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory as _};

use crate::virtio::GuestMemory;

/// Bytes per sector: sector numbers and data lengths are in these units,
/// whatever the disk's block size.
pub const SECTOR_SIZE: u64 = 512;
/// The length of the request header.
pub const HEADER_LEN: u32 = 16;
/// The length of the id GET_ID answers with (the serial, NUL-padded).
pub const ID_LEN: u32 = 20;

/// `VIRTIO_BLK_T_*`: request types.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_GET_ID: u32 = 8;

/// `VIRTIO_BLK_S_*`: the status byte.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// What the guest asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Read `data` (device-writable) from the disk at `sector`.
    Read { sector: u64 },
    /// Write `data` (device-readable) to the disk at `sector`.
    Write { sector: u64 },
    /// Write the device's id into `data` (device-writable).
    GetId,
}

/// A request that passed every check: its buffers lie in guest memory, have
/// the direction its kind needs, and a read or write stays on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    /// The data buffers, in order.
    pub data: Vec<(GuestAddress, u32)>,
    /// The sum of the data buffers' lengths.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a request is not carried out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the chain has no device-writable status byte at its end")]
    NoStatus,
    #[error("the header is not one device-readable descriptor of {HEADER_LEN} bytes")]
    Header,
    #[error("the header or a buffer is outside guest memory")]
    Memory,
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("a data buffer has the wrong direction for the request type")]
    Direction,
    #[error("data of {0} bytes is not a whole number of sectors")]
    Unaligned(u64),
    #[error("sectors {sector}..+{sectors} are beyond the disk's {capacity} sectors")]
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
}

impl RequestError {
    /// The status the guest gets, when there is a status byte to write it to.
    pub fn status(&self) -> Option<u8> {
        match self {
            RequestError::NoStatus => None,
            RequestError::Unsupported(_) => Some(S_UNSUPP),
            _ => Some(S_IOERR),
        }
    }
}

/// A request's status byte's address, when its chain ends with one: so that
/// a request that fails its checks still gets its error status.
pub fn status_address(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> Option<GuestAddress> {
    let last = chain.last()?;
    (last.is_write_only() && last.len() >= 1 && mem.address_in_range(last.addr()))
        .then(|| last.addr())
}

/// Reads and checks one request from `chain` for a disk of `capacity`
/// sectors.
pub fn parse(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    capacity: u64,
) -> Result<Request, RequestError> {
    let descriptors: Vec<_> = chain.collect();
    let (Some(header), Some(status)) = (descriptors.first(), descriptors.last()) else {
        return Err(RequestError::NoStatus);
    };
    if descriptors.len() < 2 || !status.is_write_only() || status.len() < 1 {
        return Err(RequestError::NoStatus);
    }
    if !mem.address_in_range(status.addr()) {
        return Err(RequestError::NoStatus);
    }
    if header.is_write_only() || header.len() != HEADER_LEN {
        return Err(RequestError::Header);
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut raw, header.addr())
        .map_err(|_| RequestError::Memory)?;
    let le32 = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    let request_type = le32(0);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&raw[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);

    let (kind, writable) = match request_type {
        T_IN => (Kind::Read { sector }, true),
        T_OUT => (Kind::Write { sector }, false),
        T_GET_ID => (Kind::GetId, true),
        other => return Err(RequestError::Unsupported(other)),
    };
    let middle = &descriptors[1..descriptors.len() - 1];
    let mut data = Vec::with_capacity(middle.len());
    let mut data_len = 0u64;
    for descriptor in middle {
        if descriptor.is_write_only() != writable {
            return Err(RequestError::Direction);
        }
        let len = descriptor.len();
        // One region holds the whole buffer (the disk reads into it directly).
        if len > 0 && mem.get_slice(descriptor.addr(), len as usize).is_err() {
            return Err(RequestError::Memory);
        }
        data_len += u64::from(len);
        data.push((descriptor.addr(), len));
    }
    match kind {
        Kind::Read { sector } | Kind::Write { sector } => {
            if !data_len.is_multiple_of(SECTOR_SIZE) {
                return Err(RequestError::Unaligned(data_len));
            }
            let sectors = data_len / SECTOR_SIZE;
            if sector.checked_add(sectors).is_none_or(|end| end > capacity) {
                return Err(RequestError::OutOfRange {
                    sector,
                    sectors,
                    capacity,
                });
            }
        }
        Kind::GetId => {}
    }
    Ok(Request {
        kind,
        data,
        data_len,
        status: status.addr(),
    })
}
