//! The tap the VMM's virtio-net device reads and writes.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::NetworkError;

/// Creates tap `name` in the calling thread's network namespace (a tap is
/// made in the namespace of the thread that opens /dev/net/tun) and
/// returns its queue: Ethernet frames, no packet information, a virtio-net
/// header before each. Not persistent: the tap goes away when its last fd
/// is closed, so a VMM that dies with the shim takes it along.
pub fn open(name: &str) -> Result<OwnedFd, NetworkError> {
    let failed = |what: &str, error: std::io::Error| {
        NetworkError::Tap(format!("{what} for tap {name}: {error}"))
    };
    // CLOEXEC: only the VMM gets it, under a known number, on purpose.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NetworkError::Tap(format!(
                "/dev/net/tun does not exist (is the tun module loaded?): {e}"
            )),
            _ => failed("opening /dev/net/tun", e),
        })?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return Err(NetworkError::Tap(format!("tap name {name:?} is too long")));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;
    // SAFETY: TUNSETIFF reads (and writes back the name into) one ifreq,
    // valid for the call; the fd is open.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if result != 0 {
        return Err(failed("TUNSETIFF", std::io::Error::last_os_error()));
    }
    Ok(file.into())
}

/// A tap in a network namespace of its own that holds nothing else: the
/// network device of a template boot, which must have one but never
/// reaches any network. The namespace lives as long as the tap's fd (the
/// tun socket holds it), so it goes with the template VM.
pub fn open_unconnected(name: &str) -> Result<OwnedFd, NetworkError> {
    let name = name.to_owned();
    // unshare(2) moves only the calling thread: a thread of its own.
    std::thread::Builder::new()
        .name("cocoon-tap-new".into())
        .spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetworkError::Tap(format!("a network namespace for {name}: {e}")))?;
            open(&name)
        })
        .map_err(|e| NetworkError::Tap(format!("starting a thread: {e}")))?
        .join()
        .unwrap_or_else(|_| Err(NetworkError::Tap("its thread panicked".into())))
}
