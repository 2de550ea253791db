//! The 44-byte `virtio_vsock_hdr` that starts every vsock packet.
//!
//! Parsing is a pure function over bytes so that it can be fuzzed on its own;
//! everything that needs device state (which CIDs are valid) is checked
//! separately in [`VsockHeader::check_guest_addressing`].

/// Size of `struct virtio_vsock_hdr` on the wire.
pub const HEADER_SIZE: usize = 44;

/// The only socket type we support (`VIRTIO_VSOCK_TYPE_STREAM`).
pub const TYPE_STREAM: u16 = 1;

/// The host's well-known CID: every guest packet must be addressed to it.
pub const HOST_CID: u64 = 2;

/// Largest payload we accept in one packet or put into one. Linux never sends
/// more than 64 KiB per packet either; anything larger is a hostile guest.
pub const MAX_PKT_LEN: u32 = 64 * 1024;

/// `VIRTIO_VSOCK_SHUTDOWN_RCV`: the sender will not receive any more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_SEND`: the sender will not send any more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both shutdown flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// A vsock operation (`VIRTIO_VSOCK_OP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection reset (refused or aborted).
    Rst = 3,
    /// Half or full close; `flags` says which direction.
    Shutdown = 4,
    /// Stream data.
    Rw = 5,
    /// Unsolicited credit information.
    CreditUpdate = 6,
    /// Asks the peer for a credit update.
    CreditRequest = 7,
}

impl Op {
    /// The operation with wire value `value`, if there is one.
    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A parsed, structurally valid stream packet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsockHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    /// Payload length; at most [`MAX_PKT_LEN`].
    pub len: u32,
    pub op: Op,
    pub flags: u32,
    /// The sender's receive buffer size (credit flow control).
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far (wraps).
    pub fwd_cnt: u32,
}

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header needs {HEADER_SIZE} bytes, got {0}")]
    Truncated(usize),
    #[error("unsupported socket type {0}")]
    UnsupportedType(u16),
    #[error("unknown operation {0}")]
    UnknownOp(u16),
    #[error("payload length {0} exceeds the {MAX_PKT_LEN}-byte limit")]
    TooLong(u32),
    #[error("source CID {got} is not the guest's CID {expected}")]
    BadSrcCid { got: u64, expected: u64 },
    #[error("destination CID {0} is not the host ({HOST_CID})")]
    BadDstCid(u64),
}

/// Parses the header at the start of `bytes` (extra bytes are ignored).
///
/// Checks everything that can be checked without device state: length, socket
/// type, operation and payload length limit.
pub fn parse_header(bytes: &[u8]) -> Result<VsockHeader, HeaderError> {
    let raw: &[u8; HEADER_SIZE] = bytes
        .get(..HEADER_SIZE)
        .and_then(|b| b.try_into().ok())
        .ok_or(HeaderError::Truncated(bytes.len()))?;
    let u16_at = |at: usize| u16::from_le_bytes([raw[at], raw[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);

    let type_ = u16_at(28);
    if type_ != TYPE_STREAM {
        return Err(HeaderError::UnsupportedType(type_));
    }
    let op_raw = u16_at(30);
    let op = Op::from_u16(op_raw).ok_or(HeaderError::UnknownOp(op_raw))?;
    let len = u32_at(24);
    if len > MAX_PKT_LEN {
        return Err(HeaderError::TooLong(len));
    }
    Ok(VsockHeader {
        src_cid: u64_at(0),
        dst_cid: u64_at(8),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len,
        op,
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    })
}

impl VsockHeader {
    /// The wire form of this header (always a stream packet).
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        out[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        out[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        out[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
        out[30..32].copy_from_slice(&(self.op as u16).to_le_bytes());
        out[32..36].copy_from_slice(&self.flags.to_le_bytes());
        out[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        out[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        out
    }

    /// Checks that a packet from the guest comes from `guest_cid` and goes to the host.
    /// A guest must not spoof another source or talk to anyone but us.
    pub fn check_guest_addressing(&self, guest_cid: u64) -> Result<(), HeaderError> {
        if self.src_cid != guest_cid {
            return Err(HeaderError::BadSrcCid {
                got: self.src_cid,
                expected: guest_cid,
            });
        }
        if self.dst_cid != HOST_CID {
            return Err(HeaderError::BadDstCid(self.dst_cid));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VsockHeader {
        VsockHeader {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: HOST_CID,
            src_port: 0xdead_beef,
            dst_port: 1024,
            len: 4096,
            op: Op::Rw,
            flags: 0,
            buf_alloc: 256 * 1024,
            fwd_cnt: 0xffff_fff0,
        }
    }

    #[test]
    fn round_trip() {
        let header = sample();
        let bytes = header.to_bytes();
        assert_eq!(parse_header(&bytes), Ok(header));
        // Trailing payload bytes are not part of the header.
        let mut long = bytes.to_vec();
        long.extend_from_slice(&[0xaa; 10]);
        assert_eq!(parse_header(&long), Ok(header));
    }

    #[test]
    fn wire_layout_is_little_endian() {
        let bytes = sample().to_bytes();
        assert_eq!(bytes[0], 0x08);
        assert_eq!(bytes[7], 0x01);
        assert_eq!(&bytes[16..20], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(&bytes[28..30], &[1, 0]);
        assert_eq!(&bytes[30..32], &[5, 0]);
    }

    #[test]
    fn truncated() {
        let bytes = sample().to_bytes();
        for n in 0..HEADER_SIZE {
            assert_eq!(parse_header(&bytes[..n]), Err(HeaderError::Truncated(n)));
        }
    }

    #[test]
    fn rejects_bad_type_op_and_len() {
        let mut bytes = sample().to_bytes();
        bytes[28] = 2; // SEQPACKET
        assert_eq!(parse_header(&bytes), Err(HeaderError::UnsupportedType(2)));

        let mut bytes = sample().to_bytes();
        for op in [0u16, 8, 0xffff] {
            bytes[30..32].copy_from_slice(&op.to_le_bytes());
            assert_eq!(parse_header(&bytes), Err(HeaderError::UnknownOp(op)));
        }

        let mut bytes = sample().to_bytes();
        bytes[24..28].copy_from_slice(&(MAX_PKT_LEN + 1).to_le_bytes());
        assert_eq!(
            parse_header(&bytes),
            Err(HeaderError::TooLong(MAX_PKT_LEN + 1))
        );
        bytes[24..28].copy_from_slice(&MAX_PKT_LEN.to_le_bytes());
        assert!(parse_header(&bytes).is_ok());
    }

    #[test]
    fn every_op_parses() {
        for value in 1..=7u16 {
            let op = Op::from_u16(value).expect("known op");
            assert_eq!(op as u16, value);
            let header = VsockHeader { op, ..sample() };
            assert_eq!(parse_header(&header.to_bytes()), Ok(header));
        }
    }

    #[test]
    fn guest_addressing() {
        let header = VsockHeader {
            src_cid: 3,
            ..sample()
        };
        assert_eq!(header.check_guest_addressing(3), Ok(()));
        assert_eq!(
            header.check_guest_addressing(4),
            Err(HeaderError::BadSrcCid {
                got: 3,
                expected: 4
            })
        );
        let header = VsockHeader {
            dst_cid: 1,
            ..header
        };
        assert_eq!(
            header.check_guest_addressing(3),
            Err(HeaderError::BadDstCid(1))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic stand-in for the fuzz target.
        let mut state = 0x1234_5678_u32;
        let mut bytes = [0u8; HEADER_SIZE + 4];
        for _ in 0..10_000 {
            for b in bytes.iter_mut() {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (state >> 24) as u8;
            }
            // Make the interesting fields plausible half of the time.
            if state & 1 == 0 {
                bytes[28] = 1;
                bytes[29] = 0;
                bytes[31] = 0;
                bytes[30] %= 9;
            }
            let len = (state as usize >> 8) % bytes.len();
            if let Ok(header) = parse_header(&bytes[..len]) {
                assert_eq!(parse_header(&header.to_bytes()), Ok(header));
            }
        }
    }
}
