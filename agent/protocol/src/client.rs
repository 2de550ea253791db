//! The host side of the agent API: what the shim (and the tests) use to talk
//! to a guest through cocoon-vmm's hybrid vsock socket: the connection and
//! readiness wait, stdio streams, and the typed calls ([`AgentCalls`]).

mod calls;

pub use calls::{AgentCalls, CallError, CallResult};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::api::agent::HealthRequest;
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
