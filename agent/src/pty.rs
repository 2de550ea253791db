//! The container's terminal, seen from the agent: the pty master that
//! libcontainer's init sends over the console socket, used asynchronously.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where the console sockets live: a short directory of the agent's own.
const CONSOLE_DIR: &str = "/run/cocoon/consoles";

/// The socket libcontainer sends a new process's terminal over. Its path is
/// short and numbered: a Unix socket path holds at most 107 bytes, and CRI's
/// container and exec ids are 64 characters each. Removed when dropped.
pub struct ConsoleSocket {
    pub path: std::path::PathBuf,
    pub listener: UnixListener,
}

impl ConsoleSocket {
    pub fn bind() -> io::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        std::fs::create_dir_all(CONSOLE_DIR)?;
        let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::path::Path::new(CONSOLE_DIR).join(number.to_string());
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        Ok(ConsoleSocket { path, listener })
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits (blocking, up to `timeout`) for the container's init to connect to
/// the console socket and send the pty master.
pub fn receive_master(listener: &UnixListener, timeout: Duration) -> io::Result<OwnedFd> {
    listener.set_nonblocking(false)?;
    let deadline = std::time::Instant::now() + timeout;
    // accept(2) has no timeout: poll for the connection first.
    loop {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the container did not send its terminal",
            ));
        }
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(listener),
            nix::poll::PollFlags::POLLIN,
        )];
        let millis = u16::try_from(remaining.as_millis()).unwrap_or(u16::MAX);
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(millis))? > 0 {
            break;
        }
    }
    let (connection, _) = listener.accept()?;
    let mut payload = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut payload)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let message = recvmsg::<()>(
        connection.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed `fd` in our table for us
                // (SCM_RIGHTS); nothing else owns it.
                let master = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                for &extra in &fds[1..] {
                    // SAFETY: as above; extra descriptors are closed at once.
                    drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(extra) });
                }
                return Ok(master);
            }
        }
    }
    Err(io::Error::other(
        "the console socket message carried no terminal",
    ))
}

/// Sets the terminal's window size (what `stty size` in the container shows).
pub fn resize(master: &OwnedFd, rows: u16, columns: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives
    // the call; the fd is a valid open terminal master.
    let result = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A pty master as a tokio stream.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    pub fn new(master: OwnedFd) -> io::Result<Self> {
        let flags = OFlag::from_bits_truncate(fcntl(master.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            master.as_raw_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )?;
        // SAFETY: `master` is an open descriptor that the AsyncFd owns from
        // here on, so it stays open and unchanged for the AsyncFd's lifetime.
        let fd =
            unsafe { AsyncFd::register(master) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(PtyMaster { fd })
    }
}

impl AsyncRead for PtyMaster {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.as_raw_fd(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(read)) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave side is closed, i.e. the process ended.
                Ok(Err(error)) if error.raw_os_error() == Some(libc::EIO) => {
                    return Poll::Ready(Ok(()))
                }
                Ok(Err(error)) => return Poll::Ready(Err(error)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
