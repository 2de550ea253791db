//! A process's stdio between containerd and the guest: containerd hands us
//! FIFO paths (or a `file://` or `binary://` log URI); the agent gives us
//! one vsock stream per standard stream (or one for a terminal). One task
//! copies each.

use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use cocoon_protocol::api::agent::Stdio as WantedStdio;
use cocoon_protocol::client::Agent;
use cocoon_protocol::stream::{StreamHeader, StreamKind};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::log_driver::{LogDriver, LogDriverError};

/// How long, after a process exits, its output may keep flowing before the
/// exit is reported anyway (a background child can hold stdout open).
pub const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The stdio containerd asked for.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    /// What the agent must wire up.
    pub fn wanted(&self) -> WantedStdio {
        let mut wanted = WantedStdio::new();
        wanted.terminal = self.terminal;
        wanted.stdin = !self.terminal && !self.stdin.is_empty();
        wanted.stdout = !self.terminal && !self.stdout.is_empty();
        wanted.stderr = !self.terminal && !self.stderr.is_empty();
        wanted
    }
}

/// The copies of one process; `output` finishes when all output is out.
pub struct Relay {
    pub output: JoinHandle<()>,
    pub input: Option<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("attaching {what}: {message}")]
    Attach { what: String, message: String },
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    LogDriver(#[from] LogDriverError),
}

/// Where containerd wants a process's output to go.
struct Sinks {
    stdout: Option<Sink>,
    stderr: Option<Sink>,
    /// The `binary://` driver both go to, if that is where.
    driver: Option<LogDriver>,
}

impl Sinks {
    async fn open(paths: &StdioPaths, container: &str, namespace: &str) -> Result<Self, IoError> {
        if paths.stdout.starts_with("binary://") {
            let (driver, inputs) = LogDriver::start(&paths.stdout, container, namespace).await?;
            return Ok(Sinks {
                stdout: Some(Box::new(inputs.stdout)),
                stderr: Some(Box::new(inputs.stderr)),
                driver: Some(driver),
            });
        }
        // A terminal has one output: nerdctl names a stderr FIFO it never
        // makes (as runc's shim, never open it).
        let stderr = if paths.terminal {
            None
        } else {
            open_output(&paths.stderr).await?
        };
        Ok(Sinks {
            stdout: open_output(&paths.stdout).await?,
            stderr,
            driver: None,
        })
    }
}

/// Connects every stream of process (`container`, `exec`) to containerd's
/// side and starts copying.
pub async fn attach(
    agent: &Agent,
    namespace: &str,
    container: &str,
    exec: &str,
    paths: &StdioPaths,
) -> Result<Relay, IoError> {
    let header = |kind| StreamHeader {
        container_id: container.into(),
        exec_id: exec.into(),
        kind,
    };
    let open = |kind| {
        let header = header(kind);
        async move {
            agent
                .open_stream(&header)
                .await
                .map_err(|e| IoError::Attach {
                    what: header.to_string(),
                    message: e.to_string(),
                })
        }
    };

    let sinks = Sinks::open(paths, container, namespace).await?;
    let driver = sinks.driver;
    if paths.terminal {
        let stream = open(StreamKind::Tty).await?;
        let (mut from_guest, mut to_guest) = stream.into_split();
        let sink = sinks.stdout;
        drop(sinks.stderr);
        let output = tokio::spawn(async move {
            if let Some(mut sink) = sink {
                pump(&mut from_guest, &mut sink).await;
            }
            if let Some(driver) = driver {
                driver.finish().await;
            }
        });
        let input = if paths.stdin.is_empty() {
            None
        } else {
            let path = paths.stdin.clone();
            Some(tokio::spawn(async move {
                if let Some(mut source) = open_input(&path).await {
                    // The terminal stays open after input ends.
                    let _ = tokio::io::copy(&mut source, &mut to_guest).await;
                }
            }))
        };
        return Ok(Relay { output, input });
    }

    let mut copies = Vec::new();
    for (kind, sink) in [
        (StreamKind::Stdout, sinks.stdout),
        (StreamKind::Stderr, sinks.stderr),
    ] {
        let Some(mut sink) = sink else {
            continue;
        };
        let mut stream = open(kind).await?;
        copies.push(tokio::spawn(async move {
            pump(&mut stream, &mut sink).await;
        }));
    }
    let input = if paths.stdin.is_empty() {
        None
    } else {
        let mut stream = open(StreamKind::Stdin).await?;
        let path = paths.stdin.clone();
        Some(tokio::spawn(async move {
            if let Some(mut source) = open_input(&path).await {
                let _ = tokio::io::copy(&mut source, &mut stream).await;
            }
            // EOF from containerd: the process's stdin closes.
            let _ = stream.shutdown().await;
        }))
    };
    let output = tokio::spawn(async move {
        for copy in copies {
            let _ = copy.await;
        }
        // Both sinks are closed now: the driver sees the end of its input.
        if let Some(driver) = driver {
            driver.finish().await;
        }
    });
    Ok(Relay { output, input })
}

async fn pump(source: &mut (impl AsyncRead + Unpin), sink: &mut (impl AsyncWrite + Unpin)) {
    if let Err(error) = tokio::io::copy(source, sink).await {
        tracing::debug!("output copy ended: {error}");
    }
    let _ = sink.flush().await;
}

type Sink = Box<dyn AsyncWrite + Send + Unpin>;

/// containerd's side of an output stream: a FIFO, or a `file://` log
/// (`binary://` drivers are started by [`Sinks::open`]).
async fn open_output(path: &str) -> Result<Option<Sink>, IoError> {
    if path.is_empty() {
        return Ok(None);
    }
    let open_error = |source| IoError::Open {
        path: path.into(),
        source,
    };
    if let Some(file) = path.strip_prefix("file://") {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .await
            .map_err(open_error)?;
        return Ok(Some(Box::new(file)));
    }
    let path = path.strip_prefix("fifo://").unwrap_or(path);
    // Read-write: opening cannot fail for lack of a reader, and containerd
    // opened its reading end before Create anyway.
    let sender = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(open_error)?;
    Ok(Some(Box::new(sender)))
}

/// containerd's stdin FIFO, once its writer has opened it (a FIFO read
/// before that would see EOF at once).
async fn open_input(path: &str) -> Option<pipe::Receiver> {
    let path = path.strip_prefix("fifo://").unwrap_or(path).to_owned();
    let opened = tokio::task::spawn_blocking(move || std::fs::File::open(path)).await;
    match opened {
        Ok(Ok(file)) => pipe::Receiver::from_file(file).ok(),
        Ok(Err(error)) => {
            tracing::warn!("opening stdin: {error}");
            None
        }
        Err(_) => None,
    }
}

/// Releases a stdin relay still waiting for containerd to open the FIFO
/// (the process is gone): opening the writing end ourselves lets the blocked
/// open return, and closing it is EOF.
pub fn release_stdin(path: &str) {
    if path.is_empty() {
        return;
    }
    let path = path.strip_prefix("fifo://").unwrap_or(path);
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
}
