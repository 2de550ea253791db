//! The virtio-net header (`struct virtio_net_hdr_v1`, 12 bytes, little
//! endian) in front of every frame, and the checks on what the guest puts in
//! it.
//!
//! A tx header is never passed on as the guest wrote it: it is parsed, every
//! field checked against the frame and the negotiated features, and a fresh
//! header with only the fields that apply is written to the tap. The host
//! kernel checks again (virtio_net_hdr_to_skb); this keeps what reaches it to
//! what a well-behaved driver sends.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};

/// Size of the header with VIRTIO_F_VERSION_1 (num_buffers always present).
pub const HEADER_SIZE: usize = 12;
/// The largest frame (Ethernet header included, virtio header not) either
/// way: a 64 KiB GSO packet and its link headers, as Firecracker allows.
pub const MAX_FRAME_SIZE: usize = 65_550;
/// The largest header and frame together.
pub const MAX_PACKET_SIZE: usize = HEADER_SIZE + MAX_FRAME_SIZE;
/// The shortest frame accepted from the guest: an Ethernet header.
pub const MIN_FRAME_SIZE: usize = 14;

const NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;
const GSO_NONE: u8 = VIRTIO_NET_HDR_GSO_NONE as u8;
const GSO_TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
const GSO_TCPV6: u8 = VIRTIO_NET_HDR_GSO_TCPV6 as u8;
#[cfg(test)]
const GSO_ECN: u8 = virtio_bindings::virtio_net::VIRTIO_NET_HDR_GSO_ECN as u8;

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// The fields of a virtio-net header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

/// Why a header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("header flags {0:#x} carry bits the driver may not set")]
    Flags(u8),
    #[error("checksum offload requested without VIRTIO_NET_F_CSUM")]
    CsumNotNegotiated,
    #[error("checksum at {start}+{offset} lies outside the {len}-byte frame")]
    CsumOutOfFrame { start: u16, offset: u16, len: usize },
    #[error("gso_type {0:#x} is not one the device offers or the driver accepted")]
    GsoType(u8),
    #[error("GSO without a partial checksum (NEEDS_CSUM)")]
    GsoWithoutCsum,
    #[error("GSO with gso_size 0")]
    GsoSizeZero,
    #[error("hdr_len {hdr_len} is longer than the {len}-byte frame")]
    HdrLen { hdr_len: u16, len: usize },
    #[error("frame of {0} bytes is shorter than an Ethernet header")]
    FrameTooShort(usize),
    #[error("frame of {0} bytes is longer than {MAX_FRAME_SIZE}")]
    FrameTooLong(usize),
}

impl NetHeader {
    /// Reads a header from its 12 wire bytes.
    pub fn parse(raw: &[u8; HEADER_SIZE]) -> Self {
        let u16_at = |at: usize| u16::from_le_bytes([raw[at], raw[at + 1]]);
        Self {
            flags: raw[0],
            gso_type: raw[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    /// The 12 wire bytes.
    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut raw = [0u8; HEADER_SIZE];
        raw[0] = self.flags;
        raw[1] = self.gso_type;
        for (at, value) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
            (10, self.num_buffers),
        ] {
            raw[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
        raw
    }

    /// Checks the header of a guest frame of `frame_len` bytes (header not
    /// counted) against the features the driver accepted, and returns the
    /// header to give the tap: only the fields that apply, num_buffers 0.
    pub fn check_tx(self, frame_len: usize, acked: u64) -> Result<Self, HeaderError> {
        if frame_len < MIN_FRAME_SIZE {
            return Err(HeaderError::FrameTooShort(frame_len));
        }
        if frame_len > MAX_FRAME_SIZE {
            return Err(HeaderError::FrameTooLong(frame_len));
        }
        // DATA_VALID and RSC_INFO are for the device to set on rx.
        if self.flags & !NEEDS_CSUM != 0 {
            return Err(HeaderError::Flags(self.flags));
        }
        let mut clean = Self::default();
        if self.flags & NEEDS_CSUM != 0 {
            if acked & bit(VIRTIO_NET_F_CSUM) == 0 {
                return Err(HeaderError::CsumNotNegotiated);
            }
            // The 2-byte checksum field must lie in the frame.
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if end > frame_len {
                return Err(HeaderError::CsumOutOfFrame {
                    start: self.csum_start,
                    offset: self.csum_offset,
                    len: frame_len,
                });
            }
            clean.flags = NEEDS_CSUM;
            clean.csum_start = self.csum_start;
            clean.csum_offset = self.csum_offset;
        }
        let feature = match self.gso_type {
            GSO_NONE => return Ok(clean),
            GSO_TCPV4 => VIRTIO_NET_F_HOST_TSO4,
            GSO_TCPV6 => VIRTIO_NET_F_HOST_TSO6,
            // UDP (UFO), UDP_L4 (USO) and the ECN bit are not offered.
            other => return Err(HeaderError::GsoType(other)),
        };
        if acked & bit(feature) == 0 {
            return Err(HeaderError::GsoType(self.gso_type));
        }
        if clean.flags & NEEDS_CSUM == 0 {
            return Err(HeaderError::GsoWithoutCsum);
        }
        if self.gso_size == 0 {
            return Err(HeaderError::GsoSizeZero);
        }
        if usize::from(self.hdr_len) > frame_len {
            return Err(HeaderError::HdrLen {
                hdr_len: self.hdr_len,
                len: frame_len,
            });
        }
        clean.gso_type = self.gso_type;
        clean.gso_size = self.gso_size;
        clean.hdr_len = self.hdr_len;
        Ok(clean)
    }

    /// The header to give the driver for a frame the tap handed us with
    /// this one; `None` if the driver cannot take the frame with the features
    /// it accepted (one queued under the offloads of an earlier negotiation).
    pub fn for_rx(self, acked: u64) -> Option<Self> {
        let guest_csum = acked & bit(VIRTIO_NET_F_GUEST_CSUM) != 0;
        if self.flags & !(NEEDS_CSUM | DATA_VALID) != 0
            || (self.flags & NEEDS_CSUM != 0 && !guest_csum)
        {
            return None;
        }
        let gso_ok = match self.gso_type {
            GSO_NONE => true,
            GSO_TCPV4 => acked & bit(VIRTIO_NET_F_GUEST_TSO4) != 0,
            GSO_TCPV6 => acked & bit(VIRTIO_NET_F_GUEST_TSO6) != 0,
            // ECN, UFO, USO: never enabled on the tap.
            _ => false,
        };
        if !gso_ok {
            return None;
        }
        let mut header = self;
        // Without GUEST_CSUM the flags must be zero (virtio 1.2, 5.1.6.4).
        if !guest_csum {
            header.flags = 0;
        }
        Some(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4);

    fn tso4() -> NetHeader {
        NetHeader {
            flags: NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 7,
        }
    }

    #[test]
    fn round_trip() {
        let header = tso4();
        assert_eq!(NetHeader::parse(&header.to_bytes()), header);
    }

    #[test]
    fn a_good_tso_header_passes_cleaned() {
        let clean = tso4().check_tx(60_000, ALL).expect("valid");
        assert_eq!(
            clean,
            NetHeader {
                num_buffers: 0,
                ..tso4()
            }
        );
        let plain = NetHeader {
            gso_size: 99,
            hdr_len: 5,
            csum_start: 9999,
            num_buffers: 3,
            ..Default::default()
        };
        assert_eq!(plain.check_tx(60, 0), Ok(NetHeader::default()));
    }

    #[test]
    fn hostile_headers_are_refused() {
        let cases = [
            (
                NetHeader {
                    flags: 0x02,
                    ..Default::default()
                },
                100,
                ALL,
            ),
            (
                NetHeader {
                    flags: 0xff,
                    ..Default::default()
                },
                100,
                ALL,
            ),
            (
                NetHeader {
                    flags: NEEDS_CSUM,
                    csum_start: 90,
                    csum_offset: 9,
                    ..Default::default()
                },
                100,
                ALL,
            ),
            (
                NetHeader {
                    flags: NEEDS_CSUM,
                    csum_start: u16::MAX,
                    csum_offset: u16::MAX,
                    ..Default::default()
                },
                100,
                ALL,
            ),
            (
                NetHeader {
                    flags: NEEDS_CSUM,
                    ..Default::default()
                },
                100,
                0,
            ),
            (
                NetHeader {
                    gso_type: 3,
                    ..tso4()
                },
                60_000,
                ALL,
            ),
            (
                NetHeader {
                    gso_type: 5,
                    ..tso4()
                },
                60_000,
                ALL,
            ),
            (
                NetHeader {
                    gso_type: GSO_TCPV4 | GSO_ECN,
                    ..tso4()
                },
                60_000,
                ALL,
            ),
            (
                NetHeader {
                    gso_type: 0x42,
                    ..tso4()
                },
                60_000,
                ALL,
            ),
            (NetHeader { flags: 0, ..tso4() }, 60_000, ALL),
            (
                NetHeader {
                    gso_size: 0,
                    ..tso4()
                },
                60_000,
                ALL,
            ),
            (
                NetHeader {
                    hdr_len: 61,
                    ..tso4()
                },
                60,
                ALL,
            ),
            (tso4(), 60_000, bit(VIRTIO_NET_F_CSUM)),
            (NetHeader::default(), 13, ALL),
            (NetHeader::default(), MAX_FRAME_SIZE + 1, ALL),
        ];
        for (header, len, acked) in cases {
            assert!(
                header.check_tx(len, acked).is_err(),
                "{header:?} len {len} accepted"
            );
        }
    }

    #[test]
    fn rx_headers_must_match_what_the_driver_took() {
        assert_eq!(tso4().for_rx(ALL), Some(tso4()));
        assert_eq!(tso4().for_rx(bit(VIRTIO_NET_F_GUEST_CSUM)), None);
        assert_eq!(
            NetHeader {
                gso_type: GSO_TCPV6,
                ..tso4()
            }
            .for_rx(ALL),
            None
        );
        assert_eq!(
            NetHeader {
                flags: NEEDS_CSUM,
                ..Default::default()
            }
            .for_rx(0),
            None
        );
        let valid = NetHeader {
            flags: DATA_VALID,
            ..Default::default()
        };
        assert_eq!(valid.for_rx(0), Some(NetHeader::default()));
        assert_eq!(valid.for_rx(ALL), Some(valid));
        assert_eq!(
            NetHeader {
                gso_type: GSO_TCPV4 | GSO_ECN,
                ..tso4()
            }
            .for_rx(u64::MAX),
            None
        );
        assert_eq!(
            NetHeader {
                flags: 0x80,
                ..Default::default()
            }
            .for_rx(u64::MAX),
            None
        );
    }
}
