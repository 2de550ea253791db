//! The host side of cocoon-vmm's hybrid vsock: a Unix socket on which
//! `CONNECT <port>\n` opens a connection to a guest port (the Firecracker
//! convention).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest handshake reply we accept (`OK <u32>\n` is at most 14 bytes).
const MAX_REPLY_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach the VM's vsock socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("guest port {port}: nothing listens there (yet)")]
    Refused { port: u32 },
    #[error("guest port {port}: handshake failed: {reason}")]
    Handshake { port: u32, reason: String },
    #[error("guest port {port}: no handshake reply within {0:?}", timeout)]
    Timeout { port: u32, timeout: Duration },
}

/// Opens a stream to `port` in the guest behind the VMM socket `uds`.
pub async fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, ConnectError> {
    tokio::time::timeout(timeout, handshake(uds, port))
        .await
        .unwrap_or(Err(ConnectError::Timeout { port, timeout }))
}

async fn handshake(uds: &Path, port: u32) -> Result<UnixStream, ConnectError> {
    let socket_error = |source| ConnectError::Socket {
        path: uds.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(uds).await.map_err(socket_error)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(socket_error)?;
    let reply = read_line(&mut stream, port).await?;
    if reply.starts_with("OK ") {
        Ok(stream)
    } else {
        Err(ConnectError::Handshake {
            port,
            reason: format!("unexpected reply {reply:?}"),
        })
    }
}

/// Reads the reply byte by byte: what follows the newline is already the
/// guest's data and must stay in the socket.
async fn read_line(stream: &mut UnixStream, port: u32) -> Result<String, ConnectError> {
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        let read = stream
            .read(&mut byte)
            .await
            .map_err(|e| ConnectError::Handshake {
                port,
                reason: e.to_string(),
            })?;
        if read == 0 {
            // The VMM closes the socket when no guest listener accepted.
            return Err(ConnectError::Refused { port });
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY_LEN {
            return Err(ConnectError::Handshake {
                port,
                reason: "reply line too long".into(),
            });
        }
    }
}
