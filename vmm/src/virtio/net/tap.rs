//! The host end of the guest's network interface: a tap fd inherited from
//! whoever started the VMM (opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).
//!
//! It is checked when the VMM starts, before the jail ([`Tap::from_inherited_fd`]):
//! an fd that is not open, not a character device, or not a tap with a
//! virtio-net header is refused with a message naming `--net-fd`. Then the
//! header size is set to the 12 bytes of a VIRTIO_F_VERSION_1 header and the
//! fd made non-blocking. Offloads (what the tap may hand us: partial
//! checksums, TSO) are set at each activation to what the guest negotiated.
//!
//! Every frame crosses as one read or one write of `[virtio_net_hdr_v1][frame]`.
//! Tests and the fuzz target use a datagram socket instead of a tap
//! ([`Tap::from_socket`]): it keeps frame boundaries the same way.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::chain::TxFrame;
use super::header::HEADER_SIZE;
use crate::inherited_fd::{self, InheritedFdError};

/// Why `--net-fd` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(transparent)]
    Inherited(#[from] InheritedFdError),
    #[error("--net-fd {fd}: {step}: {source}")]
    Syscall {
        fd: RawFd,
        step: &'static str,
        source: io::Error,
    },
    #[error(
        "--net-fd {0} is not a character device, so not a tap (open /dev/net/tun and TUNSETIFF it)"
    )]
    NotCharDevice(RawFd),
    #[error("--net-fd {fd} is not an attached tun/tap device (TUNGETIFF failed: {source})")]
    NotTun { fd: RawFd, source: io::Error },
    #[error("--net-fd {fd} is the tun/tap device {name} with flags {flags:#x}; it must be opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR")]
    WrongFlags { fd: RawFd, name: String, flags: i32 },
}

// struct ifreq as TUNGETIFF fills it: the name, then ifr_flags in the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

/// The tap (or, in tests, a datagram socket standing in for it).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    // Whether the tun ioctls apply (false for a socket stand-in).
    is_tap: bool,
    name: String,
}

impl Tap {
    /// Takes over `fd` ([`inherited_fd::take`]), which must be a tap made
    /// with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR; sets its header size, no
    /// offloads yet, non-blocking.
    pub fn from_inherited_fd(fd: RawFd) -> Result<Self, TapError> {
        let owned = inherited_fd::take("--net-fd", fd)?;
        let syscall = |step| move |source| TapError::Syscall { fd, step, source };
        // SAFETY: an all-zero stat is a valid value of the plain C struct.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes one struct stat into `stat`, which we own.
        if unsafe { libc::fstat(fd, &mut stat) } != 0 {
            return Err(syscall("fstat")(io::Error::last_os_error()));
        }
        if stat.st_mode & libc::S_IFMT != libc::S_IFCHR {
            return Err(TapError::NotCharDevice(fd));
        }
        let mut ifr = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _union_rest: [0; 22],
        };
        // SAFETY: TUNGETIFF writes a struct ifreq (40 bytes, the size of
        // IfReq) into `ifr`, which we own; on another device it fails.
        if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut ifr) } != 0 {
            return Err(TapError::NotTun {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        let name_len = ifr
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(ifr.name.len());
        let name = String::from_utf8_lossy(&ifr.name[..name_len]).into_owned();
        let flags = i32::from(ifr.flags);
        let needed = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if flags & needed != needed || flags & libc::IFF_TUN != 0 {
            return Err(TapError::WrongFlags { fd, name, flags });
        }
        let tap = Self {
            fd: owned,
            is_tap: true,
            name,
        };
        let size = HEADER_SIZE as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from `size`.
        if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size) } != 0 {
            return Err(syscall("TUNSETVNETHDRSZ")(io::Error::last_os_error()));
        }
        // Nothing the guest has not negotiated: plain frames until activation.
        tap.set_offload(0).map_err(syscall("TUNSETOFFLOAD"))?;
        set_non_blocking(fd).map_err(syscall("fcntl"))?;
        Ok(tap)
    }

    /// A datagram socket standing in for a tap (tests, fuzzing): frames
    /// keep their boundaries; the tun ioctls are skipped.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn from_socket(socket: OwnedFd) -> io::Result<Self> {
        set_non_blocking(socket.as_raw_fd())?;
        Ok(Self {
            fd: socket,
            is_tap: false,
            name: "socket".into(),
        })
    }

    /// The interface's name on the host.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// TUNSETOFFLOAD: which offloaded frames (`TUN_F_*`) the tap may hand us.
    pub(crate) fn set_offload(&self, flags: libc::c_uint) -> io::Result<()> {
        if !self.is_tap {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value and writes nothing.
        match unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Reads one frame (header included) into `buf`; a frame longer than
    /// `buf` is truncated by the kernel (the caller sized `buf` for the
    /// largest one). `WouldBlock` when none is waiting.
    pub(crate) fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: read writes at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match usize::try_from(n) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
        }
    }

    /// Writes `header` and the guest's `frame` with one writev.
    pub(crate) fn write_frame(
        &self,
        header: &[u8; HEADER_SIZE],
        frame: &mut TxFrame<'_>,
    ) -> io::Result<usize> {
        let parts = frame.with_header(header);
        let count = libc::c_int::try_from(parts.len()).unwrap_or(libc::c_int::MAX);
        loop {
            // SAFETY: writev only reads the `count` iovecs `parts` borrows,
            // and the memory they point at: the clean header and guest
            // memory (see `TxFrame`), both valid while `parts` is borrowed.
            // The guest may change its bytes meanwhile; the kernel copies
            // them before it looks at any.
            let n = unsafe { libc::writev(self.fd.as_raw_fd(), parts.as_ptr().cast(), count) };
            match usize::try_from(n) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

// The worker's epoll says when to read.
fn set_non_blocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    unsafe {
        let status = libc::fcntl(fd, libc::F_GETFL);
        if status < 0 || libc::fcntl(fd, libc::F_SETFL, status | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
