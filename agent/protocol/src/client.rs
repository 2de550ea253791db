//! The host side of the agent API: what the shim (and the tests) use to talk
//! to a guest through cocoon-vmm's hybrid vsock socket: the connection and
//! readiness wait, stdio streams, and the typed calls ([`AgentCalls`]).

mod calls;

pub use calls::{AgentCalls, CallError, CallResult};

/// A container's root file system as the guest finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRootfs {
    /// Its absolute guest path, in the share.
    pub path: String,
    /// Whether `path` is the image alone, read-only, to stack a writable
    /// layer on the scratch disk over (else the container writes in it).
    pub writable_layer_on_scratch_disk: bool,
}

impl GuestRootfs {
    /// A root file system the container writes in, at `path`.
    pub fn writable(path: impl Into<String>) -> Self {
        GuestRootfs {
            path: path.into(),
            writable_layer_on_scratch_disk: false,
        }
    }
}

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::api::agent::{HealthRequest, IdentityRequest};
use crate::api::agent_ttrpc::AgentClient;
use crate::hybrid_vsock::{self, ConnectError};
use crate::stream::{StreamHeader, MAX_HEADER_LEN};
use crate::{AGENT_RPC_PORT, AGENT_STDIO_PORT};

/// How long one handshake with the VMM may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while the guest boots.
const RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// The deadline of a call, unless [`Agent::with_call_timeout`] sets another.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the agent did not answer within {waited:?}: {last}")]
    NotReady { waited: Duration, last: String },
    #[error("the agent refused the {what} stream: {reason}")]
    StreamRefused { what: String, reason: String },
    #[error("opening the {what} stream: {source}")]
    StreamIo {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A connection to one guest's agent.
#[derive(Clone)]
pub struct Agent {
    vsock_uds: PathBuf,
    rpc: AgentClient,
    call_timeout: Duration,
}

impl Agent {
    /// Connects to the agent behind `vsock_uds`, retrying until `deadline`
    /// while the guest boots, and checks it answers a health call.
    pub async fn connect(vsock_uds: &Path, deadline: Duration) -> Result<Self, ClientError> {
        let start = Instant::now();
        loop {
            let last = match Self::connect_once(vsock_uds).await {
                Ok(agent) => return Ok(agent),
                Err(error) => error,
            };
            if start.elapsed() + RETRY_INTERVAL >= deadline {
                return Err(ClientError::NotReady {
                    waited: start.elapsed(),
                    last,
                });
            }
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
    }

    async fn connect_once(vsock_uds: &Path) -> Result<Self, String> {
        let stream = hybrid_vsock::connect(vsock_uds, AGENT_RPC_PORT, HANDSHAKE_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let rpc = AgentClient::new(ttrpc::r#async::Client::new(stream.into()));
        rpc.health(
            ttrpc::context::with_timeout(HANDSHAKE_TIMEOUT.as_nanos() as i64),
            &HealthRequest::new(),
        )
        .await
        .map_err(|e| format!("health check failed: {e}"))?;
        Ok(Agent {
            vsock_uds: vsock_uds.to_owned(),
            rpc,
            call_timeout: CALL_TIMEOUT,
        })
    }

    /// The same connection, whose calls get `timeout` instead.
    pub fn with_call_timeout(&self, timeout: Duration) -> Agent {
        Agent {
            call_timeout: timeout,
            ..self.clone()
        }
    }

    fn deadline(&self) -> ttrpc::context::Context {
        deadline(self.call_timeout)
    }

    /// Gives the guest its own identity (SetIdentity; `request` from
    /// [`host_identity`], made just before the call). A guest booted with
    /// [`crate::TEMPLATE_ARG`], and so every VM restored from its snapshot,
    /// refuses to mount, set up its network or run anything before this
    /// call succeeded.
    pub async fn set_identity(&self, request: &IdentityRequest) -> Result<(), CallError> {
        self.rpc.set_identity(self.deadline(), request).await?;
        Ok(())
    }

    /// The generated ttrpc client, for raw requests; prefer [`AgentCalls`].
    pub fn rpc(&self) -> &AgentClient {
        &self.rpc
    }

    /// Opens one stdio stream of a process; the agent must accept it.
    pub async fn open_stream(&self, header: &StreamHeader) -> Result<UnixStream, ClientError> {
        let what = header.to_string();
        let io_error = |source| ClientError::StreamIo {
            what: what.clone(),
            source,
        };
        let mut stream =
            hybrid_vsock::connect(&self.vsock_uds, AGENT_STDIO_PORT, HANDSHAKE_TIMEOUT).await?;
        stream
            .write_all(header.encode().as_bytes())
            .await
            .map_err(io_error)?;
        let mut reply = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await.map_err(io_error)? == 0 || reply.len() > MAX_HEADER_LEN
            {
                return Err(ClientError::StreamRefused {
                    what,
                    reason: "connection closed during the header".into(),
                });
            }
            if byte[0] == b'\n' {
                break;
            }
            reply.push(byte[0]);
        }
        match reply.as_slice() {
            b"OK" => Ok(stream),
            other => Err(ClientError::StreamRefused {
                what,
                reason: String::from_utf8_lossy(other.strip_prefix(b"ERR ").unwrap_or(other))
                    .into_owned(),
            }),
        }
    }
}

/// A ttrpc context with a deadline.
pub fn deadline(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos() as i64)
}

/// Bytes of entropy [`host_identity`] gives a guest (the agent takes 32 to
/// 512).
pub const IDENTITY_ENTROPY_BYTES: usize = 64;

/// A SetIdentity request with [`IDENTITY_ENTROPY_BYTES`] from the host's
/// getrandom(2) and the host's clock now.
pub fn host_identity() -> std::io::Result<IdentityRequest> {
    let mut entropy = vec![0u8; IDENTITY_ENTROPY_BYTES];
    let mut filled = 0;
    while filled < entropy.len() {
        let rest = &mut entropy[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`,
        // which is valid and exclusively ours for the call.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if got < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        filled += got as usize;
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| std::io::Error::other("the host's clock is before 1970"))?;
    let mut request = IdentityRequest::new();
    request.entropy = entropy;
    request.realtime_unix_nanos = u64::try_from(now.as_nanos())
        .map_err(|_| std::io::Error::other("the host's clock is past 2554"))?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_identity_is_fresh_entropy_and_the_clock() {
        let before = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let first = host_identity().unwrap();
        let second = host_identity().unwrap();
        assert_eq!(first.entropy.len(), IDENTITY_ENTROPY_BYTES);
        assert_ne!(first.entropy, second.entropy);
        assert!(first.realtime_unix_nanos >= before);
        assert!(second.realtime_unix_nanos >= first.realtime_unix_nanos);
    }
}
