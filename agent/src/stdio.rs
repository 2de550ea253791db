//! Process stdio: the pipes or terminal a container process gets, and the
//! vsock stream connections (port 1025) the shim attaches to them.
//!
//! The agent keeps its end of each stream (a pipe end or the terminal's
//! master) in the [`StreamBroker`] until the shim's connection for it
//! arrives; output written before that waits in the pipe, and the pipe's
//! capacity is the back-pressure. Each attached stream is copied by its own
//! task, so a slow reader only ever stalls its own process.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_protocol::stream::{self, StreamHeader, StreamKind, MAX_HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio_vsock::VsockStream;

use crate::host_only::HostOnlyListener;

use crate::pty::PtyMaster;

/// How long a new connection may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Names one stream of one process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub container_id: String,
    pub exec_id: String,
    pub kind: StreamKind,
}

/// The agent's end of a stream, waiting for its connection.
enum AgentEnd {
    /// Write end of the process's stdin pipe, and what closes it early.
    Stdin(OwnedFd, Arc<Notify>),
    /// Read end of a stdout or stderr pipe.
    Output(OwnedFd),
    /// The terminal's master side.
    Tty(OwnedFd),
}

/// The streams a process was created with: the helper's stdio, and the
/// agent's ends to register once the process exists.
pub struct ProcessStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    ends: Vec<(StreamKind, AgentEnd)>,
    stdin_closer: Option<Arc<Notify>>,
}

impl ProcessStdio {
    /// Pipes for the requested streams; /dev/null for the rest. With a
    /// terminal the process's stdio is the terminal, set up by libcontainer,
    /// and the master arrives later through [`ProcessStdio::attach_tty`].
    pub fn new(wanted: &cocoon_protocol::api::agent::Stdio) -> std::io::Result<Self> {
        let mut stdio = ProcessStdio {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
            ends: Vec::new(),
            stdin_closer: None,
        };
        if wanted.terminal {
            return Ok(stdio);
        }
        if wanted.stdin {
            let (read, write) = std::io::pipe()?;
            let closer = Arc::new(Notify::new());
            stdio.stdin = read.into();
            stdio.ends.push((
                StreamKind::Stdin,
                AgentEnd::Stdin(write.into(), closer.clone()),
            ));
            stdio.stdin_closer = Some(closer);
        }
        for (kind, wanted) in [
            (StreamKind::Stdout, wanted.stdout),
            (StreamKind::Stderr, wanted.stderr),
        ] {
            if wanted {
                let (read, write) = std::io::pipe()?;
                match kind {
                    StreamKind::Stdout => stdio.stdout = write.into(),
                    _ => stdio.stderr = write.into(),
                }
                stdio.ends.push((kind, AgentEnd::Output(read.into())));
            }
        }
        Ok(stdio)
    }

    /// The terminal master received from the container's init.
    pub fn attach_tty(&mut self, master: OwnedFd) {
        self.ends.push((StreamKind::Tty, AgentEnd::Tty(master)));
    }

    /// What closes stdin before its stream ends (CloseStdin).
    pub fn stdin_closer(&self) -> Option<Arc<Notify>> {
        self.stdin_closer.clone()
    }
}

/// Matches stream connections with the processes' ends.
#[derive(Clone, Default)]
pub struct StreamBroker {
    waiting: Arc<Mutex<HashMap<StreamKey, AgentEnd>>>,
}

impl StreamBroker {
    /// Registers a process's ends; its streams can be attached from now on.
    pub fn register(&self, container_id: &str, exec_id: &str, stdio: &mut ProcessStdio) {
        let mut waiting = lock(&self.waiting);
        for (kind, end) in stdio.ends.drain(..) {
            let key = StreamKey {
                container_id: container_id.into(),
                exec_id: exec_id.into(),
                kind,
            };
            waiting.insert(key, end);
        }
    }

    /// Drops the unattached ends of a container's processes (on removal).
    pub fn forget_container(&self, container_id: &str) {
        lock(&self.waiting).retain(|key, _| key.container_id != container_id);
    }

    /// Closes stdin if its stream was never attached. Attached streams are
    /// closed by their copy task, told through the process's closer.
    pub fn close_unattached_stdin(&self, container_id: &str, exec_id: &str) {
        lock(&self.waiting).remove(&StreamKey {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            kind: StreamKind::Stdin,
        });
    }

    fn take(&self, header: &StreamHeader) -> Option<AgentEnd> {
        lock(&self.waiting).remove(&StreamKey {
            container_id: header.container_id.clone(),
            exec_id: header.exec_id.clone(),
            kind: header.kind,
        })
    }

    /// Accepts stream connections on `listener` forever.
    pub async fn serve(self, listener: HostOnlyListener) -> std::io::Result<()> {
        loop {
            let connection = listener.accept().await?;
            let broker = self.clone();
            tokio::spawn(async move {
                if let Err(error) = broker.attach(connection).await {
                    tracing::warn!("stdio stream: {error}");
                }
            });
        }
    }

    async fn attach(&self, mut connection: VsockStream) -> std::io::Result<()> {
        let line = tokio::time::timeout(HEADER_TIMEOUT, read_header_line(&mut connection))
            .await
            .map_err(|_| std::io::Error::other("no stream header within 5 s"))??;
        let header = match StreamHeader::parse(&line) {
            Ok(header) => header,
            Err(error) => {
                connection
                    .write_all(&stream::refusal(&error.to_string()))
                    .await?;
                return Err(std::io::Error::other(error.to_string()));
            }
        };
        let Some(end) = self.take(&header) else {
            let reason = format!("no {header} to attach (no such process, or already attached)");
            connection.write_all(&stream::refusal(&reason)).await?;
            return Err(std::io::Error::other(reason));
        };
        connection.write_all(stream::ACCEPTED).await?;
        tracing::debug!("attached {header}");
        match end {
            AgentEnd::Output(read) => {
                let mut source = pipe::Receiver::from_owned_fd(read)?;
                pump(&mut source, &mut connection).await
            }
            AgentEnd::Stdin(write, closer) => {
                let mut sink = pipe::Sender::from_owned_fd(write)?;
                pump_until_closed(&mut connection, &mut sink, &closer).await
            }
            AgentEnd::Tty(master) => {
                let master = PtyMaster::new(master)?;
                let (mut master_read, mut master_write) = tokio::io::split(master);
                let (mut connection_read, mut connection_write) = connection.into_split();
                let input = async {
                    // Input ends with the connection; the terminal stays.
                    let _ = tokio::io::copy(&mut connection_read, &mut master_write).await;
                };
                let output = pump(&mut master_read, &mut connection_write);
                let (_, output) = tokio::join!(input, output);
                output
            }
        }
    }
}

/// Copies until EOF, then half-closes the destination so the reader sees EOF.
async fn pump(
    source: &mut (impl AsyncRead + Unpin),
    destination: &mut (impl AsyncWrite + Unpin),
) -> std::io::Result<()> {
    let copied = tokio::io::copy(source, destination).await;
    let closed = destination.shutdown().await;
    copied.map(drop).and(closed)
}

/// Copies stdin until the connection's EOF, or until CloseStdin once what has
/// already arrived is written.
async fn pump_until_closed(
    source: &mut (impl AsyncRead + Unpin),
    sink: &mut pipe::Sender,
    closer: &Notify,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            biased;
            read = source.read(&mut buffer) => read?,
            () = closer.notified() => 0,
        };
        if read == 0 {
            return Ok(());
        }
        match sink.write_all(&buffer[..read]).await {
            Ok(()) => {}
            // The process closed its stdin or ended: nothing more to deliver.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(error) => return Err(error),
        }
    }
}

/// Reads the header line byte by byte: what follows belongs to the stream.
async fn read_header_line(connection: &mut VsockStream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(64);
    loop {
        let byte = connection.read_u8().await?;
        if byte == b'\n' {
            return Ok(line);
        }
        line.push(byte);
        if line.len() > MAX_HEADER_LEN {
            return Ok(line);
        }
    }
}

/// Lock poisoning cannot leave the map inconsistent: every update is one map
/// operation.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
