//! virtio-vsock through its queues, the fuzzer being the guest: a `Vsock`
//! device with a real host Unix socket in a temp dir (and host services
//! listening on guest-reachable ports 1024 and 1025) is activated on real
//! split rings in guest memory (`cocoon_vmm::virtio::test_driver::SplitRing`),
//! and the input is a sequence of guest and host actions:
//!
//! - post tx packets with any header (op, CIDs, ports, len, buf_alloc,
//!   fwd_cnt, flags, type), payloads cut over up to 8 descriptors, with
//!   zero-length, device-writable, out-of-memory or looping descriptors;
//! - post rx buffers of any shape (up to 8 contiguous descriptors, zero-length
//!   ones included; or with a device-readable or out-of-memory descriptor);
//! - take what the device returned, kick queues, answer the last packets
//!   (RESPONSE to a host REQUEST, data, credit, SHUTDOWN, RST);
//! - host side: connect with `CONNECT <port>`, accept the device's
//!   connections to the services, write, read, half-close and close.
//!
//! Asserts: nothing panics (device worker and muxer included); the muxer
//! stays within its limits after every step (feature `fuzzing`: connections
//! <= the device's limit, lowered to 8 here; handshakes, pending RSTs,
//! guest bytes buffered per connection <= BUF_ALLOC); every tx chain is
//! completed within 5 s (no hang); every rx buffer the device returns is one
//! we posted and still owned, no longer than its writable room, empty if it
//! was unusable, and otherwise holds one well-formed packet from the host to
//! this guest whose length matches the used length.
//!
//! Each input gets a fresh device and memory; the input is a byte stream
//! read by `Input` (zeros once it runs out), one action per opcode byte.
#![no_main]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cocoon_vmm::virtio::interrupt::VirtioInterrupt;
use cocoon_vmm::virtio::test_driver::SplitRing;
use cocoon_vmm::virtio::vsock::header::{HEADER_SIZE, HOST_CID, MAX_PKT_LEN};
use cocoon_vmm::virtio::vsock::{parse_header, Vsock, QUEUE_SIZE};
use cocoon_vmm::virtio::{GuestMemory, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const GUEST_CID: u64 = 3;
const MAX_CONNECTIONS: usize = 8;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;

const MEM_SIZE: u64 = 32 << 20;
const RX_RING: u64 = 0x1000;
const TX_RING: u64 = 0x4000;
const EVENT_RING: u64 = 0x7000;
/// Each rx chain gets this much room at RX_BUFS + head * RX_STRIDE.
const RX_BUFS: u64 = 0x10_0000;
const RX_STRIDE: u64 = 0x2000;
/// Each tx chain's bytes go to TX_BUFS + head * TX_STRIDE.
const TX_BUFS: u64 = 0x40_0000;
const TX_STRIDE: u64 = 0x1_1000;
const MAX_SEGS: usize = 8;

/// Ports with a host service behind `<uds>_<port>`; others have none.
const PORTS: [u32; 4] = [1024, 1025, 1026, 80];
const SERVICES: [u32; 2] = [1024, 1025];
const MAX_HOST_STREAMS: usize = 16;
const MAX_OPS: usize = 256;
const TX_TIMEOUT: Duration = Duration::from_secs(5);

// Set COCOON_FUZZ_TRACE=1 to see what the guest sends and gets (seed work).
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
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
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
    // Writable bytes, contiguous from RX_BUFS + head * RX_STRIDE; None if the
    // chain is unusable (the device must return it empty).
    room: Option<u64>,
}

struct Guest {
    vsock: Vsock,
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    kicks: Vec<EventFd>,
    rx: SplitRing,
    tx: SplitRing,
    rx_free: FreeList,
    tx_free: FreeList,
    rx_posted: HashMap<u16, RxChain>,
    tx_posted: HashMap<u16, Vec<u16>>,
    rx_seen: u16,
    tx_seen: u16,
    // (our port, host port) of recent packets from the host, newest last.
    peers: Vec<(u32, u32)>,
    // Bytes of host data received per connection, for honest fwd_cnt.
    received: HashMap<(u32, u32), u32>,
    uds: std::path::PathBuf,
    services: Vec<UnixListener>,
    host: Vec<UnixStream>,
    _dir: tempfile::TempDir,
}

impl Guest {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let uds = dir.path().join("v.sock");
        let mut vsock = Vsock::new(GUEST_CID, &uds).expect("vsock");
        vsock.set_max_connections(MAX_CONNECTIONS);
        // As the VM does before the guest runs (without seccomp filters).
        vsock.threads().start(None).expect("device threads");
        let services = SERVICES
            .iter()
            .map(|port| {
                let listener = UnixListener::bind(service_path(&uds, *port)).expect("service");
                listener.set_nonblocking(true).expect("nonblocking");
                listener
            })
            .collect();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .expect("guest memory");
        let irq = EventFd::new(EFD_NONBLOCK).expect("irq");
        let interrupt = Arc::new(VirtioInterrupt::new(irq));
        let rx = SplitRing::new(RX_RING, QUEUE_SIZE);
        let tx = SplitRing::new(TX_RING, QUEUE_SIZE);
        let event = SplitRing::new(EVENT_RING, QUEUE_SIZE);
        let queues = [&rx, &tx, &event]
            .iter()
            .map(|ring| ring.queue(QUEUE_SIZE))
            .collect();
        let events: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("queue event"))
            .collect();
        let kicks = events
            .iter()
            .map(|e| e.try_clone().expect("queue event"))
            .collect();
        vsock
            .activate(mem.clone(), Arc::clone(&interrupt), queues, events)
            .expect("activate");
        Self {
            vsock,
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
            peers: Vec::new(),
            received: HashMap::new(),
            uds,
            services,
            host: Vec::new(),
            _dir: dir,
        }
    }

    fn kick(&self, queue: usize) {
        self.kicks[queue].write(1).expect("kick");
    }

    fn check(&self) {
        assert!(!self.interrupt.needs_reset(), "the device needs a reset");
        let n = self.vsock.connection_count();
        assert!(n <= MAX_CONNECTIONS, "{n} connections");
    }

    // Writes `descs` as a chain through the descriptor indices `indices`.
    fn write_chain(
        ring: &SplitRing,
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

    // Waits until the device completed every tx chain.
    fn settle_tx(&mut self) {
        let deadline = Instant::now() + TX_TIMEOUT;
        loop {
            self.reap_tx();
            self.check();
            if self.tx_posted.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the device stopped taking tx packets"
            );
            std::thread::yield_now();
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
            let Some(room) = chain.room else {
                assert_eq!(len, 0, "the device used an unusable rx buffer");
                continue;
            };
            assert!(u64::from(len) <= room, "used length {len} > room {room}");
            if len == 0 {
                continue;
            }
            let len = len as usize;
            assert!(len >= HEADER_SIZE, "a {len}-byte rx packet");
            let mut raw = [0u8; HEADER_SIZE];
            let base = RX_BUFS + u64::from(head) * RX_STRIDE;
            self.mem
                .read_slice(&mut raw, GuestAddress(base))
                .expect("rx header");
            let header = parse_header(&raw).expect("the device sent a malformed header");
            assert_eq!((header.src_cid, header.dst_cid), (HOST_CID, GUEST_CID));
            assert_eq!(
                header.len as usize,
                len - HEADER_SIZE,
                "header len vs used len"
            );
            assert!(header.len <= MAX_PKT_LEN);
            trace!("rx: {header:?}");
            let key = (header.dst_port, header.src_port);
            let got = self.received.entry(key).or_default();
            *got = got.wrapping_add(header.len);
            self.peers.retain(|k| *k != key);
            if self.peers.len() == 8 {
                self.peers.remove(0);
            }
            self.peers.push(key);
        }
    }

    // Waits for the device to go quiet: tx done, no rx for 2 ms (at most 50 ms).
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
            let len = u64::from(input.u16()).min(base + RX_STRIDE - at);
            descs.push((at, len as u32, WRITE));
            at += len;
        }
        let mut room = Some(at - base);
        // Spoil one descriptor (with a length, or the device may skip it).
        let spoil = usize::from(variant >> 4) % nsegs;
        match variant % 4 {
            1 => {
                descs[spoil] = (descs[spoil].0, descs[spoil].1.max(1), 0);
                room = None;
            }
            2 => {
                descs[spoil] = (MEM_SIZE - 16, 64, WRITE);
                room = None;
            }
            _ => {}
        }
        Self::write_chain(&self.rx, &self.mem, &indices, &descs, false);
        self.rx_posted.insert(
            head,
            RxChain {
                descs: indices,
                room,
            },
        );
        self.rx.push(&self.mem, head);
        self.kick(0);
    }

    // `n` rx buffers as Linux posts them: one 4 KiB + header descriptor.
    fn post_rx_standard(&mut self, n: usize) {
        for _ in 0..n {
            let Some(indices) = self.rx_free.take(1) else {
                return;
            };
            let head = indices[0];
            let base = RX_BUFS + u64::from(head) * RX_STRIDE;
            let len = HEADER_SIZE as u32 + 4096;
            self.rx.set_desc(&self.mem, head, base, len, WRITE, 0);
            self.rx_posted.insert(
                head,
                RxChain {
                    descs: indices,
                    room: Some(len.into()),
                },
            );
            self.rx.push(&self.mem, head);
        }
        self.kick(0);
    }

    // A port pair (guest port, host port) picked by the input.
    fn ports(&mut self, input: &mut Input<'_>) -> (u32, u32) {
        let sel = input.u8();
        match sel % 8 {
            s @ 0..=3 => (2000 + u32::from(sel >> 3), PORTS[usize::from(s)]),
            4 | 5 if !self.peers.is_empty() => {
                let peers = &self.peers;
                peers[peers.len() - 1 - usize::from(sel >> 3) % peers.len()]
            }
            _ => (input.u32(), input.u32()),
        }
    }

    fn send_tx(&mut self, input: &mut Input<'_>) {
        let mode = input.u8();
        let op = match input.u8() % 9 {
            0 => input.u16(),
            // REQUEST .. CREDIT_REQUEST; RW twice as likely.
            8 => 5,
            op => u16::from(op),
        };
        let (src_port, dst_port) = self.ports(input);
        let (src_cid, dst_cid) = if mode & 1 == 0 {
            (GUEST_CID, HOST_CID)
        } else {
            (input.u64(), input.u64())
        };
        let payload_len = usize::from(input.u16());
        // Big payloads without big inputs: filler only.
        let from_input = if mode & 32 == 0 { payload_len } else { 0 };
        let mut payload = input.take(from_input).to_vec();
        payload.resize(payload_len, 0xa5);
        let len = if mode & 2 == 0 {
            payload_len as u32
        } else {
            input.u32()
        };
        let received = *self.received.get(&(src_port, dst_port)).unwrap_or(&0);
        let (buf_alloc, fwd_cnt) = if mode & 4 == 0 {
            (256 * 1024, received)
        } else {
            (input.u32(), input.u32())
        };
        let flags = if mode & 8 == 0 {
            u32::from(input.u8() % 4)
        } else {
            input.u32()
        };
        let kind: u16 = if mode & 16 == 0 { 1 } else { input.u16() };
        let mut bytes = Vec::with_capacity(HEADER_SIZE + payload.len());
        bytes.extend_from_slice(&src_cid.to_le_bytes());
        bytes.extend_from_slice(&dst_cid.to_le_bytes());
        bytes.extend_from_slice(&src_port.to_le_bytes());
        bytes.extend_from_slice(&dst_port.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&kind.to_le_bytes());
        bytes.extend_from_slice(&op.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&buf_alloc.to_le_bytes());
        bytes.extend_from_slice(&fwd_cnt.to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes.truncate(TX_STRIDE as usize);
        let shape = input.u8();
        trace!("tx: op {op} {src_cid}:{src_port} -> {dst_cid}:{dst_port} len {len} ({payload_len}) shape {shape:#x}");
        self.post_tx(&bytes, shape, input);
    }

    // Posts `bytes` as one tx chain cut at input-chosen points; `shape` adds
    // hostile descriptors.
    fn post_tx(&mut self, bytes: &[u8], shape: u8, input: &mut Input<'_>) {
        let ncuts = usize::from(shape & 7);
        let mut cuts: Vec<usize> = (0..ncuts)
            .map(|_| usize::from(input.u16()) % (bytes.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.push(bytes.len());
        let mut descs = Vec::with_capacity(cuts.len() + 1);
        let mut start = 0;
        let mut extra = None;
        match (shape >> 3) % 8 {
            // A zero-length descriptor first.
            1 => descs.push((TX_BUFS, 0, 0)),
            // A device-writable descriptor in the chain.
            2 => extra = Some((TX_BUFS, 16, WRITE)),
            // A descriptor outside guest memory.
            3 => extra = Some((MEM_SIZE + 0x1000, 64, 0)),
            // One straddling its end.
            4 => extra = Some((MEM_SIZE - 8, 64, 0)),
            // A huge length.
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

    // Answers one of the recent connections with `op` (a short cut to the
    // states a real guest reaches).
    fn answer(&mut self, input: &mut Input<'_>) {
        let sel = input.u8();
        if self.peers.is_empty() {
            return;
        }
        let (ours, theirs) = self.peers[usize::from(sel >> 3) % self.peers.len()];
        let op: u16 = [2, 5, 5, 6, 7, 4, 3, 5][usize::from(sel % 8)];
        let payload: Vec<u8> = if op == 5 {
            let n = usize::from(input.u16());
            let mut p = input.take(n).to_vec();
            p.resize(n, 0x5a);
            p
        } else {
            Vec::new()
        };
        let received = *self.received.get(&(ours, theirs)).unwrap_or(&0);
        let flags = if op == 4 {
            u32::from(input.u8() % 4)
        } else {
            0
        };
        trace!("answer: op {op} {ours} -> {theirs} len {}", payload.len());
        let mut bytes = Vec::with_capacity(HEADER_SIZE + payload.len());
        bytes.extend_from_slice(&GUEST_CID.to_le_bytes());
        bytes.extend_from_slice(&HOST_CID.to_le_bytes());
        bytes.extend_from_slice(&ours.to_le_bytes());
        bytes.extend_from_slice(&theirs.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&op.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&(256u32 * 1024).to_le_bytes());
        bytes.extend_from_slice(&received.to_le_bytes());
        bytes.extend_from_slice(&payload);
        // Header and payload in separate descriptors, as Linux sends.
        let shape = if payload.is_empty() { 0 } else { 1 };
        let cut = (HEADER_SIZE as u16).to_le_bytes();
        self.post_tx(&bytes, shape, &mut Input(&cut));
    }

    fn host(&mut self, op: u8, input: &mut Input<'_>) {
        let arg = input.u8();
        let stream = (!self.host.is_empty()).then(|| usize::from(arg) % self.host.len());
        match op % 6 {
            0 if self.host.len() < MAX_HOST_STREAMS => {
                let port = match arg % 4 {
                    3 => input.u32(),
                    p => PORTS[usize::from(p)],
                };
                // The device accepts in its worker; the backlog holds us till then.
                if let Ok(mut s) = UnixStream::connect(&self.uds) {
                    s.set_nonblocking(true).expect("nonblocking");
                    let _ = s.write_all(format!("CONNECT {port}\n").as_bytes());
                    self.host.push(s);
                }
            }
            1 => {
                for listener in &self.services {
                    while let Ok((s, _)) = listener.accept() {
                        if self.host.len() < MAX_HOST_STREAMS {
                            s.set_nonblocking(true).expect("nonblocking");
                            self.host.push(s);
                        }
                    }
                }
            }
            2 => {
                if let Some(i) = stream {
                    let n = usize::from(input.u16());
                    let data = vec![b'h'; n];
                    let _ = self.host[i].write(&data);
                }
            }
            3 => {
                if let Some(i) = stream {
                    let mut buf = vec![0; 256 * 1024];
                    while matches!(self.host[i].read(&mut buf), Ok(n) if n > 0) {}
                }
            }
            4 => {
                if let Some(i) = stream {
                    let how = [std::net::Shutdown::Write, std::net::Shutdown::Read]
                        [usize::from(arg >> 7)];
                    let _ = self.host[i].shutdown(how);
                }
            }
            _ => {
                if let Some(i) = stream {
                    self.host.swap_remove(i);
                }
            }
        }
    }
}

fn service_path(uds: &Path, port: u32) -> std::path::PathBuf {
    let mut path = uds.as_os_str().to_owned();
    path.push(format!("_{port}"));
    path.into()
}

fuzz_target!(|data: &[u8]| {
    let mut guest = Guest::new();
    let mut input = Input(data);
    // Linux stocks the rx queue before anything else.
    let stock = usize::from(input.u8() % 64);
    guest.post_rx_standard(stock);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        trace!("op {op:#x}: {} connections", guest.vsock.connection_count());
        match op % 8 {
            0 | 1 => guest.send_tx(&mut input),
            2 => guest.post_rx(&mut input),
            3 => {
                let n = usize::from(input.u8() % 32);
                guest.post_rx_standard(n);
            }
            4 => guest.answer(&mut input),
            5 => guest.host(op >> 3, &mut input),
            6 => guest.settle(),
            _ => {
                guest.take_rx();
                guest.reap_tx();
                guest.kick(usize::from(op >> 3) % 3);
            }
        }
        guest.take_rx();
        guest.check();
    }
    guest.settle();
    // Stops the worker (the muxer and every host connection with it).
    drop(guest);
});
