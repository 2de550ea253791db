//! A guest-side vsock driver for unit tests: it lays out the three split rings
//! in guest memory by hand, keeps the rx queue stocked with buffers, and sends
//! packets through descriptor chains of any shape.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::header::{parse_header, Op, VsockHeader, HEADER_SIZE, HOST_CID};
use super::{Vsock, QUEUE_SIZE};
use crate::virtio::interrupt::VirtioInterrupt;
use crate::virtio::test_driver::{SplitRing, TIMEOUT};
use crate::virtio::{GuestMemory, VirtioDevice};

pub(crate) const GUEST_CID: u64 = 3;
/// What the test guest advertises as its receive buffer unless a test says otherwise.
pub(crate) const GUEST_BUF_ALLOC: u32 = 1 << 20;

pub(crate) const WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub(crate) const NEXT: u16 = VRING_DESC_F_NEXT as u16;

const MEM_SIZE: usize = 16 << 20;
/// Guest RAM ends here; anything at or above it is outside guest memory.
pub(crate) const MEM_END: u64 = MEM_SIZE as u64;
const RX_RING: u64 = 0x1000;
const TX_RING: u64 = 0x4000;
const EVENT_RING: u64 = 0x7000;
const RX_BUFS: u64 = 0x10_0000;
const RX_STRIDE: u64 = 0x1100;
/// Payload room of each rx buffer, like Linux's 4 KiB rx buffers.
pub(crate) const RX_DATA_LEN: u32 = 4096;
// In split layout the payload part of a buffer starts here.
const RX_SPLIT_DATA_OFFSET: u64 = 64;
const TX_BUFS: u64 = 0x40_0000;
const TX_STRIDE: u64 = 0x11000;
const TX_SLOTS: u16 = 64;
const DESCS_PER_TX_SLOT: u16 = 4;

/// One packet as the guest received it.
#[derive(Debug)]
pub(crate) struct Packet {
    pub(crate) header: VsockHeader,
    pub(crate) data: Vec<u8>,
}

/// A guest with an active vsock device.
pub(crate) struct TestGuest {
    pub(crate) vsock: Vsock,
    pub(crate) mem: GuestMemory,
    pub(crate) interrupt: Arc<VirtioInterrupt>,
    pub(crate) uds: PathBuf,
    _dir: tempfile::TempDir,
    rx: SplitRing,
    tx: SplitRing,
    notify: Vec<EventFd>,
    // Rx buffers as two descriptors (header, payload) instead of one.
    rx_split: bool,
    rx_seen: u16,
    tx_pushed: u16,
    /// Rx buffers the device returned empty because it could not use them.
    pub(crate) rx_empty: usize,
}

/// A header from the guest to the host with the test guest's default credit.
pub(crate) fn hdr(op: Op, guest_port: u32, host_port: u32) -> VsockHeader {
    VsockHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        len: 0,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF_ALLOC,
        fwd_cnt: 0,
    }
}

fn queue(mem: &GuestMemory, ring: &SplitRing) -> Queue {
    let queue = ring.queue(QUEUE_SIZE);
    assert!(queue.is_valid(mem));
    queue
}

impl TestGuest {
    pub(crate) fn new() -> Self {
        Self::with(|_| {}, false)
    }

    /// A guest whose device was adjusted by `configure` before activation and
    /// whose rx buffers are split in two descriptors if `rx_split`.
    pub(crate) fn with(configure: impl FnOnce(&mut Vsock), rx_split: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("v.sock");
        let mut vsock = Vsock::new(GUEST_CID, &uds).expect("vsock");
        configure(&mut vsock);
        vsock.threads().start(None).expect("device threads");
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
        let irq = EventFd::new(EFD_NONBLOCK).expect("irq");
        let interrupt = Arc::new(VirtioInterrupt::new(irq));
        let rx = SplitRing::new(RX_RING, QUEUE_SIZE);
        let tx = SplitRing::new(TX_RING, QUEUE_SIZE);
        let event = SplitRing::new(EVENT_RING, QUEUE_SIZE);
        assert!(rx.end() <= TX_RING && tx.end() <= EVENT_RING && event.end() <= RX_BUFS);
        let queues = vec![queue(&mem, &rx), queue(&mem, &tx), queue(&mem, &event)];
        let events: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("queue event"))
            .collect();
        let notify = events
            .iter()
            .map(|e| e.try_clone().expect("queue event"))
            .collect();
        vsock
            .activate(mem.clone(), Arc::clone(&interrupt), queues, events)
            .expect("activate");
        let mut guest = Self {
            vsock,
            mem,
            interrupt,
            uds,
            _dir: dir,
            rx,
            tx,
            notify,
            rx_split,
            rx_seen: 0,
            tx_pushed: 0,
            rx_empty: 0,
        };
        guest.stock_rx();
        guest
    }

    fn rx_buffers(&self) -> u16 {
        if self.rx_split {
            QUEUE_SIZE / 2
        } else {
            QUEUE_SIZE
        }
    }

    fn stock_rx(&mut self) {
        for buffer in 0..self.rx_buffers() {
            let head = self.set_rx_buffer(buffer);
            self.rx.push(&self.mem, head);
        }
        self.notify(0);
    }

    // Writes the descriptors of rx buffer `buffer`; returns its head.
    fn set_rx_buffer(&self, buffer: u16) -> u16 {
        let base = RX_BUFS + u64::from(buffer) * RX_STRIDE;
        if self.rx_split {
            let head = 2 * buffer;
            let header_len = HEADER_SIZE as u32;
            self.rx
                .set_desc(&self.mem, head, base, header_len, WRITE | NEXT, head + 1);
            let data = base + RX_SPLIT_DATA_OFFSET;
            self.rx
                .set_desc(&self.mem, head + 1, data, RX_DATA_LEN, WRITE, 0);
            head
        } else {
            let len = HEADER_SIZE as u32 + RX_DATA_LEN;
            self.rx.set_desc(&self.mem, buffer, base, len, WRITE, 0);
            buffer
        }
    }

    /// Replaces the descriptor of single-descriptor rx buffer `buffer` (which
    /// the device has not used yet) with a bogus one.
    pub(crate) fn spoil_rx_buffer(&self, buffer: u16, addr: u64, len: u32, flags: u16) {
        assert!(!self.rx_split);
        self.rx.set_desc(&self.mem, buffer, addr, len, flags, 0);
    }

    /// Kicks queue `index` (0 rx, 1 tx, 2 event).
    pub(crate) fn notify(&self, index: usize) {
        self.notify[index].write(1).expect("notify");
    }

    /// Takes the next packet the device put on the rx queue, if any, and gives
    /// its buffer back.
    pub(crate) fn try_recv(&mut self) -> Option<Packet> {
        if self.rx.used_idx(&self.mem) == self.rx_seen {
            return None;
        }
        let (id, len) = self.rx.used_elem(&self.mem, self.rx_seen);
        self.rx_seen = self.rx_seen.wrapping_add(1);
        let head = u16::try_from(id).expect("used id");
        let len = len as usize;
        if len == 0 {
            // A buffer the device could not use: repair and recycle it.
            self.rx_empty += 1;
            let buffer = if self.rx_split { head / 2 } else { head };
            self.set_rx_buffer(buffer);
            self.rx.push(&self.mem, head);
            self.notify(0);
            return self.try_recv();
        }
        assert!(len >= HEADER_SIZE, "device returned a {len}-byte rx packet");
        let (hdr_addr, data_addr, buffer) = if self.rx_split {
            let base = RX_BUFS + u64::from(head / 2) * RX_STRIDE;
            (base, base + RX_SPLIT_DATA_OFFSET, head / 2)
        } else {
            let base = RX_BUFS + u64::from(head) * RX_STRIDE;
            (base, base + HEADER_SIZE as u64, head)
        };
        assert!(buffer < self.rx_buffers());
        let mut raw = [0u8; HEADER_SIZE];
        self.mem
            .read_slice(&mut raw, GuestAddress(hdr_addr))
            .expect("rx header");
        let header = parse_header(&raw).expect("device sent a valid header");
        assert_eq!(header.len as usize, len - HEADER_SIZE, "used length");
        let mut data = vec![0u8; header.len as usize];
        self.mem
            .read_slice(&mut data, GuestAddress(data_addr))
            .expect("rx data");
        assert_eq!(header.src_cid, HOST_CID);
        assert_eq!(header.dst_cid, GUEST_CID);
        self.rx.push(&self.mem, head);
        self.notify(0);
        Some(Packet { header, data })
    }

    /// Waits up to `timeout` for the next packet.
    pub(crate) fn recv_within(&mut self, timeout: Duration) -> Option<Packet> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(packet) = self.try_recv() {
                return Some(packet);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The next packet; fails the test if none comes within [`TIMEOUT`].
    pub(crate) fn recv(&mut self) -> Packet {
        self.recv_within(TIMEOUT)
            .expect("no packet from the device")
    }

    /// Waits for the next packet and checks its operation. Unsolicited credit
    /// updates (which the device sends whenever it forwarded enough) are
    /// skipped unless that is what the caller waits for.
    pub(crate) fn expect(&mut self, op: Op) -> Packet {
        loop {
            let packet = self.recv();
            if packet.header.op == Op::CreditUpdate && op != Op::CreditUpdate {
                continue;
            }
            assert_eq!(
                packet.header.op, op,
                "unexpected packet {:?}",
                packet.header
            );
            return packet;
        }
    }

    /// Reserves the next tx slot: its first descriptor index and its buffer.
    /// Waits while all slots are still owned by the device.
    pub(crate) fn tx_slot(&mut self) -> (u16, u64) {
        let deadline = Instant::now() + TIMEOUT;
        while self.tx_pushed.wrapping_sub(self.tx.used_idx(&self.mem)) >= TX_SLOTS {
            assert!(
                Instant::now() < deadline,
                "device stopped taking tx packets"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let slot = self.tx_pushed % TX_SLOTS;
        (
            slot * DESCS_PER_TX_SLOT,
            TX_BUFS + u64::from(slot) * TX_STRIDE,
        )
    }

    /// Offers a chain of raw descriptors `(addr, len, flags)` (NEXT is added
    /// as needed) starting at descriptor `first` from [`tx_slot`](Self::tx_slot).
    pub(crate) fn push_tx(&mut self, first: u16, descs: &[(u64, u32, u16)]) {
        assert!(!descs.is_empty() && descs.len() <= usize::from(DESCS_PER_TX_SLOT));
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = first + i as u16;
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | NEXT };
            self.tx
                .set_desc(&self.mem, index, addr, len, flags, index + 1);
        }
        self.tx.push(&self.mem, first);
        self.tx_pushed = self.tx_pushed.wrapping_add(1);
        self.notify(1);
    }

    /// Sends `bytes` as one packet, cut into descriptors at `cuts` (offsets).
    pub(crate) fn send_bytes(&mut self, bytes: &[u8], cuts: &[usize]) {
        let (first, buf) = self.tx_slot();
        self.mem
            .write_slice(bytes, GuestAddress(buf))
            .expect("tx buffer");
        let mut descs = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            descs.push((buf + start as u64, (cut - start) as u32, 0));
            start = cut;
        }
        self.push_tx(first, &descs);
    }

    /// Sends a packet the way Linux does: header and payload in separate descriptors.
    pub(crate) fn send(&mut self, header: &VsockHeader, data: &[u8]) {
        let header = VsockHeader {
            len: data.len() as u32,
            ..*header
        };
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(data);
        let cuts: &[usize] = if data.is_empty() { &[] } else { &[HEADER_SIZE] };
        self.send_bytes(&bytes, cuts);
    }

    /// Rx packets the device completed that the guest has not taken yet.
    pub(crate) fn rx_pending(&self) -> u16 {
        self.rx.used_idx(&self.mem).wrapping_sub(self.rx_seen)
    }

    /// Publishes a tx avail index the driver could never legitimately have.
    pub(crate) fn corrupt_tx_avail_idx(&self) {
        self.tx
            .set_avail_idx(&self.mem, self.tx_pushed.wrapping_add(QUEUE_SIZE + 1));
        self.notify(1);
    }

    /// Waits until the device has consumed every tx packet sent so far.
    pub(crate) fn wait_tx_done(&self) {
        assert!(
            self.tx.wait_used(&self.mem, self.tx_pushed),
            "device did not consume tx packets"
        );
    }

    /// Waits until the device's connection table has `n` entries.
    pub(crate) fn wait_connections(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.vsock.connection_count() != n {
            assert!(
                Instant::now() < deadline,
                "{} connections, expected {n}",
                self.vsock.connection_count()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A host client connected through the device socket that asked for `port`.
    pub(crate) fn host_connect(&self, port: u32) -> UnixStream {
        let mut stream = UnixStream::connect(&self.uds).expect("connect to device socket");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .expect("CONNECT");
        stream
    }
}

/// Reads one `\n`-terminated line (without the newline).
pub(crate) fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = stream.read(&mut byte).expect("read line");
        assert_eq!(n, 1, "EOF in the middle of a line: {line:?}");
        if byte[0] == b'\n' {
            return String::from_utf8(line).expect("utf-8 line");
        }
        line.push(byte[0]);
    }
}

/// Deterministic test data: `len` bytes derived from `seed`.
pub(crate) fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

/// Checks that the peer closed `stream`: EOF, or a reset if it closed with
/// bytes of ours still unread.
pub(crate) fn assert_closed(stream: &mut UnixStream) {
    let mut data = Vec::new();
    match stream.read_to_end(&mut data) {
        Ok(_) => assert_eq!(data, b"", "data before EOF"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// Reads until EOF, failing on a timeout.
pub(crate) fn read_to_eof(stream: &mut UnixStream) -> Vec<u8> {
    let mut data = Vec::new();
    stream.read_to_end(&mut data).expect("read to EOF");
    data
}
