//! Taking over a file descriptor that whoever started the VMM left open
//! across exec and named on the command line (`--net-fd`, `--disk-fd`):
//! the checks every such fd needs before the device that uses it checks
//! what kind of file it is.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Why an inherited fd cannot be taken over. `option` is the command-line
/// option that named it, so that the message says which one is wrong.
#[derive(Debug, thiserror::Error)]
pub enum InheritedFdError {
    #[error("{option} {fd}: 0, 1 and 2 are the VMM's standard streams")]
    StandardStream { option: &'static str, fd: RawFd },
    #[error("{option} {fd} is not an open file descriptor (was it inherited without CLOEXEC?): {source}")]
    NotOpen {
        option: &'static str,
        fd: RawFd,
        source: io::Error,
    },
    #[error("{option} {fd}: setting close-on-exec: {source}")]
    CloseOnExec {
        option: &'static str,
        fd: RawFd,
        source: io::Error,
    },
}

/// Takes over `fd`, named by `option`: it must be open, not one of the
/// standard streams, and owned by nothing else in this process (it was
/// inherited across exec). Makes it close-on-exec: the VMM runs nothing,
/// but a disk or a tap must never leak into another program.
pub fn take(option: &'static str, fd: RawFd) -> Result<OwnedFd, InheritedFdError> {
    if (0..=2).contains(&fd) {
        return Err(InheritedFdError::StandardStream { option, fd });
    }
    // SAFETY: F_GETFD only reads the flags of `fd`, if it is open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(InheritedFdError::NotOpen {
            option,
            fd,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is open (checked above) and owned by nothing else in this
    // process: it was inherited and named to us on the command line (the
    // standard streams, which std uses, are refused above). From here the
    // OwnedFd is its only owner and closes it, also on the error below.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD sets the descriptor flags of `fd`, which we own.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } != 0 {
        return Err(InheritedFdError::CloseOnExec {
            option,
            fd,
            source: io::Error::last_os_error(),
        });
    }
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn refuses_the_standard_streams_and_closed_fds() {
        let error = take("--disk-fd", 2).expect_err("stderr is no disk");
        assert!(matches!(
            error,
            InheritedFdError::StandardStream { fd: 2, .. }
        ));
        assert!(error.to_string().starts_with("--disk-fd 2:"), "{error}");

        // Far above any open fd (closing one of ours instead would race with
        // the other tests' threads, which may get its number next).
        let error = take("--net-fd", i32::MAX - 1).expect_err("a closed fd");
        assert!(matches!(error, InheritedFdError::NotOpen { .. }), "{error}");
    }

    #[test]
    fn takes_an_open_fd_and_makes_it_close_on_exec() {
        let fd = tempfile::tempfile().unwrap().into_raw_fd();
        // SAFETY: F_SETFD with 0 clears FD_CLOEXEC on an fd we own.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
        let owned = take("--disk-fd", fd).expect("an open file");
        // SAFETY: F_GETFD only reads the flags of an fd we own.
        let flags = unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
