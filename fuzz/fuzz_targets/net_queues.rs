//! virtio-net through its queues, the fuzzer being the guest and the host:
//! a `Net` device over a datagram socket pair standing in for the tap
//! (`Tap::from_socket`) is activated on real split rings in guest memory
//! with features the input picks (merged rx buffers, checksum and TSO
//! offloads either way, EVENT_IDX), and the input is a sequence of actions:
//!
//! - guest: post tx frames with any header (raw 12 bytes, or flags, gso_type,
//!   hdr_len, gso_size, csum_start/offset picked to be near valid), any
//!   length up to past the largest frame, cut over up to 8 descriptors, with
//!   zero-length, device-writable, out-of-memory, straddling, huge or
//!   looping descriptors;
//! - guest: post rx buffers of any shape (up to 8 descriptors, zero-length
//!   ones included; or with a device-readable or out-of-memory descriptor),
//!   or Linux-like ones (one 1526- or 4096-byte buffer);
//! - host: send frames of any length (0 to past the largest) with any
//!   header; read what reached the "tap"; kick queues; settle.
//!
//! Asserts: nothing panics; the device never needs a reset; every tx chain
//! is completed within 5 s with used length 0; what reaches the host is a
//! frame of 14 to 65550 bytes behind a clean header (num_buffers 0, flags
//! only NEEDS_CSUM and only with CSUM, gso_type none or a negotiated TCP one
//! with NEEDS_CSUM and gso_size > 0, checksum field inside the frame);
//! every rx buffer returned is one the guest still owned, its used length
//! within its room, empty if unusable; rx frames arrive whole, in order, as
//! a subsequence of what the host sent (header fields kept, flags cleared
//! without GUEST_CSUM), spanning exactly num_buffers consecutive buffers
//! (1 without merged rx buffers).
//!
//! Each input gets a fresh device and memory.
#![no_main]

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use cocoon_fuzz::queue_guest::{GuestQueues, Input, Layout, UsedRx};
use cocoon_fuzz::trace;
use cocoon_vmm::virtio::net::header::{NetHeader, HEADER_SIZE, MAX_FRAME_SIZE, MAX_PACKET_SIZE};
use cocoon_vmm::virtio::net::{Net, Tap, AVAIL_FEATURES, QUEUE_SIZE};
use cocoon_vmm::virtio::{VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MRG_RXBUF,
};
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

const LAYOUT: Layout = Layout {
    mem_size: 48 << 20,
    rings: &[0x1000, 0x4000],
    rx_bufs: 0x10_0000,
    rx_stride: 0x1_0000,
    tx_bufs: 0x120_0000,
    tx_stride: 0x1_1000,
};
/// Rx buffers from `post_rx` are shorter than 16 KiB each.
const RX_SEG_LEN_MODULUS: u64 = 0x4000;
const MAX_OPS: usize = 128;

const fn bit(feature: u32) -> u64 {
    1 << feature
}

// A frame being reassembled from merged rx buffers.
struct Partial {
    header: NetHeader,
    bytes: Vec<u8>,
    left: u16,
}

struct Guest {
    net: Net,
    acked: u64,
    queues: GuestQueues,
    host: UnixDatagram,
    // (header, frame) the host sent, not yet seen by the guest.
    sent: VecDeque<(NetHeader, Vec<u8>)>,
    partial: Option<Partial>,
    // Frames the host sent so far, for their numbers.
    numbered: u32,
}

impl Guest {
    fn new(acked: u64) -> Self {
        let (ours, host) = UnixDatagram::pair().expect("socket pair");
        host.set_nonblocking(true).expect("nonblocking");
        let tap = Tap::from_socket(OwnedFd::from(ours)).expect("stand-in tap");
        let mut net = Net::new(tap, MAC);
        net.set_acked_features(acked);
        let queues = GuestQueues::activate(&mut net, LAYOUT, QUEUE_SIZE);
        Self {
            net,
            acked,
            queues,
            host,
            sent: VecDeque::new(),
            partial: None,
            numbered: 0,
        }
    }

    fn mergeable(&self) -> bool {
        self.acked & bit(VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    // What reached the host: each a well-formed, clean packet.
    fn drain_host(&mut self) {
        let mut buf = vec![0u8; MAX_PACKET_SIZE + 64];
        while let Ok(n) = self.host.recv(&mut buf) {
            assert!(n >= HEADER_SIZE + 14, "a {n}-byte packet reached the tap");
            assert!(n <= MAX_PACKET_SIZE, "a {n}-byte packet reached the tap");
            let raw: &[u8; HEADER_SIZE] = buf[..HEADER_SIZE].try_into().expect("header");
            let h = NetHeader::parse(raw);
            trace!("tx: {n}-byte packet, {h:?}");
            let frame_len = n - HEADER_SIZE;
            assert_eq!(h.num_buffers, 0, "{h:?}");
            assert!(h.flags == 0 || h.flags == 1, "{h:?}");
            if h.flags == 1 {
                assert!(self.acked & bit(VIRTIO_NET_F_CSUM) != 0, "{h:?}");
                let end = usize::from(h.csum_start) + usize::from(h.csum_offset) + 2;
                assert!(end <= frame_len, "{h:?} for {frame_len} bytes");
            } else {
                assert_eq!((h.csum_start, h.csum_offset), (0, 0), "{h:?}");
            }
            match h.gso_type {
                0 => assert_eq!((h.gso_size, h.hdr_len), (0, 0), "{h:?}"),
                1 | 4 => {
                    let feature = if h.gso_type == 1 {
                        VIRTIO_NET_F_HOST_TSO4
                    } else {
                        VIRTIO_NET_F_HOST_TSO6
                    };
                    assert!(self.acked & bit(feature) != 0, "{h:?}");
                    assert!(h.flags == 1 && h.gso_size > 0, "{h:?}");
                    assert!(usize::from(h.hdr_len) <= frame_len, "{h:?}");
                }
                _ => panic!("gso_type {} reached the tap", h.gso_type),
            }
        }
    }

    // Checks and takes back the rx buffers the device returned.
    fn take_rx(&mut self) {
        while let Some(used) = self.queues.next_used_rx() {
            if let UsedRx::Written(bytes) = used {
                self.rx_bytes(bytes);
            }
        }
    }

    // One used rx buffer's bytes: a frame's start, or the rest of one.
    fn rx_bytes(&mut self, bytes: Vec<u8>) {
        if let Some(mut partial) = self.partial.take() {
            assert!(!bytes.is_empty(), "an empty buffer inside a merged frame");
            partial.bytes.extend(bytes);
            partial.left -= 1;
            if partial.left == 0 {
                self.frame_done(partial.header, partial.bytes);
            } else {
                self.partial = Some(partial);
            }
            return;
        }
        if bytes.is_empty() {
            // A buffer returned unused (only for a frame dropped whole).
            return;
        }
        assert!(
            bytes.len() >= HEADER_SIZE,
            "a {}-byte rx frame",
            bytes.len()
        );
        let raw: &[u8; HEADER_SIZE] = bytes[..HEADER_SIZE].try_into().expect("header");
        let header = NetHeader::parse(raw);
        if !self.mergeable() {
            assert_eq!(header.num_buffers, 1);
        }
        assert!(header.num_buffers >= 1, "{header:?}");
        let frame = bytes[HEADER_SIZE..].to_vec();
        if header.num_buffers == 1 {
            self.frame_done(header, frame);
        } else {
            self.partial = Some(Partial {
                header,
                bytes: frame,
                left: header.num_buffers - 1,
            });
        }
    }

    // A whole frame reached the guest: it must be the next one the host sent
    // that was not dropped.
    fn frame_done(&mut self, header: NetHeader, frame: Vec<u8>) {
        trace!("rx: {}-byte frame, {header:?}", frame.len());
        while let Some((sent_header, sent)) = self.sent.pop_front() {
            let mut expected = NetHeader {
                num_buffers: header.num_buffers,
                ..sent_header
            };
            if self.acked & bit(VIRTIO_NET_F_GUEST_CSUM) == 0 {
                expected.flags = 0;
            }
            // Frames are numbered (from 4 bytes on), so only a dropped one is
            // skipped here.
            if sent == frame {
                if frame.len() >= 4 {
                    assert_eq!(header, expected, "rx header");
                    return;
                }
                if header == expected {
                    return;
                }
            }
        }
        panic!(
            "the guest got a {}-byte frame the host never sent (or out of order)",
            frame.len()
        );
    }

    fn settle(&mut self) {
        self.queues.settle_tx(&|| {});
        self.queues.wait_rx_quiet();
        self.take_rx();
        self.drain_host();
        self.queues.check();
    }

    // A header from the input: raw, or near-valid fields.
    fn header(input: &mut Input<'_>, frame_len: usize) -> NetHeader {
        let mode = input.u8();
        if mode.is_multiple_of(4) {
            return NetHeader::parse(&input.bytes());
        }
        let flags = if mode & 4 != 0 { 1 } else { 0 };
        let gso_type = [0u8, 1, 4, 3, 5, 0x81][usize::from((mode >> 3) & 7) % 6];
        let csum_start = input.u16() % (frame_len as u16).max(1);
        let csum_offset = [6u16, 16, input.u16()][usize::from(mode >> 6) % 3];
        NetHeader {
            flags,
            gso_type,
            hdr_len: input.u16() % 200,
            gso_size: input.u16() % 9000,
            csum_start,
            csum_offset,
            num_buffers: if mode & 2 != 0 { input.u16() } else { 0 },
        }
    }

    fn send_tx(&mut self, input: &mut Input<'_>) {
        let frame_len = match input.u8() % 4 {
            0 => usize::from(input.u8()),
            1 => usize::from(input.u16()),
            2 => MAX_FRAME_SIZE - 8 + usize::from(input.u8() % 16),
            _ => 1514,
        };
        let header = Self::header(input, frame_len);
        let mut bytes = header.to_bytes().to_vec();
        let from_input = input.take(frame_len.min(64)).to_vec();
        bytes.extend_from_slice(&from_input);
        bytes.resize(HEADER_SIZE + frame_len, 0xa5);
        bytes.truncate(LAYOUT.tx_stride as usize);
        let shape = input.u8();
        self.queues.post_tx(&bytes, shape, input, &|| {});
    }

    fn host_send(&mut self, input: &mut Input<'_>) {
        let frame_len = match input.u8() % 4 {
            0 => usize::from(input.u8()),
            1 => usize::from(input.u16()),
            2 => MAX_FRAME_SIZE - 8 + usize::from(input.u8() % 16),
            _ => 1514,
        };
        let short = input.u8().is_multiple_of(16);
        let header = Self::header(input, frame_len);
        let seed = input.u8();
        let mut frame: Vec<u8> = (0..frame_len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect();
        // Numbered, so that equal frames cannot be mistaken for each other.
        self.numbered = self.numbered.wrapping_add(1);
        let number = self.numbered.to_le_bytes();
        let n = frame.len().min(number.len());
        frame[..n].copy_from_slice(&number[..n]);
        let mut packet = header.to_bytes().to_vec();
        packet.extend_from_slice(&frame);
        if short {
            packet.truncate(usize::from(seed) % (HEADER_SIZE + 1));
        }
        // At most MAX_OPS frames per input are tracked.
        if self.host.send(&packet).is_ok() && !short {
            self.sent.push_back((header, frame));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let pick = input.u8();
    let offered = [
        bit(VIRTIO_NET_F_MRG_RXBUF),
        bit(VIRTIO_NET_F_CSUM),
        bit(VIRTIO_NET_F_GUEST_CSUM),
        bit(VIRTIO_NET_F_HOST_TSO4),
        bit(VIRTIO_NET_F_HOST_TSO6),
        VIRTIO_RING_F_EVENT_IDX,
    ];
    let mut acked = VIRTIO_F_VERSION_1 | (AVAIL_FEATURES & !offered.iter().sum::<u64>());
    for (i, feature) in offered.iter().enumerate() {
        if pick & (1 << i) != 0 {
            acked |= feature;
        }
    }
    let mut guest = Guest::new(acked & AVAIL_FEATURES);
    let stock = usize::from(input.u8() % 64);
    guest.queues.post_rx_standard(stock, 4096);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        match op % 8 {
            0 | 1 => guest.send_tx(&mut input),
            2 => guest.queues.post_rx(&mut input, RX_SEG_LEN_MODULUS),
            3 => {
                let n = usize::from(input.u8() % 32);
                let len = if op & 8 != 0 { 1526 } else { 4096 };
                guest.queues.post_rx_standard(n, len);
            }
            4 | 5 => guest.host_send(&mut input),
            6 => guest.settle(),
            _ => {
                guest.take_rx();
                guest.queues.reap_tx();
                guest.drain_host();
                guest.queues.kick(usize::from(op >> 3) % 2);
            }
        }
        guest.take_rx();
        guest.queues.check();
    }
    guest.settle();
    // The device completes a frame's buffers together: none is left half-seen.
    assert!(
        guest.partial.is_none(),
        "a merged frame's header promised more buffers than came"
    );
    drop(guest.net);
});
