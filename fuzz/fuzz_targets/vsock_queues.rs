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

use cocoon_fuzz::queue_guest::{GuestQueues, Input, Layout, UsedRx};
use cocoon_fuzz::trace;
use cocoon_vmm::virtio::vsock::header::{HEADER_SIZE, HOST_CID, MAX_PKT_LEN};
use cocoon_vmm::virtio::vsock::{parse_header, Vsock, QUEUE_SIZE};
use libfuzzer_sys::fuzz_target;

const GUEST_CID: u64 = 3;
const MAX_CONNECTIONS: usize = 8;
const LAYOUT: Layout = Layout {
    mem_size: 32 << 20,
    // rx, tx, event
    rings: &[0x1000, 0x4000, 0x7000],
    rx_bufs: 0x10_0000,
    rx_stride: 0x2000,
    tx_bufs: 0x40_0000,
    tx_stride: 0x1_1000,
};
/// Rx buffers from `post_rx` are any u16 long (capped by `rx_stride`).
const RX_SEG_LEN_MODULUS: u64 = 0x1_0000;

/// Ports with a host service behind `<uds>_<port>`; others have none.
const PORTS: [u32; 4] = [1024, 1025, 1026, 80];
const SERVICES: [u32; 2] = [1024, 1025];
const MAX_HOST_STREAMS: usize = 16;
const MAX_OPS: usize = 256;

struct Guest {
    vsock: Vsock,
    queues: GuestQueues,
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
        let services = SERVICES
            .iter()
            .map(|port| {
                let listener = UnixListener::bind(service_path(&uds, *port)).expect("service");
                listener.set_nonblocking(true).expect("nonblocking");
                listener
            })
            .collect();
        let queues = GuestQueues::activate(&mut vsock, LAYOUT, QUEUE_SIZE);
        Self {
            vsock,
            queues,
            peers: Vec::new(),
            received: HashMap::new(),
            uds,
            services,
            host: Vec::new(),
            _dir: dir,
        }
    }

    fn check(&self) {
        self.queues.check();
        check_connections(&self.vsock);
    }

    // Checks and takes back the rx buffers the device returned.
    fn take_rx(&mut self) {
        while let Some(used) = self.queues.next_used_rx() {
            let UsedRx::Written(bytes) = used else {
                continue;
            };
            if bytes.is_empty() {
                continue;
            }
            let len = bytes.len();
            assert!(len >= HEADER_SIZE, "a {len}-byte rx packet");
            let raw: &[u8; HEADER_SIZE] = bytes[..HEADER_SIZE].try_into().expect("header");
            let header = parse_header(raw).expect("the device sent a malformed header");
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
        self.queues.settle_tx(&|| check_connections(&self.vsock));
        self.queues.wait_rx_quiet();
        self.take_rx();
        self.check();
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
        bytes.truncate(LAYOUT.tx_stride as usize);
        let shape = input.u8();
        trace!("tx: op {op} {src_cid}:{src_port} -> {dst_cid}:{dst_port} len {len} ({payload_len}) shape {shape:#x}");
        self.post_tx(&bytes, shape, input);
    }

    fn post_tx(&mut self, bytes: &[u8], shape: u8, input: &mut Input<'_>) {
        let vsock = &self.vsock;
        self.queues
            .post_tx(bytes, shape, input, &|| check_connections(vsock));
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

// The muxer stays within the connection limit.
fn check_connections(vsock: &Vsock) {
    let n = vsock.connection_count();
    assert!(n <= MAX_CONNECTIONS, "{n} connections");
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
    guest
        .queues
        .post_rx_standard(stock, HEADER_SIZE as u32 + 4096);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        trace!("op {op:#x}: {} connections", guest.vsock.connection_count());
        match op % 8 {
            0 | 1 => guest.send_tx(&mut input),
            2 => guest.queues.post_rx(&mut input, RX_SEG_LEN_MODULUS),
            3 => {
                let n = usize::from(input.u8() % 32);
                guest.queues.post_rx_standard(n, HEADER_SIZE as u32 + 4096);
            }
            4 => guest.answer(&mut input),
            5 => guest.host(op >> 3, &mut input),
            6 => guest.settle(),
            _ => {
                guest.take_rx();
                guest.queues.reap_tx();
                guest.queues.kick(usize::from(op >> 3) % 3);
            }
        }
        guest.take_rx();
        guest.check();
    }
    guest.settle();
    // Stops the worker (the muxer and every host connection with it).
    drop(guest);
});
