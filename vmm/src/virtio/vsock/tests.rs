//! virtio-vsock driven end to end: a hand-built guest on one side, real Unix
//! sockets on the other.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use super::header::{Op, VsockHeader, HEADER_SIZE, MAX_PKT_LEN, SHUTDOWN_BOTH, SHUTDOWN_SEND};
use super::test_guest::{
    assert_closed, hdr, pattern, read_line, read_to_eof, TestGuest, GUEST_BUF_ALLOC, GUEST_CID,
    MEM_END, WRITE,
};
use super::unix_backend::guest_service_path;
use super::*;
use crate::virtio::interrupt::INT_USED_RING;
use crate::virtio::test_driver::TIMEOUT;
use crate::virtio::{VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_ID_VSOCK};
use vm_memory::{Bytes, GuestAddress};

const HOST_PORT: u32 = 1234;
const GUEST_PORT: u32 = 1024;

// A host service listening for guest connections to `port`.
fn host_service(guest: &TestGuest, port: u32) -> UnixListener {
    UnixListener::bind(guest_service_path(&guest.uds, port)).expect("bind host service")
}

fn accept(listener: &UnixListener) -> UnixStream {
    let (stream, _) = listener.accept().expect("accept");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream
}

// Guest connects from `guest_port` to the host service on HOST_PORT.
fn guest_connect(guest: &mut TestGuest, guest_port: u32, buf_alloc: u32) {
    let request = VsockHeader {
        buf_alloc,
        ..hdr(Op::Request, guest_port, HOST_PORT)
    };
    guest.send(&request, &[]);
    let response = guest.expect(Op::Response);
    assert_eq!(response.header.src_port, HOST_PORT);
    assert_eq!(response.header.dst_port, guest_port);
    assert_eq!(response.header.buf_alloc, BUF_ALLOC);
}

// A host client connects to GUEST_PORT and the guest accepts; returns the
// client and the host port the device allocated.
fn host_to_guest(guest: &mut TestGuest) -> (UnixStream, u32) {
    let mut host = guest.host_connect(GUEST_PORT);
    let request = guest.expect(Op::Request);
    assert_eq!(request.header.dst_port, GUEST_PORT);
    let local = request.header.src_port;
    guest.send(&hdr(Op::Response, GUEST_PORT, local), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}"));
    (host, local)
}

// Receives RW packets until `len` bytes arrived; any other packet fails.
fn recv_data(guest: &mut TestGuest, len: usize) -> Vec<u8> {
    let mut data = Vec::new();
    while data.len() < len {
        let packet = guest.expect(Op::Rw);
        data.extend_from_slice(&packet.data);
    }
    assert_eq!(data.len(), len);
    data
}

#[test]
fn device_identity_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let vsock = Vsock::new(0x1_2345, dir.path().join("v.sock")).unwrap();
    assert_eq!(vsock.device_type(), VIRTIO_ID_VSOCK);
    assert_eq!(vsock.device_type(), 19);
    assert_eq!(vsock.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(vsock.avail_features(), VIRTIO_F_VERSION_1);
    let mut config = [0xffu8; 8];
    vsock.read_config(0, &mut config);
    assert_eq!(u64::from_le_bytes(config), 0x1_2345);
    let mut high = [0xffu8; 4];
    vsock.read_config(4, &mut high);
    assert_eq!(high, [0; 4]);
    let mut beyond = [0xffu8; 4];
    vsock.read_config(8, &mut beyond);
    assert_eq!(beyond, [0; 4]);
}

#[test]
fn reserved_cids_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        assert!(matches!(
            Vsock::new(cid, dir.path().join("v.sock")),
            Err(VsockError::InvalidCid(_))
        ));
    }
}

#[test]
fn socket_file_is_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let vsock = Vsock::new(3, &path).unwrap();
    assert!(path.exists());
    drop(vsock);
    assert!(!path.exists());
}

#[test]
fn guest_to_host_data_both_ways_and_shutdown() {
    let mut guest = TestGuest::new();
    let service = host_service(&guest, HOST_PORT);
    guest_connect(&mut guest, 5000, GUEST_BUF_ALLOC);
    assert!(guest.interrupt.status() & INT_USED_RING != 0);
    let mut host = accept(&service);
    assert_eq!(guest.vsock.connection_count(), 1);

    guest.send(&hdr(Op::Rw, 5000, HOST_PORT), b"hello host");
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");

    host.write_all(b"hello guest").unwrap();
    let packet = guest.expect(Op::Rw);
    assert_eq!(packet.data, b"hello guest");
    assert_eq!(
        (packet.header.src_port, packet.header.dst_port),
        (HOST_PORT, 5000)
    );
    // Our credit: 10 bytes forwarded so far.
    assert_eq!(packet.header.fwd_cnt, 10);

    // Guest half-closes: the host sees EOF but can still answer.
    guest.send(
        &VsockHeader {
            flags: SHUTDOWN_SEND,
            ..hdr(Op::Shutdown, 5000, HOST_PORT)
        },
        &[],
    );
    assert_eq!(read_to_eof(&mut host), b"");
    host.write_all(b"bye").unwrap();
    assert_eq!(guest.expect(Op::Rw).data, b"bye");

    // Host closes too: both directions are done, the device resets and forgets.
    drop(host);
    let shutdown = guest.expect(Op::Shutdown);
    assert_eq!(shutdown.header.flags & SHUTDOWN_SEND, SHUTDOWN_SEND);
    guest.expect(Op::Rst);
    guest.wait_connections(0);
}

#[test]
fn guest_full_close_flushes_then_resets() {
    let mut guest = TestGuest::new();
    let service = host_service(&guest, HOST_PORT);
    guest_connect(&mut guest, 5001, GUEST_BUF_ALLOC);
    let mut host = accept(&service);
    let data = pattern(7, 100_000);
    for chunk in data.chunks(MAX_PKT_LEN as usize) {
        guest.send(&hdr(Op::Rw, 5001, HOST_PORT), chunk);
    }
    guest.send(
        &VsockHeader {
            flags: SHUTDOWN_BOTH,
            ..hdr(Op::Shutdown, 5001, HOST_PORT)
        },
        &[],
    );
    // Everything the guest sent before closing still arrives.
    assert_eq!(read_to_eof(&mut host), data);
    guest.expect(Op::Rst);
    guest.wait_connections(0);
}

#[test]
fn guest_to_host_without_listener_is_reset() {
    let mut guest = TestGuest::new();
    guest.send(&hdr(Op::Request, 5000, 4444), &[]);
    let rst = guest.expect(Op::Rst);
    assert_eq!((rst.header.src_port, rst.header.dst_port), (4444, 5000));
    assert_eq!(guest.vsock.connection_count(), 0);
}

#[test]
fn host_to_guest_handshake_and_data() {
    let mut guest = TestGuest::new();
    let mut host = UnixStream::connect(&guest.uds).unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The line arrives in pieces, with stream data pipelined right behind it.
    host.write_all(b"CONN").unwrap();
    host.flush().unwrap();
    host.write_all(b"ECT 1024\nearly").unwrap();
    let request = guest.expect(Op::Request);
    let local = request.header.src_port;
    assert_eq!(request.header.dst_port, GUEST_PORT);
    assert!(local >= 1 << 30);
    assert_eq!(request.header.buf_alloc, BUF_ALLOC);
    guest.send(&hdr(Op::Response, GUEST_PORT, local), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}"));
    assert_eq!(guest.expect(Op::Rw).data, b"early");

    guest.send(&hdr(Op::Rw, GUEST_PORT, local), b"from guest");
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from guest");
    host.write_all(b"from host").unwrap();
    assert_eq!(guest.expect(Op::Rw).data, b"from host");

    // A second client gets a different host port.
    let (_second, other) = host_to_guest(&mut guest);
    assert_ne!(other, local);
    assert_eq!(guest.vsock.connection_count(), 2);
}

#[test]
fn host_to_guest_refused_by_guest_closes_host_socket() {
    let mut guest = TestGuest::new();
    let mut host = guest.host_connect(GUEST_PORT);
    let request = guest.expect(Op::Request);
    guest.send(&hdr(Op::Rst, GUEST_PORT, request.header.src_port), &[]);
    assert_closed(&mut host);
    guest.wait_connections(0);
}

#[test]
fn host_to_guest_without_answer_times_out() {
    let mut guest = TestGuest::new();
    let started = Instant::now();
    let mut host = guest.host_connect(GUEST_PORT);
    // The usual read timeout is shorter than the wait for the RESPONSE.
    host.set_read_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(5)))
        .expect("read timeout");
    let request = guest.expect(Op::Request);
    assert_closed(&mut host);
    let waited = started.elapsed();
    assert!(waited >= CONNECT_TIMEOUT, "closed after {waited:?}");
    assert!(
        waited < CONNECT_TIMEOUT + Duration::from_secs(3),
        "closed after {waited:?}"
    );
    // The guest is told to forget the request.
    let rst = guest.expect(Op::Rst);
    assert_eq!(rst.header.src_port, request.header.src_port);
    guest.wait_connections(0);
    // A late answer is met with another RST.
    guest.send(&hdr(Op::Response, GUEST_PORT, request.header.src_port), &[]);
    guest.expect(Op::Rst);
}

#[test]
fn malformed_connect_lines_close_the_host_socket() {
    let guest = TestGuest::new();
    for line in [&b"HELLO 1024\n"[..], b"CONNECT\n", b"CONNECT 99999999999\n"] {
        let mut host = UnixStream::connect(&guest.uds).unwrap();
        host.set_read_timeout(Some(TIMEOUT)).unwrap();
        host.write_all(line).unwrap();
        assert_closed(&mut host);
    }
    // No newline within the length cap.
    let mut host = UnixStream::connect(&guest.uds).unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    host.write_all(&[b'9'; 40]).unwrap();
    assert_closed(&mut host);
    assert_eq!(guest.vsock.connection_count(), 0);
}

#[test]
fn host_data_waits_for_guest_credit() {
    const WINDOW: u32 = 16 * 1024;
    const TOTAL: usize = 64 * 1024;
    let mut guest = TestGuest::new();
    let service = host_service(&guest, HOST_PORT);
    guest_connect(&mut guest, 5000, WINDOW);
    let mut host = accept(&service);
    let data = pattern(3, TOTAL);
    std::thread::scope(|s| {
        s.spawn(|| host.write_all(&data).unwrap());
        let mut received = Vec::new();
        let mut fwd_cnt = 0u32;
        while received.len() < TOTAL {
            // Take exactly the window, never more.
            let window_end = fwd_cnt as usize + WINDOW as usize;
            while received.len() < window_end.min(TOTAL) {
                let packet = guest.expect(Op::Rw);
                received.extend_from_slice(&packet.data);
                assert!(
                    received.len() <= window_end,
                    "device overran the guest's credit"
                );
            }
            if received.len() == TOTAL {
                break;
            }
            // Out of credit, the device asks once and then stays quiet: our own
            // CREDIT_REQUEST is answered before any more data could come.
            guest.expect(Op::CreditRequest);
            let probe = VsockHeader {
                buf_alloc: WINDOW,
                fwd_cnt,
                ..hdr(Op::CreditRequest, 5000, HOST_PORT)
            };
            guest.send(&probe, &[]);
            guest.expect(Op::CreditUpdate);
            assert!(guest.recv_within(Duration::from_millis(100)).is_none());
            // The application consumed everything: open the window again.
            fwd_cnt = received.len() as u32;
            let update = VsockHeader {
                buf_alloc: WINDOW,
                fwd_cnt,
                ..hdr(Op::CreditUpdate, 5000, HOST_PORT)
            };
            guest.send(&update, &[]);
        }
        assert!(received == data, "data corrupted");
    });
}

#[test]
fn guest_gets_credit_back_as_the_host_reads() {
    let mut guest = TestGuest::new();
    let service = host_service(&guest, HOST_PORT);
    guest_connect(&mut guest, 5000, GUEST_BUF_ALLOC);
    let mut host = accept(&service);
    // Exactly our advertised buffer, while the host reads nothing.
    let data = pattern(9, BUF_ALLOC as usize);
    for chunk in data.chunks(MAX_PKT_LEN as usize) {
        guest.send(&hdr(Op::Rw, 5000, HOST_PORT), chunk);
    }
    guest.wait_tx_done();
    let mut got = vec![0u8; data.len()];
    host.read_exact(&mut got).unwrap();
    assert!(got == data);
    // Unsolicited updates give the guest most of its credit back: it is
    // told once a quarter of the buffer was forwarded since it last heard.
    let mut fwd_cnt = 0;
    while fwd_cnt < BUF_ALLOC - BUF_ALLOC / 4 {
        let packet = guest.expect(Op::CreditUpdate);
        assert!(packet.header.fwd_cnt > fwd_cnt);
        fwd_cnt = packet.header.fwd_cnt;
    }
    // Asked, the device reports the exact count.
    guest.send(&hdr(Op::CreditRequest, 5000, HOST_PORT), &[]);
    loop {
        let packet = guest.expect(Op::CreditUpdate);
        if packet.header.fwd_cnt == BUF_ALLOC {
            break;
        }
    }
}

#[test]
fn guest_overrunning_credit_is_reset() {
    let mut guest = TestGuest::new();
    let service = host_service(&guest, HOST_PORT);
    guest_connect(&mut guest, 5000, GUEST_BUF_ALLOC);
    let _host = accept(&service);
    // The host never reads; the guest ignores our credit. Socket buffers take
    // some, then our buffer fills to BUF_ALLOC and the guest is cut off.
    let chunk = pattern(1, MAX_PKT_LEN as usize);
    let mut sent = 0;
    let rst = loop {
        guest.send(&hdr(Op::Rw, 5000, HOST_PORT), &chunk);
        sent += chunk.len();
        guest.wait_tx_done();
        if let Some(packet) = guest.try_recv() {
            if packet.header.op != Op::CreditUpdate {
                break packet;
            }
        }
        assert!(sent < 32 << 20, "guest was never cut off");
    };
    assert_eq!(rst.header.op, Op::Rst);
    guest.wait_connections(0);
}

#[test]
fn malformed_tx_packets_are_dropped() {
    let mut guest = TestGuest::new();
    let good = hdr(Op::Rw, 5000, HOST_PORT);
    let mut bad_headers = vec![
        VsockHeader {
            src_cid: GUEST_CID + 1,
            ..good
        },
        VsockHeader { src_cid: 2, ..good },
        VsockHeader { dst_cid: 1, ..good },
        VsockHeader {
            dst_cid: GUEST_CID,
            ..good
        },
    ]
    .into_iter()
    .map(|h| h.to_bytes().to_vec())
    .collect::<Vec<_>>();
    // Unknown op, unknown type.
    let mut bytes = good.to_bytes();
    bytes[30] = 99;
    bad_headers.push(bytes.to_vec());
    let mut bytes = good.to_bytes();
    bytes[28] = 2;
    bad_headers.push(bytes.to_vec());
    for bytes in &bad_headers {
        guest.send_bytes(bytes, &[]);
    }
    // len beyond what the chain holds.
    let mut bytes = VsockHeader { len: 100, ..good }.to_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 10]);
    guest.send_bytes(&bytes, &[HEADER_SIZE]);
    // len beyond the packet size limit, with a chain that would hold it.
    let mut bytes = VsockHeader {
        len: MAX_PKT_LEN + 1,
        ..good
    }
    .to_bytes()
    .to_vec();
    bytes.resize(HEADER_SIZE + MAX_PKT_LEN as usize + 1, 0);
    guest.send_bytes(&bytes, &[HEADER_SIZE]);
    // Truncated header.
    guest.send_bytes(&good.to_bytes()[..20], &[]);
    // Descriptor chains that are wrong in themselves.
    let header = good.to_bytes();
    let (first, buf) = guest.tx_slot();
    guest.mem.write_slice(&header, GuestAddress(buf)).unwrap();
    guest.push_tx(first, &[(buf, 44, WRITE)]);
    for addr in [MEM_END + 0x1000, MEM_END - 20, u64::MAX - 8] {
        let (first, _) = guest.tx_slot();
        guest.push_tx(first, &[(addr, 44, 0)]);
    }
    let (first, buf) = guest.tx_slot();
    guest.mem.write_slice(&header, GuestAddress(buf)).unwrap();
    guest.push_tx(first, &[(buf, 20, 0), (MEM_END - 8, 24, 0)]);
    let (first, buf) = guest.tx_slot();
    guest
        .mem
        .write_slice(
            &hdr(Op::Request, 5000, HOST_PORT).to_bytes(),
            GuestAddress(buf),
        )
        .unwrap();
    guest.push_tx(first, &[(buf, 20, 0), (buf + 20, 24, WRITE)]);
    guest.wait_tx_done();

    // All of them were dropped without an answer, and the device still works.
    assert!(guest.recv_within(Duration::from_millis(100)).is_none());
    assert!(!guest.interrupt.needs_reset());
    guest.send(&hdr(Op::Request, 5000, 4444), &[]);
    guest.expect(Op::Rst);
}

#[test]
fn unusable_rx_buffers_are_returned_empty() {
    let mut guest = TestGuest::new();
    // The next buffers the device takes: outside guest memory, straddling its
    // end, device-readable, and too small for a header.
    guest.spoil_rx_buffer(0, MEM_END + 0x1000, 4096, WRITE);
    guest.spoil_rx_buffer(1, MEM_END - 16, 4096, WRITE);
    guest.spoil_rx_buffer(2, 0x20_0000, 4096, 0);
    guest.spoil_rx_buffer(3, 0x20_0000, HEADER_SIZE as u32 - 1, WRITE);
    guest.send(&hdr(Op::Request, 5000, 4444), &[]);
    // The RST lands in the first good buffer.
    let rst = guest.expect(Op::Rst);
    assert_eq!(rst.header.dst_port, 5000);
    assert_eq!(guest.rx_empty, 4);
    assert!(!guest.interrupt.needs_reset());
}

#[test]
fn corrupt_avail_index_needs_reset() {
    let guest = TestGuest::new();
    guest.corrupt_tx_avail_idx();
    let deadline = Instant::now() + TIMEOUT;
    while !guest.interrupt.needs_reset() {
        assert!(
            Instant::now() < deadline,
            "device did not flag the corrupt queue"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn headers_split_across_descriptors_are_fine() {
    // Rx buffers split too: header and payload in separate descriptors.
    let mut guest = TestGuest::with(|_| {}, true);
    let service = host_service(&guest, HOST_PORT);
    let request = hdr(Op::Request, 5000, HOST_PORT).to_bytes();
    guest.send_bytes(&request, &[1, 10, 43]);
    guest.expect(Op::Response);
    let mut host = accept(&service);

    let payload = pattern(5, 3000);
    let mut bytes = VsockHeader {
        len: payload.len() as u32,
        ..hdr(Op::Rw, 5000, HOST_PORT)
    }
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(&payload);
    // Header split, then header end and payload start sharing a descriptor.
    guest.send_bytes(&bytes, &[20, 50, 1000]);
    // Header and payload in one descriptor.
    guest.send_bytes(&bytes, &[]);
    let mut got = vec![0u8; 2 * payload.len()];
    host.read_exact(&mut got).unwrap();
    assert!(got[..payload.len()] == payload[..]);
    assert!(got[payload.len()..] == payload[..]);

    let reply = pattern(6, 10_000);
    host.write_all(&reply).unwrap();
    assert!(recv_data(&mut guest, reply.len()) == reply);
}

#[test]
fn packets_for_unknown_connections_are_reset() {
    let mut guest = TestGuest::new();
    for op in [
        Op::Rw,
        Op::Response,
        Op::Shutdown,
        Op::CreditUpdate,
        Op::CreditRequest,
    ] {
        guest.send(&hdr(op, 7000, 8000), &[]);
        let rst = guest.expect(Op::Rst);
        assert_eq!((rst.header.src_port, rst.header.dst_port), (8000, 7000));
    }
    // RST is never answered.
    guest.send(&hdr(Op::Rst, 7000, 8000), &[]);
    guest.wait_tx_done();
    assert!(guest.recv_within(Duration::from_millis(100)).is_none());
}

#[test]
fn protocol_violations_reset_the_connection() {
    let mut guest = TestGuest::new();
    let service = host_service(&guest, HOST_PORT);
    guest_connect(&mut guest, 5000, GUEST_BUF_ALLOC);
    let mut host = accept(&service);
    // A second REQUEST on a live connection.
    guest.send(&hdr(Op::Request, 5000, HOST_PORT), &[]);
    guest.expect(Op::Rst);
    assert_closed(&mut host);
    guest.wait_connections(0);

    // Data after the guest said it would send no more.
    guest_connect(&mut guest, 5001, GUEST_BUF_ALLOC);
    let _host = accept(&service);
    guest.send(
        &VsockHeader {
            flags: SHUTDOWN_SEND,
            ..hdr(Op::Shutdown, 5001, HOST_PORT)
        },
        &[],
    );
    guest.send(&hdr(Op::Rw, 5001, HOST_PORT), b"late");
    guest.expect(Op::Rst);
    guest.wait_connections(0);
}

#[test]
fn request_flood_is_capped() {
    let mut guest = TestGuest::with(|vsock| vsock.set_max_connections(4), false);
    let service = host_service(&guest, HOST_PORT);
    for port in 0..6 {
        guest.send(&hdr(Op::Request, 5000 + port, HOST_PORT), &[]);
    }
    let mut answers = BTreeMap::new();
    for _ in 0..6 {
        let packet = guest.recv();
        answers.insert(packet.header.dst_port, packet.header.op);
    }
    let responses = answers.values().filter(|&&op| op == Op::Response).count();
    assert_eq!(responses, 4, "{answers:?}");
    assert_eq!(guest.vsock.connection_count(), 4);
    // Host clients beyond the cap are turned away as well.
    let mut host = guest.host_connect(GUEST_PORT);
    assert_closed(&mut host);
    drop(service);
}

#[test]
fn rx_stalls_without_buffers_and_resumes() {
    const TOTAL: usize = 2 << 20;
    let mut guest = TestGuest::new();
    let service = host_service(&guest, HOST_PORT);
    guest_connect(&mut guest, 5000, 4 << 20);
    let mut host = accept(&service);
    let data = pattern(11, TOTAL);
    std::thread::scope(|s| {
        s.spawn(|| host.write_all(&data).unwrap());
        // Every rx buffer gets used, then the device has to wait for us.
        let deadline = Instant::now() + TIMEOUT;
        while guest.rx_pending() < QUEUE_SIZE {
            assert!(Instant::now() < deadline, "rx queue never filled");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(guest.rx_pending(), QUEUE_SIZE);
        // Handing buffers back (recv does) lets the rest through, intact.
        assert!(recv_data(&mut guest, TOTAL) == data);
    });
}

#[test]
fn reset_closes_all_connections() {
    let mut guest = TestGuest::new();
    let (mut host, _) = host_to_guest(&mut guest);
    assert_eq!(guest.vsock.connection_count(), 1);
    assert!(guest.vsock.reset());
    assert_closed(&mut host);
    assert_eq!(guest.vsock.connection_count(), 0);
}

#[test]
fn hundreds_of_connections_leave_no_trace() {
    let mut guest = TestGuest::new();
    let service = host_service(&guest, HOST_PORT);
    for i in 0..200u32 {
        // Host to guest, the host hangs up.
        let (host, local) = host_to_guest(&mut guest);
        drop(host);
        let shutdown = guest.expect(Op::Shutdown);
        assert_eq!(shutdown.header.src_port, local);
        let rst = guest.expect(Op::Rst);
        assert_eq!(rst.header.src_port, local);

        // Guest to host, the guest closes.
        let port = 10_000 + i;
        guest_connect(&mut guest, port, GUEST_BUF_ALLOC);
        let mut host = accept(&service);
        guest.send(&hdr(Op::Rw, port, HOST_PORT), b"x");
        guest.send(
            &VsockHeader {
                flags: SHUTDOWN_BOTH,
                ..hdr(Op::Shutdown, port, HOST_PORT)
            },
            &[],
        );
        assert_eq!(read_to_eof(&mut host), b"x");
        guest.expect(Op::Rst);
    }
    guest.wait_connections(0);
}

// ---- Many connections at once, driven by a small guest-side vsock stack. ----

const CONNECTIONS_EACH_WAY: u32 = 25;
const GUEST_CHUNK: usize = 4096;

// Each side sends its id followed by data derived from it.
fn stream_for(id: u32) -> Vec<u8> {
    let len = 20_000 + (id as usize % 50) * 997;
    let mut data = id.to_le_bytes().to_vec();
    data.extend_from_slice(&pattern(id, len));
    data
}

// Checks a received stream and returns the id it carries.
fn check_stream(data: &[u8]) -> u32 {
    let id = u32::from_le_bytes(data[..4].try_into().expect("stream has an id"));
    assert!(data == stream_for(id), "stream {id} corrupted");
    id
}

// The host end of one connection: send, half-close, read to EOF, verify.
fn host_peer(mut stream: UnixStream, id: u32) -> u32 {
    stream.write_all(&stream_for(id)).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    check_stream(&read_to_eof(&mut stream))
}

#[derive(Default)]
struct StackConn {
    established: bool,
    to_send: Vec<u8>,
    sent: usize,
    shut_sent: bool,
    received: Vec<u8>,
    host_shut: bool,
    reset: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    fwd_cnt: u32,
    fwd_cnt_told: u32,
}

// A minimal guest vsock stack: (guest port, host port) -> connection.
struct Stack {
    conns: BTreeMap<(u32, u32), StackConn>,
}

impl Stack {
    fn header(conn: &StackConn, op: Op, guest_port: u32, host_port: u32) -> VsockHeader {
        VsockHeader {
            fwd_cnt: conn.fwd_cnt,
            ..hdr(op, guest_port, host_port)
        }
    }

    fn on_packet(&mut self, guest: &mut TestGuest, packet: super::test_guest::Packet) {
        let h = packet.header;
        let key = (h.dst_port, h.src_port);
        if h.op == Op::Request {
            assert_eq!(h.dst_port, GUEST_PORT);
            let conn = StackConn {
                established: true,
                // Host ports are unique, so they make good ids.
                to_send: stream_for(h.src_port),
                ..StackConn::default()
            };
            guest.send(&Self::header(&conn, Op::Response, key.0, key.1), &[]);
            assert!(self.conns.insert(key, conn).is_none(), "duplicate request");
        }
        let conn = self
            .conns
            .get_mut(&key)
            .expect("packet for a known connection");
        conn.peer_buf_alloc = h.buf_alloc;
        conn.peer_fwd_cnt = h.fwd_cnt;
        match h.op {
            Op::Request | Op::CreditUpdate => {}
            Op::Response => conn.established = true,
            Op::Rw => {
                conn.received.extend_from_slice(&packet.data);
                // The application reads at once; tell the host now and then.
                conn.fwd_cnt = conn.fwd_cnt.wrapping_add(h.len);
                if conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_told) >= 64 * 1024 {
                    conn.fwd_cnt_told = conn.fwd_cnt;
                    guest.send(&Self::header(conn, Op::CreditUpdate, key.0, key.1), &[]);
                }
            }
            Op::Shutdown => conn.host_shut |= h.flags & SHUTDOWN_SEND != 0,
            Op::Rst => conn.reset = true,
            Op::CreditRequest => {
                conn.fwd_cnt_told = conn.fwd_cnt;
                guest.send(&Self::header(conn, Op::CreditUpdate, key.0, key.1), &[]);
            }
        }
    }

    // Sends one chunk per connection that has data and credit, round-robin.
    fn send_some(&mut self, guest: &mut TestGuest) -> bool {
        let mut progress = false;
        for (&(guest_port, host_port), conn) in self.conns.iter_mut() {
            if !conn.established || conn.reset {
                continue;
            }
            if conn.sent < conn.to_send.len() {
                let in_flight = (conn.sent as u32).wrapping_sub(conn.peer_fwd_cnt);
                let credit = conn.peer_buf_alloc.saturating_sub(in_flight) as usize;
                let n = GUEST_CHUNK.min(credit).min(conn.to_send.len() - conn.sent);
                if n > 0 {
                    let chunk = &conn.to_send[conn.sent..conn.sent + n];
                    guest.send(&Self::header(conn, Op::Rw, guest_port, host_port), chunk);
                    conn.sent += n;
                    progress = true;
                }
            } else if !conn.shut_sent {
                let shutdown = VsockHeader {
                    flags: SHUTDOWN_SEND,
                    ..Self::header(conn, Op::Shutdown, guest_port, host_port)
                };
                guest.send(&shutdown, &[]);
                conn.shut_sent = true;
                progress = true;
            }
        }
        progress
    }
}

#[test]
fn fifty_concurrent_connections_with_checksums() {
    let mut guest = TestGuest::new();
    let service = host_service(&guest, HOST_PORT);
    let uds = guest.uds.clone();
    let mut stack = Stack {
        conns: BTreeMap::new(),
    };
    for i in 0..CONNECTIONS_EACH_WAY {
        let port = 20_000 + i;
        stack.conns.insert(
            (port, HOST_PORT),
            StackConn {
                to_send: stream_for(port),
                ..StackConn::default()
            },
        );
        guest.send(&hdr(Op::Request, port, HOST_PORT), &[]);
    }

    let host_ids = std::thread::scope(|s| {
        // Host services for the guest's connections.
        let accepted = s.spawn(|| {
            let peers: Vec<_> = (0..CONNECTIONS_EACH_WAY)
                .map(|i| {
                    let stream = accept(&service);
                    s.spawn(move || host_peer(stream, 100 + i))
                })
                .collect();
            peers
                .into_iter()
                .map(|p| p.join().unwrap())
                .collect::<Vec<_>>()
        });
        // Host clients connecting into the guest.
        let clients: Vec<_> = (0..CONNECTIONS_EACH_WAY)
            .map(|i| {
                let uds = uds.clone();
                s.spawn(move || {
                    let mut stream = UnixStream::connect(&uds).unwrap();
                    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                    stream
                        .write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
                        .unwrap();
                    let line = read_line(&mut stream);
                    let port: u32 = line.strip_prefix("OK ").unwrap().parse().unwrap();
                    assert!(port >= 1 << 30);
                    host_peer(stream, 200 + i)
                })
            })
            .collect();

        // The guest runs its stack until every connection was reset by the
        // device, which happens once both directions are closed.
        let deadline = Instant::now() + Duration::from_secs(60);
        let total = 2 * CONNECTIONS_EACH_WAY as usize;
        loop {
            let mut progress = false;
            while let Some(packet) = guest.try_recv() {
                stack.on_packet(&mut guest, packet);
                progress = true;
            }
            progress |= stack.send_some(&mut guest);
            let done = stack.conns.len() == total && stack.conns.values().all(|c| c.reset);
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "connections did not finish");
            if !progress {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let mut host_ids: Vec<u32> = accepted.join().unwrap();
        let client_ids: Vec<u32> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        host_ids.extend(client_ids);
        host_ids
    });

    // The host received each guest stream exactly once...
    let expected_host: BTreeSet<u32> = stack
        .conns
        .values()
        .map(|c| check_stream(&c.to_send))
        .collect();
    let got_host: BTreeSet<u32> = host_ids.iter().copied().collect();
    assert_eq!(host_ids.len(), expected_host.len());
    assert_eq!(got_host, expected_host);
    // ...and the guest each host stream.
    let guest_ids: BTreeSet<u32> = stack
        .conns
        .values()
        .map(|c| {
            assert!(c.host_shut);
            check_stream(&c.received)
        })
        .collect();
    let expected_guest: BTreeSet<u32> = (0..CONNECTIONS_EACH_WAY)
        .flat_map(|i| [100 + i, 200 + i])
        .collect();
    assert_eq!(guest_ids, expected_guest);
    guest.wait_connections(0);
}

#[test]
fn activates_behind_the_mmio_transport() {
    use crate::virtio::test_driver::{Driver, SplitRing};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let mut driver = Driver::new(Box::new(Vsock::new(42, &path).unwrap()));
    assert_eq!(driver.device_features(), VIRTIO_F_VERSION_1);
    assert!(driver.negotiate(VIRTIO_F_VERSION_1));
    let rings: Vec<SplitRing> = [0x1000, 0x2000, 0x3000]
        .into_iter()
        .map(|base| SplitRing::new(base, 16))
        .collect();
    for (index, ring) in rings.iter().enumerate() {
        driver.setup_queue(index as u32, ring);
    }
    assert!(driver.driver_ok());
    assert!(driver.transport.is_activated());
    // guest_cid, as Linux reads it: two 32-bit config reads.
    assert_eq!(driver.read32(0x100), 42);
    assert_eq!(driver.read32(0x104), 0);
    // The device serves host clients now...
    let mut host = UnixStream::connect(&path).unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let mut rx = rings.into_iter().next().unwrap();
    rx.set_desc(&driver.mem, 0, 0x8000, 4096, WRITE, 0);
    rx.push(&driver.mem, 0);
    driver.notify(0);
    assert!(
        rx.wait_used(&driver.mem, 1),
        "no REQUEST for the host client"
    );
    let mut raw = [0u8; HEADER_SIZE];
    driver
        .mem
        .read_slice(&mut raw, GuestAddress(0x8000))
        .unwrap();
    let request = super::parse_header(&raw).unwrap();
    assert_eq!(
        (request.op, request.dst_cid, request.dst_port),
        (Op::Request, 42, 1024)
    );
    // ...and a driver reset closes their connections.
    driver.write32(virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS, 0);
    assert!(!driver.transport.is_activated());
    assert_closed(&mut host);
}
