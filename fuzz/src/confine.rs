//! Keeps a file server under fuzz harmless to the (root) fuzzing process's
//! machine: shared by the virtio-fs targets.

use std::io;

/// Drops CAP_MKNOD from the calling thread (libFuzzer runs every input on the
/// thread that ran the first one; device workers it spawns inherit it) and
/// caps the size of files the process writes at `max_file_size`.
pub fn confine(max_file_size: u64) -> io::Result<()> {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_MKNOD: u32 = 27;

    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes one header and two CapData (version 3) into the
    // buffers we pass, which are that large and live across the call.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    data[0].effective &= !(1 << CAP_MKNOD);
    data[0].permitted &= !(1 << CAP_MKNOD);
    // SAFETY: capset only reads the header and the two CapData we pass.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }

    // Growing a file past the limit raises SIGXFSZ, which would kill us:
    // ignore it so that the system call fails with EFBIG instead.
    // SAFETY: SIG_IGN is a valid disposition for SIGXFSZ and installs no handler code.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    let limit = libc::rlimit {
        rlim_cur: max_file_size,
        rlim_max: max_file_size,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
