//! The connection table: one epoll over the listener and every host socket,
//! host port allocation, the `CONNECT` handshakes in progress, timers, and the
//! rx scheduling that decides which connection fills the next guest buffer.
//!
//! Host sockets are registered edge-triggered: readiness is remembered in the
//! connection, so a socket we stop reading (no guest credit, no rx buffers)
//! does not wake us again and again, and nothing has to be re-registered when
//! reading resumes. EPOLLOUT is only in the interest set while guest data is
//! waiting for a host socket.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, error};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{ConnKey, Connection, GuestOutcome, Kill, BUF_ALLOC};
use super::header::{Op, VsockHeader, HEADER_SIZE, HOST_CID};
use super::unix_backend::{connect_nonblocking, guest_service_path, ConnectLine};
use crate::virtio::epoll_worker::FIRST_DEVICE_TOKEN;
use crate::virtio::warn_limit::{limited, WarnLimiter};

/// Most live connections per device; guest requests beyond it are refused
/// with RST, host `CONNECT`s beyond it are closed.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host clients that connected but have not finished their `CONNECT` line.
const MAX_HANDSHAKES: usize = 128;
/// Most RSTs waiting for an rx buffer. A guest that floods us with packets for
/// unknown connections while posting no rx buffers just loses some replies.
const MAX_PENDING_RSTS: usize = 4096;
/// Host ports we hand out for host-initiated connections start here, far from
/// the well-known ports guests connect to.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// epoll token of the listening socket, the first of the device's own: the
/// ones below it belong to the device worker.
pub const TOKEN_LISTENER: u64 = FIRST_DEVICE_TOKEN;
const FIRST_DYNAMIC_TOKEN: u64 = 16;

// What an epoll token of a host socket stands for.
#[derive(Clone, Copy, Debug)]
enum Target {
    Handshake,
    Conn(ConnKey),
}

// A host client that has not finished its CONNECT line yet.
struct Handshake {
    stream: UnixStream,
    line: ConnectLine,
}

fn host_interest(out: bool) -> EventSet {
    let base = EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
    if out {
        base | EventSet::OUT
    } else {
        base
    }
}

/// All connections of one device and the epoll instance that watches them.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    // Shared with the device worker, which waits on it.
    epoll: Arc<Epoll>,
    listener: UnixListener,
    conns: HashMap<ConnKey, Connection>,
    handshakes: HashMap<u64, Handshake>,
    targets: HashMap<u64, Target>,
    next_token: u64,
    // How many live connections use each host port.
    local_ports: HashMap<u32, usize>,
    next_local_port: u32,
    // Connections waiting for an rx turn, served round-robin.
    rx_ready: VecDeque<ConnKey>,
    // RSTs for connections that are already gone (or never existed).
    rsts: VecDeque<ConnKey>,
    // Connection timers; entries whose connection moved on are skipped lazily.
    deadlines: BinaryHeap<Reverse<(Instant, ConnKey)>>,
    max_connections: usize,
    live: Arc<AtomicUsize>,
    guest_log: WarnLimiter,
    host_log: WarnLimiter,
}

impl Muxer {
    /// A muxer accepting host connections on `listener` (already non-blocking).
    /// `live` is kept equal to the number of connections.
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
        max_connections: usize,
        live: Arc<AtomicUsize>,
    ) -> io::Result<Self> {
        let epoll = Arc::new(Epoll::new()?);
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, TOKEN_LISTENER),
        )?;
        live.store(0, Ordering::Relaxed);
        Ok(Self {
            guest_cid,
            uds_path,
            epoll,
            listener,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            targets: HashMap::new(),
            next_token: FIRST_DYNAMIC_TOKEN,
            local_ports: HashMap::new(),
            next_local_port: FIRST_LOCAL_PORT,
            rx_ready: VecDeque::new(),
            rsts: VecDeque::new(),
            deadlines: BinaryHeap::new(),
            max_connections,
            live,
            guest_log: WarnLimiter::default(),
            host_log: WarnLimiter::default(),
        })
    }

    /// The epoll instance, for the device worker to wait on; it adds its own
    /// fds with tokens below [`TOKEN_LISTENER`].
    pub fn epoll(&self) -> Arc<Epoll> {
        Arc::clone(&self.epoll)
    }

    /// Handles an epoll event for a token of ours.
    pub fn handle_event(&mut self, token: u64, events: EventSet) {
        if token == TOKEN_LISTENER {
            self.accept_all();
        } else {
            match self.targets.get(&token).copied() {
                Some(Target::Handshake) => self.continue_handshake(token),
                Some(Target::Conn(key)) => self.host_event(key, events),
                // A socket closed earlier in the same batch of events.
                None => {}
            }
        }
        self.check_bounds();
    }

    /// Handles a packet the guest sent (its addressing already checked).
    pub fn handle_guest_packet(&mut self, header: &VsockHeader, data: &[u8]) {
        self.guest_packet(header, data);
        self.check_bounds();
    }

    /// Asserts the limits that keep a hostile guest (or host client) from
    /// growing the muxer without bound. Only in tests and fuzz builds: the
    /// code paths enforce them, this catches a path that forgot to.
    #[cfg(any(test, feature = "fuzzing"))]
    fn check_bounds(&self) {
        let conns = self.conns.len();
        assert!(conns <= self.max_connections, "{conns} connections");
        assert_eq!(self.live.load(Ordering::Relaxed), conns, "live count");
        assert!(self.handshakes.len() <= MAX_HANDSHAKES, "handshakes");
        assert!(self.rsts.len() <= MAX_PENDING_RSTS, "pending RSTs");
        assert!(self.rx_ready.len() <= conns, "rx_ready holds stale keys");
        assert_eq!(self.targets.len(), conns + self.handshakes.len(), "targets");
        assert!(self.local_ports.len() <= conns, "local ports");
        for conn in self.conns.values() {
            let buffered = conn.buffered_guest_bytes();
            assert!(buffered <= BUF_ALLOC as usize, "{buffered} bytes buffered");
        }
    }

    #[cfg(not(any(test, feature = "fuzzing")))]
    fn check_bounds(&self) {}

    fn guest_packet(&mut self, header: &VsockHeader, data: &[u8]) {
        let key = ConnKey::of_guest_packet(header);
        let Some(conn) = self.conns.get_mut(&key) else {
            match header.op {
                Op::Request => self.guest_connect(key, header),
                // Never answer an RST with an RST.
                Op::Rst => {}
                _ => self.queue_rst(key),
            }
            return;
        };
        match conn.on_guest_packet(header, data) {
            Ok(GuestOutcome::Continue) => self.settle(key),
            Ok(GuestOutcome::Reset) => {
                self.remove_conn(key);
            }
            Err(kill) => self.kill(key, kill),
        }
    }

    /// Whether [`next_rx_packet`](Self::next_rx_packet) may have a packet.
    pub fn has_rx_work(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_ready.is_empty()
    }

    /// Builds the next packet for the guest in `buf` (at least a header long)
    /// and returns its length. Each connection gets one packet per turn, so a
    /// busy connection cannot starve the others.
    pub fn next_rx_packet(&mut self, buf: &mut [u8]) -> Option<usize> {
        if buf.len() < HEADER_SIZE {
            return None;
        }
        // Connections that turn out to have nothing are not requeued, so this
        // bounds the loop even if that ever changed.
        let mut turns = self.rx_ready.len() + 1;
        loop {
            if let Some(key) = self.rsts.pop_front() {
                let rst = self.rst_header(key);
                buf[..HEADER_SIZE].copy_from_slice(&rst.to_bytes());
                return Some(HEADER_SIZE);
            }
            turns = turns.checked_sub(1)?;
            let key = self.rx_ready.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rx_ready = false;
            match conn.next_rx(buf) {
                Ok(Some(len)) => {
                    // Back to the end of the line if it has more.
                    self.settle(key);
                    return Some(len);
                }
                Ok(None) => self.settle(key),
                // The RST it queues goes out on the next round.
                Err(kill) => self.kill(key, kill),
            }
        }
    }

    /// epoll timeout until the next connection timer, in milliseconds (-1: none).
    pub fn timeout_ms(&self, now: Instant) -> i32 {
        match self.deadlines.peek() {
            None => -1,
            Some(Reverse((when, _))) => {
                let ms = when.saturating_duration_since(now).as_millis();
                // Round up so we do not wake just before the deadline.
                i32::try_from(ms.saturating_add(1)).unwrap_or(i32::MAX)
            }
        }
    }

    /// Fires the connection timers that are due.
    pub fn expire(&mut self, now: Instant) {
        self.fire_timers(now);
        self.check_bounds();
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((when, key))) = self.deadlines.peek() {
            if when > now {
                break;
            }
            self.deadlines.pop();
            let Some(conn) = self.conns.get(&key) else {
                continue;
            };
            if conn.scheduled_deadline != Some(when) {
                continue;
            }
            if let Err(kill) = conn.on_deadline(now) {
                self.kill(key, kill);
            }
        }
    }

    fn accept_all(&mut self) {
        // Edge-triggered: drain the backlog.
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.add_handshake(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // E.g. out of file descriptors; the next client retries us.
                    limited!(self.host_log, error, error = %e, "virtio-vsock: accept failed");
                    break;
                }
            }
        }
    }

    fn add_handshake(&mut self, stream: UnixStream) {
        if self.handshakes.len() >= MAX_HANDSHAKES {
            limited!(
                self.host_log,
                warn,
                "virtio-vsock: too many unfinished CONNECT handshakes, closing a new one"
            );
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            limited!(self.host_log, warn, error = %e, "virtio-vsock: cannot use host socket");
            return;
        }
        // Registering reports data that is already there, so nothing is missed.
        let Some(token) = self.watch_host_socket(stream.as_raw_fd()) else {
            return;
        };
        self.handshakes.insert(
            token,
            Handshake {
                stream,
                line: ConnectLine::default(),
            },
        );
        self.targets.insert(token, Target::Handshake);
    }

    fn continue_handshake(&mut self, token: u64) {
        let Some(handshake) = self.handshakes.get_mut(&token) else {
            return;
        };
        let result = handshake.line.poll(&mut handshake.stream);
        if matches!(result, Ok(None)) {
            return;
        }
        let Some(handshake) = self.handshakes.remove(&token) else {
            return;
        };
        match result {
            Ok(Some(port)) => self.host_connect(token, handshake.stream, port),
            Ok(None) => {}
            Err(e) => {
                debug!(error = %e, "virtio-vsock: closing host client");
                self.forget(token, &handshake.stream);
            }
        }
    }

    // A host client asked for guest port `peer_port`; its socket stays
    // registered under `token`.
    fn host_connect(&mut self, token: u64, stream: UnixStream, peer_port: u32) {
        if self.conns.len() >= self.max_connections {
            limited!(
                self.host_log,
                warn,
                limit = self.max_connections,
                "virtio-vsock: connection limit reached, closing host client"
            );
            self.forget(token, &stream);
            return;
        }
        let Some(local_port) = self.alloc_local_port() else {
            self.forget(token, &stream);
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port,
        };
        debug!(
            local_port,
            peer_port, "virtio-vsock: host connects to guest"
        );
        let conn = Connection::host_initiated(key, self.guest_cid, stream, token, Instant::now());
        self.insert_conn(conn);
    }

    // The guest asked for host port `key.local_port`: connect to the host
    // service socket, or refuse with RST.
    fn guest_connect(&mut self, key: ConnKey, request: &VsockHeader) {
        if self.conns.len() >= self.max_connections {
            limited!(
                self.guest_log,
                warn,
                limit = self.max_connections,
                "virtio-vsock: connection limit reached, refusing guest request"
            );
            self.queue_rst(key);
            return;
        }
        let path = guest_service_path(&self.uds_path, key.local_port);
        let stream = match connect_nonblocking(&path) {
            Ok(stream) => stream,
            Err(e) => {
                debug!(path = %path.display(), error = %e, "virtio-vsock: no host service for guest");
                self.queue_rst(key);
                return;
            }
        };
        let Some(token) = self.watch_host_socket(stream.as_raw_fd()) else {
            self.queue_rst(key);
            return;
        };
        debug!(
            local_port = key.local_port,
            peer_port = key.peer_port,
            "virtio-vsock: guest connects to host"
        );
        let conn = Connection::guest_initiated(key, self.guest_cid, stream, token, request);
        self.insert_conn(conn);
    }

    fn host_event(&mut self, key: ConnKey, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        // Errors surface from the next read or write.
        let readable = events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::ERROR);
        let hup = events.contains(EventSet::HANG_UP);
        let writable = events.intersects(EventSet::OUT | EventSet::ERROR);
        match conn.on_host_event(readable, hup, writable) {
            Ok(()) => self.settle(key),
            Err(kill) => self.kill(key, kill),
        }
    }

    fn insert_conn(&mut self, conn: Connection) {
        let key = conn.key();
        // An RST still queued for an earlier connection with the same ports
        // must not hit this one.
        self.rsts.retain(|k| *k != key);
        *self.local_ports.entry(key.local_port).or_default() += 1;
        self.targets.insert(conn.token, Target::Conn(key));
        self.conns.insert(key, conn);
        self.live.store(self.conns.len(), Ordering::Relaxed);
        self.settle(key);
    }

    // Brings epoll interest, timers and rx scheduling in line with the
    // connection's state after anything happened to it, and retires it once
    // both directions are closed.
    fn settle(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.is_done() {
            debug!(
                local_port = key.local_port,
                peer_port = key.peer_port,
                "virtio-vsock: connection closed"
            );
            self.remove_conn(key);
            self.queue_rst(key);
            return;
        }
        let want_out = conn.wants_out();
        if want_out != conn.out_registered {
            let event = EpollEvent::new(host_interest(want_out), conn.token);
            let fd = conn.stream().as_raw_fd();
            if let Err(e) = self.epoll.ctl(ControlOperation::Modify, fd, event) {
                self.kill(key, Kill::Host(e));
                return;
            }
            conn.out_registered = want_out;
        }
        let deadline = conn.deadline();
        if deadline != conn.scheduled_deadline {
            conn.scheduled_deadline = deadline;
            if let Some(when) = deadline {
                self.deadlines.push(Reverse((when, key)));
            }
        }
        if !conn.in_rx_ready && conn.has_rx_work() {
            conn.in_rx_ready = true;
            self.rx_ready.push_back(key);
        }
    }

    fn kill(&mut self, key: ConnKey, reason: Kill) {
        match &reason {
            // Guest protocol violations: the guest can trigger these at will.
            Kill::Unexpected { .. } | Kill::CreditOverrun { .. } | Kill::DataAfterShutdown => {
                limited!(
                    self.guest_log,
                    warn,
                    local_port = key.local_port,
                    peer_port = key.peer_port,
                    reason = %reason,
                    "virtio-vsock: resetting connection"
                );
            }
            _ => debug!(
                local_port = key.local_port,
                peer_port = key.peer_port,
                reason = %reason,
                "virtio-vsock: resetting connection"
            ),
        }
        if self.remove_conn(key).is_some() {
            self.queue_rst(key);
        }
    }

    // Drops a connection: its host socket is closed when the returned value goes.
    fn remove_conn(&mut self, key: ConnKey) -> Option<Connection> {
        let conn = self.conns.remove(&key)?;
        self.forget(conn.token, conn.stream());
        if let Some(count) = self.local_ports.get_mut(&key.local_port) {
            *count -= 1;
            if *count == 0 {
                self.local_ports.remove(&key.local_port);
            }
        }
        if conn.in_rx_ready {
            self.rx_ready.retain(|k| *k != key);
        }
        self.live.store(self.conns.len(), Ordering::Relaxed);
        Some(conn)
    }

    // Stops watching a host socket (the caller closes it).
    fn forget(&mut self, token: u64, stream: &UnixStream) {
        self.targets.remove(&token);
        // Closing the fd would deregister it too, unless it had been duplicated.
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            stream.as_raw_fd(),
            EpollEvent::default(),
        );
    }

    fn queue_rst(&mut self, key: ConnKey) {
        if self.rsts.len() >= MAX_PENDING_RSTS {
            limited!(
                self.guest_log,
                warn,
                "virtio-vsock: too many RSTs waiting for rx buffers, dropping one"
            );
            return;
        }
        self.rsts.push_back(key);
    }

    fn rst_header(&self, key: ConnKey) -> VsockHeader {
        VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            len: 0,
            op: Op::Rst,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: 0,
        }
    }

    /// Adds a host socket to the epoll set under a fresh token; `None` (and
    /// a rate-limited warning) when the kernel refuses.
    fn watch_host_socket(&mut self, fd: std::os::fd::RawFd) -> Option<u64> {
        let token = self.alloc_token();
        let event = EpollEvent::new(host_interest(false), token);
        match self.epoll.ctl(ControlOperation::Add, fd, event) {
            Ok(()) => Some(token),
            Err(e) => {
                limited!(self.host_log, warn, error = %e, "virtio-vsock: cannot watch host socket");
                None
            }
        }
    }

    fn alloc_token(&mut self) -> u64 {
        let token = self.next_token;
        // 2^64 sockets will not be opened; tokens are never reused.
        self.next_token = self.next_token.wrapping_add(1).max(FIRST_DYNAMIC_TOKEN);
        token
    }

    // A host port no live connection uses. At most `local_ports.len()` ports
    // are taken, so one of that many plus one consecutive candidates is free.
    fn alloc_local_port(&mut self) -> Option<u32> {
        for _ in 0..=self.local_ports.len() {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.local_ports.contains_key(&port) {
                return Some(port);
            }
        }
        error!("virtio-vsock: no free host port");
        None
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // Every connection's host socket closes with the table.
        self.live.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn muxer() -> (tempfile::TempDir, Muxer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = super::super::unix_backend::bind_listener(&path).unwrap();
        let muxer = Muxer::new(3, path, listener, 4, Arc::default()).unwrap();
        (dir, muxer)
    }

    #[test]
    fn local_ports_skip_ones_in_use_and_wrap() {
        let (_dir, mut m) = muxer();
        assert_eq!(m.alloc_local_port(), Some(FIRST_LOCAL_PORT));
        m.local_ports.insert(FIRST_LOCAL_PORT + 1, 1);
        m.local_ports.insert(FIRST_LOCAL_PORT + 2, 2);
        assert_eq!(m.alloc_local_port(), Some(FIRST_LOCAL_PORT + 3));
        m.next_local_port = u32::MAX;
        assert_eq!(m.alloc_local_port(), Some(u32::MAX));
        assert_eq!(m.alloc_local_port(), Some(FIRST_LOCAL_PORT));
        assert_eq!(m.alloc_local_port(), Some(FIRST_LOCAL_PORT + 3));
    }

    #[test]
    fn unknown_connection_gets_rst_but_rst_does_not() {
        let (_dir, mut m) = muxer();
        let mut header = VsockHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1234,
            dst_port: 80,
            len: 0,
            op: Op::Rw,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        };
        m.handle_guest_packet(&header, &[]);
        header.op = Op::Rst;
        m.handle_guest_packet(&header, &[]);
        let mut buf = [0u8; HEADER_SIZE];
        assert_eq!(m.next_rx_packet(&mut buf), Some(HEADER_SIZE));
        let rst = super::super::header::parse_header(&buf).unwrap();
        assert_eq!(rst.op, Op::Rst);
        assert_eq!((rst.src_port, rst.dst_port), (80, 1234));
        assert_eq!((rst.src_cid, rst.dst_cid), (HOST_CID, 3));
        assert!(!m.has_rx_work());
        assert_eq!(m.next_rx_packet(&mut buf), None);
    }

    #[test]
    fn rst_queue_is_bounded() {
        let (_dir, mut m) = muxer();
        for port in 0..(MAX_PENDING_RSTS as u32 + 10) {
            m.queue_rst(ConnKey {
                local_port: 1,
                peer_port: port,
            });
        }
        assert_eq!(m.rsts.len(), MAX_PENDING_RSTS);
    }
}
