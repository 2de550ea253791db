//! The host side of "hybrid vsock": Unix sockets in the Firecracker convention.
//!
//! - Host → guest: a host process connects to the device's socket, writes
//!   `CONNECT <guest-port>\n` and reads back `OK <host-port>\n`; from then on
//!   the stream is the guest connection.
//! - Guest → host: a guest connection to host port P is delivered to the Unix
//!   socket `<device-socket>_P`.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Longest `CONNECT` line we accept, newline included. `CONNECT 4294967295\n`
/// is 19 bytes; the slack allows for `\r` and extra spaces.
pub const MAX_CONNECT_LINE: usize = 32;

/// Why a host client's `CONNECT` line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("CONNECT line longer than {MAX_CONNECT_LINE} bytes")]
    TooLong,
    #[error("malformed CONNECT line")]
    Malformed,
    #[error("connection closed before the CONNECT line was complete")]
    Eof,
}

/// Parses one `CONNECT <port>` line (without or with its trailing newline).
///
/// Like Firecracker, the keyword is case-insensitive and surrounding ASCII
/// whitespace (including a `\r`) is ignored; nothing may follow the port.
pub fn parse_connect_line(line: &[u8]) -> Result<u32, HandshakeError> {
    let text = std::str::from_utf8(line).map_err(|_| HandshakeError::Malformed)?;
    let mut words = text.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(keyword), Some(port), None) if keyword.eq_ignore_ascii_case("CONNECT") => {
            port.parse().map_err(|_| HandshakeError::Malformed)
        }
        _ => Err(HandshakeError::Malformed),
    }
}

/// The reply that tells a host client its connection is established.
pub fn ok_line(local_port: u32) -> Vec<u8> {
    format!("OK {local_port}\n").into_bytes()
}

/// The socket a guest connection to host port `port` is delivered to.
pub fn guest_service_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut path = OsString::from(uds_path.as_os_str());
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// Accumulates a `CONNECT` line that may arrive in pieces.
#[derive(Debug, Default)]
pub(crate) struct ConnectLine {
    line: Vec<u8>,
}

impl ConnectLine {
    /// Reads what is available from `stream`. Returns the requested guest port
    /// once the line is complete, `None` if more bytes are needed.
    ///
    /// Reads one byte at a time so that nothing after the newline is consumed:
    /// a client may pipeline stream data right behind its request.
    pub(crate) fn poll(&mut self, stream: &mut impl Read) -> Result<Option<u32>, HandshakeError> {
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => return Err(HandshakeError::Eof),
                Ok(_) => {
                    if byte[0] == b'\n' {
                        return parse_connect_line(&self.line).map(Some);
                    }
                    // The newline still has to fit.
                    if self.line.len() + 1 >= MAX_CONNECT_LINE {
                        return Err(HandshakeError::TooLong);
                    }
                    self.line.push(byte[0]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(HandshakeError::Eof),
            }
        }
    }
}

/// Why the device's listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{0}: another process is listening there")]
    InUse(PathBuf),
    #[error("{0}: exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("{path}: cannot remove stale socket: {source}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: cannot listen: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds a non-blocking listener at `path`. A socket file left behind by a dead
/// VMM is removed first; a live one (something accepts connections) or a file
/// that is not a socket is left alone and reported.
pub(crate) fn bind_listener(path: &Path) -> Result<UnixListener, ListenError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::InUse(path.to_owned())),
            // Refused means nobody listens: the socket is stale. (NotFound: it
            // vanished meanwhile.) Anything else, e.g. EACCES, proves nothing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.kind() != io::ErrorKind::ConnectionRefused => {
                return Err(ListenError::Bind {
                    path: path.to_owned(),
                    source: e,
                })
            }
            Err(_) => match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ListenError::RemoveStale {
                        path: path.to_owned(),
                        source,
                    })
                }
            },
        },
        Ok(_) => return Err(ListenError::NotASocket(path.to_owned())),
        Err(_) => {}
    }
    let bind_error = |source| ListenError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok(listener)
}

/// Connects to the Unix socket at `path` without blocking. For Unix sockets
/// connect(2) either completes at once or fails (EAGAIN when the listener's
/// backlog is full), so the caller never sees a half-open socket.
pub(crate) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    // Room for the terminating NUL; an embedded NUL would silently truncate the path.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path does not fit in sockaddr_un",
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // Cannot fail: len is below size_of::<sockaddr_un>().
    let len = libc::socklen_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `addr` is a valid, initialised sockaddr_un that outlives the call,
    // and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 1024"), Ok(1024));
        assert_eq!(parse_connect_line(b"connect 52\r"), Ok(52));
        assert_eq!(parse_connect_line(b"  CONNECT   7 "), Ok(7));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Ok(u32::MAX));
        for bad in [
            &b""[..],
            b"CONNECT",
            b"CONNECT 4294967296",
            b"CONNECT -1",
            b"CONNECT 0x10",
            b"CONNECT 1 2",
            b"CONNEC 1",
            b"OK 1",
            b"CONNECT \xff",
        ] {
            assert_eq!(parse_connect_line(bad), Err(HandshakeError::Malformed));
        }
    }

    #[test]
    fn line_in_pieces_keeps_the_rest() {
        let (mut host, mut dev) = UnixStream::pair().unwrap();
        dev.set_nonblocking(true).unwrap();
        let mut line = ConnectLine::default();
        host.write_all(b"CONN").unwrap();
        assert_eq!(line.poll(&mut dev), Ok(None));
        host.write_all(b"ECT 9").unwrap();
        assert_eq!(line.poll(&mut dev), Ok(None));
        host.write_all(b"9\nhello").unwrap();
        assert_eq!(line.poll(&mut dev), Ok(Some(99)));
        let mut rest = [0u8; 5];
        dev.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"hello");
    }

    #[test]
    fn overlong_and_eof() {
        let (mut host, mut dev) = UnixStream::pair().unwrap();
        dev.set_nonblocking(true).unwrap();
        host.write_all(&[b'x'; MAX_CONNECT_LINE]).unwrap();
        assert_eq!(
            ConnectLine::default().poll(&mut dev),
            Err(HandshakeError::TooLong)
        );
        let (host, mut dev) = UnixStream::pair().unwrap();
        dev.set_nonblocking(true).unwrap();
        drop(host);
        assert_eq!(
            ConnectLine::default().poll(&mut dev),
            Err(HandshakeError::Eof)
        );
    }

    #[test]
    fn service_path() {
        assert_eq!(
            guest_service_path(Path::new("/run/v.sock"), 1024),
            PathBuf::from("/run/v.sock_1024")
        );
        assert_eq!(ok_line(1 << 30), b"OK 1073741824\n");
    }

    #[test]
    fn nonblocking_connect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        assert!(connect_nonblocking(&path).is_err());
        let listener = UnixListener::bind(&path).unwrap();
        let mut client = connect_nonblocking(&path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        let long = PathBuf::from("/".repeat(200));
        assert!(connect_nonblocking(&long).is_err());
    }

    #[test]
    fn stale_socket_is_replaced_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        // A listener that died without unlinking its socket.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = bind_listener(&path).unwrap();
        assert!(matches!(bind_listener(&path), Err(ListenError::InUse(_))));
        drop(live);
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            bind_listener(&file),
            Err(ListenError::NotASocket(_))
        ));
        assert!(file.exists());
    }
}
