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

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cocoon_vmm::virtio::interrupt::VirtioInterrupt;
use cocoon_vmm::virtio::net::header::{NetHeader, HEADER_SIZE, MAX_FRAME_SIZE, MAX_PACKET_SIZE};
use cocoon_vmm::virtio::net::{Net, Tap, AVAIL_FEATURES, QUEUE_SIZE};
use cocoon_vmm::virtio::{GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

const MEM_SIZE: u64 = 48 << 20;
const RX_RING: u64 = 0x1000;
const TX_RING: u64 = 0x4000;
/// Each rx chain gets this much room at RX_BUFS + head * RX_STRIDE.
const RX_BUFS: u64 = 0x10_0000;
const RX_STRIDE: u64 = 0x1_0000;
/// Each tx chain's bytes go to TX_BUFS + head * TX_STRIDE.
const TX_BUFS: u64 = 0x120_0000;
const TX_STRIDE: u64 = 0x1_1000;
const MAX_SEGS: usize = 8;
const MAX_OPS: usize = 128;
const TX_TIMEOUT: Duration = Duration::from_secs(5);

const fn bit(feature: u32) -> u64 {
    1 << feature
}

// Set COCOON_FUZZ_TRACE=1 to see the frames that come out (seed work).
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("COCOON_FUZZ_TRACE").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

// The fuzz input, read front to back; zeros once it is used up.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let (now, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        now
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// Descriptor indices of one ring that no posted chain uses.
struct FreeList(Vec<u16>);

impl FreeList {
    fn new() -> Self {
        Self((0..QUEUE_SIZE).rev().collect())
    }
    fn take(&mut self, n: usize) -> Option<Vec<u16>> {
        (self.0.len() >= n).then(|| self.0.split_off(self.0.len() - n))
    }
}

// An rx chain the device owns.
struct RxChain {
    descs: Vec<u16>,
    // (address, length) of its writable buffers in order; None if the chain
    // is unusable (the device must return it empty).
    bufs: Option<Vec<(u64, u64)>>,
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
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    kicks: Vec<EventFd>,
    rx: cocoon_vmm::virtio::test_driver::SplitRing,
    tx: cocoon_vmm::virtio::test_driver::SplitRing,
    rx_free: FreeList,
    tx_free: FreeList,
    rx_posted: HashMap<u16, RxChain>,
    tx_posted: HashMap<u16, Vec<u16>>,
    rx_seen: u16,
    tx_seen: u16,
    host: UnixDatagram,
    // (header, frame) the host sent, not yet seen by the guest.
    sent: VecDeque<(NetHeader, Vec<u8>)>,
    partial: Option<Partial>,
    // Frames the host sent so far, for their numbers.
    numbered: u32,
}

impl Guest {
    fn new(acked: u64) -> Self {
        use cocoon_vmm::virtio::test_driver::SplitRing;
        let (ours, host) = UnixDatagram::pair().expect("socket pair");
        host.set_nonblocking(true).expect("nonblocking");
        let tap = Tap::from_socket(OwnedFd::from(ours)).expect("stand-in tap");
        let mut net = Net::new(tap, MAC);
        // As the VM does before the guest runs (without seccomp filters).
        net.threads().start(None).expect("device threads");
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .expect("guest memory");
        let irq = EventFd::new(EFD_NONBLOCK).expect("irq");
        let interrupt = Arc::new(VirtioInterrupt::new(irq));
        let rx = SplitRing::new(RX_RING, QUEUE_SIZE);
        let tx = SplitRing::new(TX_RING, QUEUE_SIZE);
        let queues = [&rx, &tx].iter().map(|ring| ring.queue(QUEUE_SIZE)).collect();
        let events: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("queue event"))
            .collect();
        let kicks = events
            .iter()
            .map(|e| e.try_clone().expect("queue event"))
            .collect();
        net.set_acked_features(acked);
        net.activate(mem.clone(), Arc::clone(&interrupt), queues, events)
            .expect("activate");
        Self {
            net,
            acked,
            mem,
            interrupt,
            kicks,
            rx,
            tx,
            rx_free: FreeList::new(),
            tx_free: FreeList::new(),
            rx_posted: HashMap::new(),
            tx_posted: HashMap::new(),
            rx_seen: 0,
            tx_seen: 0,
            host,
            sent: VecDeque::new(),
            partial: None,
            numbered: 0,
        }
    }

    fn kick(&self, queue: usize) {
        self.kicks[queue].write(1).expect("kick");
    }

    fn check(&self) {
        assert!(!self.interrupt.needs_reset(), "the device needs a reset");
    }

    fn mergeable(&self) -> bool {
        self.acked & bit(VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    fn write_chain(
        ring: &cocoon_vmm::virtio::test_driver::SplitRing,
        mem: &GuestMemory,
        indices: &[u16],
        descs: &[(u64, u32, u16)],
        loop_back: bool,
    ) {
        for (i, (&index, &(addr, len, flags))) in indices.iter().zip(descs).enumerate() {
            let (flags, next) = match indices.get(i + 1) {
                Some(&next) => (flags | NEXT, next),
                None if loop_back => (flags | NEXT, indices[0]),
                None => (flags, 0),
            };
            ring.set_desc(mem, index, addr, len, flags, next);
        }
    }

    // Takes back the tx chains the device completed.
    fn reap_tx(&mut self) {
        let used = self.tx.used_idx(&self.mem);
        while self.tx_seen != used {
            let (id, len) = self.tx.used_elem(&self.mem, self.tx_seen);
            self.tx_seen = self.tx_seen.wrapping_add(1);
            let head = u16::try_from(id).expect("tx used id out of range");
            let descs = self
                .tx_posted
                .remove(&head)
                .unwrap_or_else(|| panic!("tx used entry {head} for a chain we do not have out"));
            assert_eq!(len, 0, "the device wrote into a tx chain");
            self.tx_free.0.extend(descs);
        }
    }

    fn settle_tx(&mut self) {
        let deadline = Instant::now() + TX_TIMEOUT;
        loop {
            self.reap_tx();
            self.check();
            if self.tx_posted.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "the device stopped taking tx frames");
            std::thread::yield_now();
        }
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
        let used = self.rx.used_idx(&self.mem);
        while self.rx_seen != used {
            let (id, len) = self.rx.used_elem(&self.mem, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let head = u16::try_from(id).expect("rx used id out of range");
            let chain = self
                .rx_posted
                .remove(&head)
                .unwrap_or_else(|| panic!("rx used entry {head} for a buffer we do not have out"));
            self.rx_free.0.extend(&chain.descs);
            let Some(bufs) = chain.bufs else {
                assert_eq!(len, 0, "the device used an unusable rx buffer");
                continue;
            };
            let room: u64 = bufs.iter().map(|b| b.1).sum();
            assert!(u64::from(len) <= room, "used length {len} > room {room}");
            let mut bytes = Vec::with_capacity(len as usize);
            let mut left = u64::from(len);
            for (addr, blen) in bufs {
                let n = blen.min(left);
                let mut part = vec![0u8; n as usize];
                self.mem
                    .read_slice(&mut part, GuestAddress(addr))
                    .expect("rx bytes");
                bytes.extend(part);
                left -= n;
            }
            self.rx_bytes(bytes);
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
        assert!(bytes.len() >= HEADER_SIZE, "a {}-byte rx frame", bytes.len());
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
        panic!("the guest got a {}-byte frame the host never sent (or out of order)", frame.len());
    }

    fn settle(&mut self) {
        self.settle_tx();
        let start = Instant::now();
        let mut last = (Instant::now(), self.rx.used_idx(&self.mem));
        while start.elapsed() < Duration::from_millis(50) {
            let used = self.rx.used_idx(&self.mem);
            if used != last.1 {
                last = (Instant::now(), used);
            } else if last.0.elapsed() > Duration::from_millis(2) {
                break;
            }
            std::thread::yield_now();
        }
        self.take_rx();
        self.drain_host();
        self.check();
    }

    fn post_rx(&mut self, input: &mut Input<'_>) {
        let nsegs = 1 + usize::from(input.u8()) % MAX_SEGS;
        let variant = input.u8();
        let Some(indices) = self.rx_free.take(nsegs) else {
            return;
        };
        let head = indices[0];
        let base = RX_BUFS + u64::from(head) * RX_STRIDE;
        let mut at = base;
        let mut descs = Vec::with_capacity(nsegs);
        for _ in 0..nsegs {
            let len = u64::from(input.u16() % 0x4000).min(base + RX_STRIDE - at);
            descs.push((at, len as u32, WRITE));
            at += len;
        }
        let mut usable = true;
        let spoil = usize::from(variant >> 4) % nsegs;
        match variant % 4 {
            1 => {
                descs[spoil] = (descs[spoil].0, descs[spoil].1.max(1), 0);
                usable = false;
            }
            2 => {
                descs[spoil] = (MEM_SIZE - 16, 64, WRITE);
                usable = false;
            }
            _ => {}
        }
        let bufs: Vec<(u64, u64)> = descs
            .iter()
            .filter(|d| d.1 > 0)
            .map(|d| (d.0, u64::from(d.1)))
            .collect();
        // One too small for a header counts as usable: the device may
        // return it empty, which take_rx accepts outside a merged frame.
        Self::write_chain(&self.rx, &self.mem, &indices, &descs, false);
        self.rx_posted.insert(
            head,
            RxChain {
                descs: indices,
                bufs: usable.then_some(bufs),
            },
        );
        self.rx.push(&self.mem, head);
        self.kick(0);
    }

    // `n` rx buffers as Linux posts them: one buffer each.
    fn post_rx_standard(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            let Some(indices) = self.rx_free.take(1) else {
                break;
            };
            let head = indices[0];
            let base = RX_BUFS + u64::from(head) * RX_STRIDE;
            self.rx.set_desc(&self.mem, head, base, len, WRITE, 0);
            self.rx_posted.insert(
                head,
                RxChain {
                    descs: indices,
                    bufs: Some(vec![(base, len.into())]),
                },
            );
            self.rx.push(&self.mem, head);
        }
        self.kick(0);
    }

    // A header from the input: raw, or near-valid fields.
    fn header(input: &mut Input<'_>, frame_len: usize) -> NetHeader {
        let mode = input.u8();
        if mode % 4 == 0 {
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
        bytes.truncate(TX_STRIDE as usize);
        let shape = input.u8();
        self.post_tx(&bytes, shape, input);
    }

    fn post_tx(&mut self, bytes: &[u8], shape: u8, input: &mut Input<'_>) {
        let ncuts = usize::from(shape & 7);
        let mut cuts: Vec<usize> = (0..ncuts)
            .map(|_| usize::from(input.u16()) % (bytes.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.push(bytes.len());
        let mut descs = Vec::with_capacity(cuts.len() + 1);
        let mut extra = None;
        match (shape >> 3) % 8 {
            1 => descs.push((TX_BUFS, 0, 0)),
            2 => extra = Some((TX_BUFS, 16, WRITE)),
            3 => extra = Some((MEM_SIZE + 0x1000, 64, 0)),
            4 => extra = Some((MEM_SIZE - 8, 64, 0)),
            5 => extra = Some((TX_BUFS, u32::MAX, 0)),
            _ => {}
        }
        let nmax = cuts.len() + 2;
        self.reap_tx();
        if self.tx_free.0.len() < nmax {
            self.settle_tx();
        }
        let Some(indices) = self.tx_free.take(nmax) else {
            return;
        };
        let head = indices[0];
        let buf = TX_BUFS + u64::from(head) * TX_STRIDE;
        self.mem
            .write_slice(bytes, GuestAddress(buf))
            .expect("tx bytes");
        if let Some(d) = descs.first_mut() {
            d.0 = buf;
        }
        let mut start = 0;
        for &cut in &cuts {
            descs.push((buf + start as u64, (cut - start) as u32, 0));
            start = cut;
        }
        if let Some(extra) = extra {
            let at = usize::from(shape >> 6) % descs.len();
            descs.insert(at, extra);
        }
        let loop_back = (shape >> 3) % 8 == 6;
        let (used, spare) = indices.split_at(descs.len());
        self.tx_free.0.extend(spare);
        Self::write_chain(&self.tx, &self.mem, used, &descs, loop_back);
        self.tx_posted.insert(head, used.to_vec());
        self.tx.push(&self.mem, head);
        self.kick(1);
    }

    fn host_send(&mut self, input: &mut Input<'_>) {
        let frame_len = match input.u8() % 4 {
            0 => usize::from(input.u8()),
            1 => usize::from(input.u16()),
            2 => MAX_FRAME_SIZE - 8 + usize::from(input.u8() % 16),
            _ => 1514,
        };
        let short = input.u8() % 16 == 0;
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
    guest.post_rx_standard(stock, 4096);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        match op % 8 {
            0 | 1 => guest.send_tx(&mut input),
            2 => guest.post_rx(&mut input),
            3 => {
                let n = usize::from(input.u8() % 32);
                let len = if op & 8 != 0 { 1526 } else { 4096 };
                guest.post_rx_standard(n, len);
            }
            4 | 5 => guest.host_send(&mut input),
            6 => guest.settle(),
            _ => {
                guest.take_rx();
                guest.reap_tx();
                guest.drain_host();
                guest.kick(usize::from(op >> 3) % 2);
            }
        }
        guest.take_rx();
        guest.check();
    }
    guest.settle();
    // The device completes a frame's buffers together: none is left half-seen.
    assert!(
        guest.partial.is_none(),
        "a merged frame's header promised more buffers than came"
    );
    drop(guest.net);
});
