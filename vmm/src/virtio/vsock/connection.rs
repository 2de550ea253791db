//! One vsock stream connection between a guest socket and a host Unix socket:
//! its state machine and both directions of credit-based flow control.
//!
//! Credit (virtio spec 5.10.6.3): each side advertises `buf_alloc` (its receive
//! buffer) and `fwd_cnt` (bytes it has consumed so far) in every header; a
//! sender may have at most `buf_alloc - (sent - fwd_cnt)` bytes in flight.
//! - Guest → host: we advertise [`BUF_ALLOC`] and count as forwarded what the
//!   host socket accepted. So what we buffer for a slow host reader is bounded
//!   by `BUF_ALLOC`, and a guest that sends more is cut off.
//! - Host → guest: we read the host socket only as far as the guest's credit
//!   allows, so unread data stays in the host socket, not in our memory.
//!
//! A host peer that went away shows up as EPIPE/ECONNRESET from write(2) and
//! resets the connection (Rust programs ignore SIGPIPE, so there is no signal).
//!
//! The connection never touches queues or epoll itself: the muxer asks it for
//! the next packet to put on the rx queue and feeds it guest packets and host
//! socket readiness.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::header::{
    Op, VsockHeader, HEADER_SIZE, HOST_CID, MAX_PKT_LEN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
};
use super::unix_backend::ok_line;

/// Receive buffer we advertise to the guest for each connection, and so the
/// most guest data we ever hold for one connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Tell the guest about freed buffer space once this much has been forwarded
/// since it last heard from us: often enough that a sender blocked on credit
/// resumes quickly, rarely enough not to double the packet count.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
/// How long a host-initiated connection waits for the guest's RESPONSE, so
/// that a host client gets EOF when nothing answers in a stuck guest (a guest
/// without a listener answers RST at once). Generous: a guest whose one vCPU
/// a busy host starves answers 50 connections at once in more than 2 s (seen
/// in the emulated host VM while another ran beside it).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection the guest has closed may keep trying to deliver its
/// last data to a host socket that does not read.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection as the guest sees it: our (host) port and the guest's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

impl ConnKey {
    /// The connection a guest packet belongs to.
    pub fn of_guest_packet(header: &VsockHeader) -> Self {
        Self {
            local_port: header.dst_port,
            peer_port: header.src_port,
        }
    }
}

/// Why a connection has to be torn down (with an RST to the guest).
#[derive(Debug, thiserror::Error)]
pub enum Kill {
    #[error("guest sent {op:?} while the connection is {state}")]
    Unexpected { op: Op, state: &'static str },
    #[error("guest overran its credit ({buffered} bytes buffered, {len} more sent)")]
    CreditOverrun { buffered: usize, len: usize },
    #[error("guest sent data after shutting down its send side")]
    DataAfterShutdown,
    #[error("host socket failed: {0}")]
    Host(#[source] io::Error),
    #[error("guest did not answer the connection request in time")]
    ConnectTimeout,
    #[error("host did not take the last data of a closed connection in time")]
    CloseTimeout,
}

/// What a guest packet did to a connection that survives it.
#[derive(Debug, PartialEq, Eq)]
pub enum GuestOutcome {
    /// Keep going.
    Continue,
    /// The guest reset the connection: drop it without answering.
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated, waiting for the guest's RESPONSE.
    Connecting {
        request_sent: bool,
        deadline: Instant,
    },
    Established,
}

/// A stream connection and everything we owe either side of it.
pub struct Connection {
    key: ConnKey,
    guest_cid: u64,
    stream: UnixStream,
    state: State,
    response_pending: bool,
    credit_update_pending: bool,
    // We asked the guest for credit and have not seen any since; ask only once per stall.
    credit_requested: bool,
    // SHUTDOWN flags we owe the guest and those already sent.
    shutdown_owed: u32,
    shutdown_sent: u32,

    // Host → guest.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    rx_cnt: u32,
    // Edge-triggered readiness: set by epoll, cleared when a read would block.
    host_readable: bool,
    host_eof: bool,
    // The host socket is shut in both directions (the host process closed it).
    host_hup: bool,

    // Guest → host.
    tx_buf: VecDeque<u8>,
    // Leading bytes of tx_buf that are our own `OK` line, not guest data.
    preamble: usize,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    guest_shut: u32,
    host_write_shut: bool,
    close_deadline: Option<Instant>,

    /// epoll token of the host socket.
    pub token: u64,
    /// Whether the muxer has this connection queued for an rx turn.
    pub in_rx_ready: bool,
    /// Whether EPOLLOUT is part of the registered interest.
    pub out_registered: bool,
    /// The deadline the muxer's timer heap holds for this connection.
    pub scheduled_deadline: Option<Instant>,
}

impl Connection {
    /// A connection a host process asked for with `CONNECT`; we still owe the guest a REQUEST.
    pub fn host_initiated(
        key: ConnKey,
        guest_cid: u64,
        stream: UnixStream,
        token: u64,
        now: Instant,
    ) -> Self {
        Self::new(
            key,
            guest_cid,
            stream,
            token,
            State::Connecting {
                request_sent: false,
                deadline: now + CONNECT_TIMEOUT,
            },
        )
    }

    /// A connection the guest asked for with `request`, already connected to
    /// the host service; we owe the guest a RESPONSE.
    pub fn guest_initiated(
        key: ConnKey,
        guest_cid: u64,
        stream: UnixStream,
        token: u64,
        request: &VsockHeader,
    ) -> Self {
        let mut conn = Self::new(key, guest_cid, stream, token, State::Established);
        conn.response_pending = true;
        conn.peer_buf_alloc = request.buf_alloc;
        conn.peer_fwd_cnt = request.fwd_cnt;
        conn
    }

    fn new(key: ConnKey, guest_cid: u64, stream: UnixStream, token: u64, state: State) -> Self {
        Self {
            key,
            guest_cid,
            stream,
            state,
            response_pending: false,
            credit_update_pending: false,
            credit_requested: false,
            shutdown_owed: 0,
            shutdown_sent: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            // The socket may already hold data (e.g. pipelined behind CONNECT)
            // whose edge we will never see; a spurious read just blocks.
            host_readable: true,
            host_eof: false,
            host_hup: false,
            tx_buf: VecDeque::new(),
            preamble: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            guest_shut: 0,
            host_write_shut: false,
            close_deadline: None,
            token,
            in_rx_ready: false,
            out_registered: false,
            scheduled_deadline: None,
        }
    }

    /// Guest bytes waiting for the host socket (our own `OK` line excluded).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn buffered_guest_bytes(&self) -> usize {
        self.tx_buf.len() - self.preamble
    }

    pub fn key(&self) -> ConnKey {
        self.key
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// When [`on_deadline`](Self::on_deadline) must be called next, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Connecting { deadline, .. } => Some(deadline),
            State::Established => self.close_deadline,
        }
    }

    /// Checks the connection's timers.
    pub fn on_deadline(&self, now: Instant) -> Result<(), Kill> {
        match self.state {
            State::Connecting { deadline, .. } if now >= deadline => Err(Kill::ConnectTimeout),
            State::Established if self.close_deadline.is_some_and(|d| now >= d) => {
                Err(Kill::CloseTimeout)
            }
            _ => Ok(()),
        }
    }

    /// Handles a packet the guest sent on this connection. `data` is the payload.
    pub fn on_guest_packet(
        &mut self,
        header: &VsockHeader,
        data: &[u8],
    ) -> Result<GuestOutcome, Kill> {
        if header.op == Op::Rst {
            return Ok(GuestOutcome::Reset);
        }
        // Every packet carries the guest's current credit.
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        match (self.state, header.op) {
            (
                State::Connecting {
                    request_sent: true, ..
                },
                Op::Response,
            ) => {
                self.state = State::Established;
                // Nothing else can be in tx_buf before the connection is established.
                let ok = ok_line(self.key.local_port);
                self.preamble = ok.len();
                self.tx_buf.extend(ok);
                self.flush_tx()?;
            }
            (State::Connecting { .. }, op) => {
                return Err(Kill::Unexpected {
                    op,
                    state: "connecting",
                })
            }
            (State::Established, Op::Rw) => self.guest_data(data)?,
            (State::Established, Op::CreditUpdate) => {}
            (State::Established, Op::CreditRequest) => self.credit_update_pending = true,
            (State::Established, Op::Shutdown) => self.guest_shutdown(header.flags)?,
            (State::Established, op) => {
                return Err(Kill::Unexpected {
                    op,
                    state: "established",
                })
            }
        }
        Ok(GuestOutcome::Continue)
    }

    /// Records host socket readiness reported by epoll; flushes pending guest
    /// data if the socket became writable.
    pub fn on_host_event(&mut self, readable: bool, hup: bool, writable: bool) -> Result<(), Kill> {
        if readable || hup {
            self.host_readable = true;
        }
        if hup {
            self.host_hup = true;
        }
        if writable {
            self.flush_tx()?;
        }
        Ok(())
    }

    /// Whether guest data is waiting for the host socket to accept it (so
    /// EPOLLOUT is wanted).
    pub fn wants_out(&self) -> bool {
        !self.tx_buf.is_empty()
    }

    /// Whether [`next_rx`](Self::next_rx) has something to send (or, for host
    /// data, something to try).
    pub fn has_rx_work(&self) -> bool {
        match self.state {
            State::Connecting { request_sent, .. } => !request_sent,
            State::Established => {
                self.response_pending
                    || self.shutdown_owed & !self.shutdown_sent != 0
                    || self.credit_update_pending
                    || (self.can_read_host() && (self.peer_credit() > 0 || !self.credit_requested))
            }
        }
    }

    /// Builds the next packet for the guest in `buf` (header, then payload) and
    /// returns its length, or `None` if there is nothing to send after all.
    /// `buf` must hold at least a header.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Kill> {
        if buf.len() < HEADER_SIZE {
            return Ok(None);
        }
        match self.state {
            State::Connecting {
                request_sent: false,
                deadline,
            } => {
                self.state = State::Connecting {
                    request_sent: true,
                    deadline,
                };
                return Ok(Some(self.emit(buf, Op::Request, 0, 0)));
            }
            State::Connecting { .. } => return Ok(None),
            State::Established => {}
        }
        if self.response_pending {
            self.response_pending = false;
            return Ok(Some(self.emit(buf, Op::Response, 0, 0)));
        }
        if let Some(len) = self.next_shutdown(buf) {
            return Ok(Some(len));
        }
        if self.can_read_host() {
            let credit = self.peer_credit();
            if credit > 0 {
                if let Some(len) = self.read_host(buf, credit)? {
                    return Ok(Some(len));
                }
            } else if !self.credit_requested {
                self.credit_requested = true;
                return Ok(Some(self.emit(buf, Op::CreditRequest, 0, 0)));
            }
        }
        if self.credit_update_pending {
            return Ok(Some(self.emit(buf, Op::CreditUpdate, 0, 0)));
        }
        Ok(None)
    }

    /// Whether both directions are finished and everything owed to the guest
    /// was sent: the connection can go (with a final RST).
    pub fn is_done(&self) -> bool {
        if self.state != State::Established
            || self.response_pending
            || self.shutdown_owed & !self.shutdown_sent != 0
        {
            return false;
        }
        let host_to_guest_done = self.guest_shut & SHUTDOWN_RCV != 0
            || (self.host_eof && self.shutdown_sent & SHUTDOWN_SEND != 0);
        // A host that closed its socket cannot take any more guest data.
        let guest_to_host_done =
            (self.guest_shut & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty()) || self.host_hup;
        host_to_guest_done && guest_to_host_done
    }

    // Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_read_host(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.guest_shut & SHUTDOWN_RCV == 0
    }

    fn next_shutdown(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.shutdown_owed & !self.shutdown_sent == 0 {
            return None;
        }
        self.shutdown_sent |= self.shutdown_owed;
        Some(self.emit(buf, Op::Shutdown, 0, self.shutdown_owed))
    }

    // Reads up to `credit` bytes of host data into an RW packet. EOF becomes a
    // SHUTDOWN(SEND): the host will not send any more.
    fn read_host(&mut self, buf: &mut [u8], credit: u32) -> Result<Option<usize>, Kill> {
        let room = buf.len() - HEADER_SIZE;
        let max = room.min(credit as usize).min(MAX_PKT_LEN as usize);
        loop {
            match self.stream.read(&mut buf[HEADER_SIZE..HEADER_SIZE + max]) {
                Ok(0) => {
                    self.host_eof = true;
                    self.host_readable = false;
                    self.shutdown_owed |= SHUTDOWN_SEND;
                    return Ok(self.next_shutdown(buf));
                }
                Ok(n) => {
                    // n <= MAX_PKT_LEN, so the conversion is exact.
                    let n = u32::try_from(n).unwrap_or(MAX_PKT_LEN);
                    self.rx_cnt = self.rx_cnt.wrapping_add(n);
                    return Ok(Some(self.emit(buf, Op::Rw, n, 0)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Kill::Host(e)),
            }
        }
    }

    // Writes the header of a packet to the guest; every header carries our
    // current credit, so it doubles as a credit update.
    fn emit(&mut self, buf: &mut [u8], op: Op, len: u32, flags: u32) -> usize {
        let header = VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        };
        buf[..HEADER_SIZE].copy_from_slice(&header.to_bytes());
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.credit_update_pending = false;
        HEADER_SIZE + len as usize
    }

    fn guest_data(&mut self, data: &[u8]) -> Result<(), Kill> {
        if data.is_empty() {
            return Ok(());
        }
        if self.guest_shut & SHUTDOWN_SEND != 0 {
            return Err(Kill::DataAfterShutdown);
        }
        let buffered = self.tx_buf.len() - self.preamble;
        if buffered + data.len() > BUF_ALLOC as usize {
            return Err(Kill::CreditOverrun {
                buffered,
                len: data.len(),
            });
        }
        // Write straight through when nothing is queued (the common case);
        // keep only what the host socket does not take now.
        let mut written = 0;
        if self.tx_buf.is_empty() {
            while written < data.len() {
                match self.stream.write(&data[written..]) {
                    Ok(0) => return Err(Kill::Host(io::ErrorKind::WriteZero.into())),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Kill::Host(e)),
                }
            }
            self.account_forwarded(written);
        }
        self.tx_buf.extend(&data[written..]);
        Ok(())
    }

    fn guest_shutdown(&mut self, flags: u32) -> Result<(), Kill> {
        self.guest_shut |= flags & SHUTDOWN_BOTH;
        if self.guest_shut & SHUTDOWN_SEND != 0 {
            // Shuts the host socket's write side once everything is delivered.
            self.flush_tx()?;
        }
        if self.guest_shut == SHUTDOWN_BOTH && !self.tx_buf.is_empty() {
            self.close_deadline
                .get_or_insert_with(|| Instant::now() + CLOSE_TIMEOUT);
        }
        Ok(())
    }

    // Writes queued guest data to the host socket as far as it takes it. After
    // the guest's last byte went out, passes its half-close on to the host.
    fn flush_tx(&mut self) -> Result<(), Kill> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(Kill::Host(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    let from_preamble = n.min(self.preamble);
                    self.preamble -= from_preamble;
                    self.account_forwarded(n - from_preamble);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Kill::Host(e)),
            }
        }
        if self.tx_buf.is_empty() {
            self.close_deadline = None;
            if self.guest_shut & SHUTDOWN_SEND != 0 && !self.host_write_shut {
                self.host_write_shut = true;
                // ENOTCONN only means the host already closed; EOF is what it wanted.
                let _ = self.stream.shutdown(Shutdown::Write);
            }
        }
        Ok(())
    }

    fn account_forwarded(&mut self, bytes: usize) {
        // At most BUF_ALLOC at a time, so the conversion is exact.
        let bytes = u32::try_from(bytes).unwrap_or(BUF_ALLOC);
        self.fwd_cnt = self.fwd_cnt.wrapping_add(bytes);
        // No point telling a guest that will not send any more.
        if self.guest_shut & SHUTDOWN_SEND == 0
            && self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD
        {
            self.credit_update_pending = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::vsock::header::parse_header;

    const GUEST: u64 = 3;

    fn guest_header(op: Op, len: u32, flags: u32, buf_alloc: u32, fwd_cnt: u32) -> VsockHeader {
        VsockHeader {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port: 5000,
            dst_port: 80,
            len,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn established(buf_alloc: u32) -> (Connection, UnixStream) {
        let (host, dev) = UnixStream::pair().unwrap();
        dev.set_nonblocking(true).unwrap();
        let request = guest_header(Op::Request, 0, 0, buf_alloc, 0);
        let mut conn = Connection::guest_initiated(
            ConnKey::of_guest_packet(&request),
            GUEST,
            dev,
            1,
            &request,
        );
        let mut buf = vec![0u8; 4096];
        let len = conn.next_rx(&mut buf).unwrap().unwrap();
        let header = parse_header(&buf[..len]).unwrap();
        assert_eq!(header.op, Op::Response);
        assert_eq!((header.src_port, header.dst_port), (80, 5000));
        assert_eq!((header.src_cid, header.dst_cid), (HOST_CID, GUEST));
        assert_eq!(header.buf_alloc, BUF_ALLOC);
        (conn, host)
    }

    #[test]
    fn host_reads_stop_at_guest_credit() {
        let (mut conn, mut host) = established(1000);
        host.write_all(&[7u8; 3000]).unwrap();
        let mut buf = vec![0u8; 4096];
        let len = conn.next_rx(&mut buf).unwrap().unwrap();
        let header = parse_header(&buf[..len]).unwrap();
        assert_eq!((header.op, header.len), (Op::Rw, 1000));
        // Out of credit: one CREDIT_REQUEST, then silence.
        let len = conn.next_rx(&mut buf).unwrap().unwrap();
        assert_eq!(parse_header(&buf[..len]).unwrap().op, Op::CreditRequest);
        assert!(!conn.has_rx_work());
        assert_eq!(conn.next_rx(&mut buf).unwrap(), None);
        // The guest consumed 600 bytes.
        let update = guest_header(Op::CreditUpdate, 0, 0, 1000, 600);
        conn.on_guest_packet(&update, &[]).unwrap();
        assert!(conn.has_rx_work());
        let len = conn.next_rx(&mut buf).unwrap().unwrap();
        assert_eq!(parse_header(&buf[..len]).unwrap().len, 600);
    }

    #[test]
    fn hostile_fwd_cnt_means_no_credit() {
        let (mut conn, mut host) = established(1000);
        host.write_all(&[7u8; 10]).unwrap();
        // fwd_cnt ahead of what we ever sent: in_flight wraps to a huge number.
        let update = guest_header(Op::CreditUpdate, 0, 0, 1000, 5);
        conn.on_guest_packet(&update, &[]).unwrap();
        assert_eq!(conn.peer_credit(), 0);
    }

    #[test]
    fn guest_credit_overrun_kills() {
        let (mut conn, _host) = established(1000);
        // The host never reads: its socket buffer fills, then ours up to BUF_ALLOC.
        let chunk = vec![1u8; MAX_PKT_LEN as usize];
        let rw = guest_header(Op::Rw, MAX_PKT_LEN, 0, 1000, 0);
        let mut sent = 0usize;
        let result = loop {
            match conn.on_guest_packet(&rw, &chunk) {
                Ok(_) => sent += chunk.len(),
                Err(e) => break e,
            }
            assert!(sent < 16 * 1024 * 1024, "never cut off");
        };
        assert!(matches!(result, Kill::CreditOverrun { .. }));
        assert!(conn.tx_buf.len() <= BUF_ALLOC as usize);
    }

    #[test]
    fn forwarded_data_triggers_credit_update() {
        let (mut conn, mut host) = established(1000);
        let chunk = vec![1u8; CREDIT_UPDATE_THRESHOLD as usize];
        let rw = guest_header(Op::Rw, CREDIT_UPDATE_THRESHOLD, 0, 1000, 0);
        conn.on_guest_packet(&rw, &chunk).unwrap();
        let mut got = vec![0u8; chunk.len()];
        host.read_exact(&mut got).unwrap();
        assert!(conn.has_rx_work());
        let mut buf = vec![0u8; 64];
        let len = conn.next_rx(&mut buf).unwrap().unwrap();
        let header = parse_header(&buf[..len]).unwrap();
        assert_eq!(header.op, Op::CreditUpdate);
        assert_eq!(header.fwd_cnt, CREDIT_UPDATE_THRESHOLD);
    }

    #[test]
    fn half_closes_then_done() {
        let (mut conn, mut host) = established(1000);
        let rw = guest_header(Op::Rw, 3, 0, 1000, 0);
        conn.on_guest_packet(&rw, b"abc").unwrap();
        let shut = guest_header(Op::Shutdown, 0, SHUTDOWN_SEND, 1000, 0);
        conn.on_guest_packet(&shut, &[]).unwrap();
        let mut got = Vec::new();
        host.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abc");
        assert!(!conn.is_done());
        // The host answers and closes its write side.
        host.write_all(b"xyz").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let mut buf = vec![0u8; 4096];
        let len = conn.next_rx(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[HEADER_SIZE..len], b"xyz");
        let len = conn.next_rx(&mut buf).unwrap().unwrap();
        let header = parse_header(&buf[..len]).unwrap();
        assert_eq!((header.op, header.flags), (Op::Shutdown, SHUTDOWN_SEND));
        assert!(conn.is_done());
    }

    #[test]
    fn host_initiated_handshake_and_timeout() {
        let (mut host, dev) = UnixStream::pair().unwrap();
        dev.set_nonblocking(true).unwrap();
        let key = ConnKey {
            local_port: 1 << 30,
            peer_port: 1024,
        };
        let now = Instant::now();
        let mut conn = Connection::host_initiated(key, GUEST, dev, 1, now);
        assert!(conn.on_deadline(now).is_ok());
        assert!(matches!(
            conn.on_deadline(now + CONNECT_TIMEOUT),
            Err(Kill::ConnectTimeout)
        ));
        // A RESPONSE before we even asked is a protocol violation.
        let mut response = guest_header(Op::Response, 0, 0, 4096, 0);
        response.src_port = 1024;
        response.dst_port = 1 << 30;
        assert!(matches!(
            conn.on_guest_packet(&response, &[]),
            Err(Kill::Unexpected { .. })
        ));
        let mut buf = vec![0u8; 64];
        let len = conn.next_rx(&mut buf).unwrap().unwrap();
        let request = parse_header(&buf[..len]).unwrap();
        assert_eq!(request.op, Op::Request);
        assert_eq!((request.src_port, request.dst_port), (1 << 30, 1024));
        conn.on_guest_packet(&response, &[]).unwrap();
        let mut line = [0u8; 14];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");
        assert_eq!(conn.deadline(), None);
        // The OK line is ours, not forwarded guest data.
        assert_eq!(conn.fwd_cnt, 0);
    }
}
