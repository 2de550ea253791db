//! containerd's `binary://` log driver: `binary:///path/to/driver?key=value`
//! names a program that gets a process's stdout on fd 3 and stderr on fd 4,
//! closes (or writes to) fd 5 once it is ready, and is told the container by
//! `CONTAINER_ID` and `CONTAINER_NAMESPACE`, its only environment. The query
//! becomes its arguments (`key value`). nerdctl's and Docker's log drivers
//! work this way.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// How long a driver may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a driver may take to finish after its input ended (as
/// containerd's own shims allow).
const FINISH_TIMEOUT: Duration = Duration::from_secs(12);

/// A log driver URI taken apart.
#[derive(Debug, PartialEq, Eq)]
pub struct DriverCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogDriverError {
    #[error("log URI {uri:?}: {reason}")]
    BadUri { uri: String, reason: &'static str },
    #[error("starting the log driver {program}: {source}")]
    Start {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the log driver {program} did not get ready within {READY_TIMEOUT:?}")]
    NotReady { program: String },
}

impl DriverCommand {
    /// Parses `binary:///path?key=value&flag`: percent-decoded path, and the
    /// query's pairs in order as arguments.
    pub fn parse(uri: &str) -> Result<Self, LogDriverError> {
        let bad = |reason| LogDriverError::BadUri {
            uri: uri.into(),
            reason,
        };
        let rest = uri
            .strip_prefix("binary://")
            .ok_or_else(|| bad("not a binary:// URI"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let path = percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .map_err(|_| bad("the path is not UTF-8"))?;
        if !path.starts_with('/') {
            return Err(bad("the driver must be an absolute path (binary:///path)"));
        }
        let args = form_urlencoded::parse(query.as_bytes())
            .flat_map(|(key, value)| [key.into_owned(), value.into_owned()])
            .collect();
        Ok(DriverCommand {
            program: PathBuf::from(path.into_owned()),
            args,
        })
    }
}

/// A running log driver and the two pipes that feed it.
pub struct LogDriver {
    child: tokio::process::Child,
    program: String,
}

/// The writing ends for a process's stdout and stderr.
pub struct DriverInputs {
    pub stdout: pipe::Sender,
    pub stderr: pipe::Sender,
}

impl LogDriver {
    /// Starts the driver `uri` names for container `container_id` and waits
    /// until it is ready.
    pub async fn start(
        uri: &str,
        container_id: &str,
        namespace: &str,
    ) -> Result<(Self, DriverInputs), LogDriverError> {
        let command = DriverCommand::parse(uri)?;
        let program = command.program.display().to_string();
        let start_error = |source| LogDriverError::Start {
            program: program.clone(),
            source,
        };
        let (stdout_reader, stdout_writer) = pipe().map_err(start_error)?;
        let (stderr_reader, stderr_writer) = pipe().map_err(start_error)?;
        let (ready_reader, ready_writer) = pipe().map_err(start_error)?;
        let child_fds = [
            stdout_reader.as_raw_fd(),
            stderr_reader.as_raw_fd(),
            ready_writer.as_raw_fd(),
        ];

        let mut std_command = std::process::Command::new(&command.program);
        std_command
            .args(&command.args)
            .env_clear()
            .env("CONTAINER_ID", container_id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure runs in the forked child before exec and only
        // calls fcntl and dup2, which are async-signal-safe; it allocates
        // nothing and touches no lock.
        unsafe {
            std_command.pre_exec(move || place_fds(child_fds));
        }
        let child = tokio::process::Command::from(std_command)
            .kill_on_drop(true)
            .spawn()
            .map_err(start_error)?;
        // The child has its copies; ours would keep the pipes open.
        drop((stdout_reader, stderr_reader, ready_writer));

        let mut ready = pipe::Receiver::from_owned_fd(ready_reader).map_err(start_error)?;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(READY_TIMEOUT, ready.read(&mut byte)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(start_error(error)),
            Err(_) => return Err(LogDriverError::NotReady { program }),
        }
        let inputs = DriverInputs {
            stdout: pipe::Sender::from_owned_fd(stdout_writer).map_err(start_error)?,
            stderr: pipe::Sender::from_owned_fd(stderr_writer).map_err(start_error)?,
        };
        Ok((LogDriver { child, program }, inputs))
    }

    /// Once its inputs are closed: lets the driver finish, or kills it.
    pub async fn finish(mut self) {
        match tokio::time::timeout(FINISH_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if !status.success() => {
                tracing::warn!("log driver {} exited with {status}", self.program)
            }
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    "log driver {} still running {FINISH_TIMEOUT:?} after its input ended; killing it",
                    self.program
                );
                let _ = self.child.kill().await;
            }
        }
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// In the child: puts `fds` at 3, 4 and 5. They are first moved above 5, so
/// that placing one never overwrites another still to be placed.
fn place_fds(fds: [RawFd; 3]) -> std::io::Result<()> {
    let mut high = [0; 3];
    for (slot, fd) in high.iter_mut().zip(fds) {
        // SAFETY: fcntl on a descriptor we own; F_DUPFD_CLOEXEC allocates a
        // new descriptor and touches no memory.
        *slot = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 6) };
        if *slot < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (target, fd) in (3..).zip(high) {
        // SAFETY: dup2 between descriptors; the copy at `target` is not
        // close-on-exec, which is what the driver needs.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_gives_the_program_and_its_arguments_in_order() {
        let command =
            DriverCommand::parse("binary:///usr/local/bin/my%20logger?tag=web&max-size=10m&flag")
                .unwrap();
        assert_eq!(command.program, PathBuf::from("/usr/local/bin/my logger"));
        assert_eq!(
            command.args,
            ["tag", "web", "max-size", "10m", "flag", ""].map(String::from)
        );
        let bare = DriverCommand::parse("binary:///bin/logger").unwrap();
        assert!(bare.args.is_empty());
    }

    #[test]
    fn relative_or_foreign_uris_are_refused() {
        for uri in ["binary://logger", "file:///x", "binary://host/bin/x"] {
            let error = DriverCommand::parse(uri).unwrap_err().to_string();
            assert!(error.contains(uri), "{error}");
        }
    }

    #[tokio::test]
    async fn a_driver_gets_stdout_and_stderr_apart_and_its_container() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("driver");
        std::fs::write(
            &script,
            "#!/bin/sh\nexec 5>&-\ncat <&3 >\"$1.out\" & cat <&4 >\"$1.err\"; wait\n\
             echo \"$CONTAINER_NAMESPACE/$CONTAINER_ID $HOME\" >\"$1.env\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let base = dir.path().join("log");
        let uri = format!("binary://{}?{}", script.display(), base.display());
        let (driver, mut inputs) = LogDriver::start(&uri, "c1", "ns").await.unwrap();
        inputs.stdout.write_all(b"to stdout\n").await.unwrap();
        inputs.stderr.write_all(b"to stderr\n").await.unwrap();
        drop(inputs);
        driver.finish().await;
        let read = |suffix: &str| std::fs::read_to_string(format!("{}.{suffix}", base.display()));
        assert_eq!(read("out").unwrap(), "to stdout\n");
        assert_eq!(read("err").unwrap(), "to stderr\n");
        assert_eq!(read("env").unwrap(), "ns/c1 \n");
    }

    #[tokio::test]
    async fn a_missing_driver_is_a_clear_error() {
        let error = match LogDriver::start("binary:///no/such/driver", "c1", "ns").await {
            Ok(_) => panic!("started a missing driver"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("/no/such/driver"), "{error}");
    }
}
