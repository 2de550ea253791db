//! `cocoon-guest-probe`: a static test tool that runs inside test guests
//! (busybox has no AF_VSOCK) to move data over vsock and report what it saw.
//!
//!   cocoon-guest-probe listen PORT CONNECTIONS
//!       accept CONNECTIONS streams on vsock PORT (concurrently); on each,
//!       read to EOF, then answer "<bytes> <checksum>\n" and close.
//!   cocoon-guest-probe send PORT BYTES [CONNECTIONS]
//!       dial the host (CID 2) on PORT CONNECTIONS times in parallel; each
//!       sends BYTES of the test pattern, half-closes, and prints the reply.
//!
//!   cocoon-guest-probe mmap-write FILE TEXT
//!       map FILE shared, write TEXT at its start through the mapping, msync.
//!   cocoon-guest-probe xattr FILE NAME VALUE
//!       set the extended attribute, read it back, print "XATTR <value>".
//!
//!   cocoon-guest-probe connect CID PORT
//!       dial CID:PORT; print "CONNECTED" (a peer accepted and did not
//!       close within a second), "CLOSED" or "REFUSED <error>".
//!   cocoon-guest-probe euid
//!       print "EUID <effective uid>" (setuid tests run it on the host).
//!
//!   cocoon-guest-probe pattern BYTES
//!       write BYTES of the test pattern to stdout (and nothing else).
//!   cocoon-guest-probe alloc MIB
//!       allocate MIB MiB and touch every page, then print "ALLOCATED".
//!   cocoon-guest-probe snapshot-point
//!       what the agent of a template boot does when ready: write the
//!       snapshot point byte to its I/O port (cocoon-vmm saves the VM there).
//!
//! Prints "PROBE-READY" once listening, "PROBE-DONE" at the end.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use cocoon_tests::pattern::{checksum_stream, PatternReader};

const HOST_CID: u32 = 2;

fn vsock_address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    address.svm_cid = cid;
    address.svm_port = port;
    address
}

fn vsock_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(result: libc::c_int) -> std::io::Result<()> {
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// vsock streams behave like Unix streams for read/write/shutdown.
fn stream(fd: OwnedFd) -> UnixStream {
    UnixStream::from(fd)
}

fn listen(port: u32, connections: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let socket = vsock_socket()?;
    let address = vsock_address(libc::VMADDR_CID_ANY, port);
    let size = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: address is a valid sockaddr_vm of `size` bytes.
    check(unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_vm).cast(),
            size,
        )
    })?;
    // SAFETY: plain listen(2) on our socket.
    check(unsafe { libc::listen(socket.as_raw_fd(), 128) })?;
    println!("PROBE-READY");
    let mut workers = Vec::new();
    for _ in 0..connections {
        // SAFETY: accept4 on our listening socket, peer address not wanted.
        let fd = unsafe {
            libc::accept4(
                socket.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        check(fd)?;
        // SAFETY: fd is a fresh descriptor from accept4.
        let mut connection = stream(unsafe { OwnedFd::from_raw_fd(fd) });
        workers.push(std::thread::spawn(move || -> std::io::Result<()> {
            let (bytes, sum) = checksum_stream(&mut connection)?;
            connection.write_all(format!("{bytes} {sum:016x}\n").as_bytes())?;
            Ok(())
        }));
    }
    for worker in workers {
        worker
            .join()
            .map_err(|_| std::io::Error::other("worker panicked"))??;
    }
    println!("PROBE-DONE");
    Ok(())
}

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (a `struct timeval` at level `AF_VSOCK`
/// on 64-bit), which the libc crate does not define.
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;
/// Linux gives up on a vsock connect after 2 s and resets the connection the
/// host has by then accepted; a guest vCPU starved on a busy emulated host VM
/// can take longer than that to see the answer.
const CONNECT_TIMEOUT_SECS: libc::time_t = 60;

/// A vsock stream connected to `cid`:`port`.
fn vsock_connect(cid: u32, port: u32) -> std::io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    let socket = vsock_socket()?;
    let timeout = libc::timeval {
        tv_sec: CONNECT_TIMEOUT_SECS,
        tv_usec: 0,
    };
    // SAFETY: setsockopt(2) reads one timeval that lives across the call.
    check(unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::AF_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    let address = vsock_address(cid, port);
    let size = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: address is a valid sockaddr_vm of `size` bytes.
    check(unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_vm).cast(),
            size,
        )
    })?;
    Ok(stream(socket))
}

/// Tries `cid`:`port` and says what happened: "CONNECTED" only if a peer
/// accepted and answered or kept the connection open for a second.
fn try_connect(cid: u32, port: u32) -> std::io::Result<()> {
    use std::io::Read;
    match vsock_connect(cid, port) {
        Err(error) => println!("REFUSED {error}"),
        Ok(mut connection) => {
            connection.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
            let mut byte = [0u8; 1];
            match connection.read(&mut byte) {
                Ok(0) => println!("CLOSED"),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    println!("CONNECTED")
                }
                Err(error) => println!("CLOSED {error}"),
                Ok(_) => println!("CONNECTED"),
            }
        }
    }
    Ok(())
}

fn euid() -> std::io::Result<()> {
    // SAFETY: geteuid(2) cannot fail.
    println!("EUID {}", unsafe { libc::geteuid() });
    Ok(())
}

fn send(port: u32, bytes: u64, connections: usize) -> std::io::Result<()> {
    let workers: Vec<_> = (0..connections)
        .map(|index| {
            std::thread::spawn(move || -> std::io::Result<String> {
                let mut connection = vsock_connect(HOST_CID, port)?;
                std::io::copy(&mut PatternReader::new(bytes), &mut connection)?;
                connection.shutdown(std::net::Shutdown::Write)?;
                // A host that never answers fails the probe instead of hanging it.
                connection.set_read_timeout(Some(std::time::Duration::from_secs(600)))?;
                let mut reply = String::new();
                BufReader::new(&mut connection).read_line(&mut reply)?;
                Ok(format!("SENT {index} {bytes} REPLY {}", reply.trim()))
            })
        })
        .collect();
    for worker in workers {
        println!(
            "{}",
            worker
                .join()
                .map_err(|_| std::io::Error::other("sender panicked"))??
        );
    }
    println!("PROBE-DONE");
    Ok(())
}

fn mmap_write(path: &str, text: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = text.len();
    if file.metadata()?.len() < len as u64 {
        file.set_len(len as u64)?;
    }
    // SAFETY: a fresh shared mapping of `len` bytes of an open file; checked below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the mapping is `len` bytes long and writable; it is unmapped right after.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), map.cast::<u8>(), len);
        check(libc::msync(map, len, libc::MS_SYNC))?;
        check(libc::munmap(map, len))?;
    }
    println!("MMAP-WRITTEN");
    Ok(())
}

fn xattr(path: &str, name: &str, value: &str) -> std::io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).map_err(std::io::Error::other);
    let (path, name) = (c(path)?, c(name)?);
    // SAFETY: NUL-terminated path and name, value pointer and length match.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })?;
    let mut buf = vec![0u8; 256];
    // SAFETY: the buffer is writable for its whole length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    println!("XATTR {}", String::from_utf8_lossy(&buf[..n as usize]));
    Ok(())
}

fn pattern(bytes: u64) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    std::io::copy(&mut PatternReader::new(bytes), &mut stdout)?;
    stdout.flush()
}

/// Touches every page so the memory is really charged to the cgroup.
fn alloc(mib: u64) -> std::io::Result<()> {
    let mut chunks = Vec::new();
    for _ in 0..mib {
        let mut chunk = vec![0u8; 1 << 20];
        for page in chunk.chunks_mut(4096) {
            page[0] = 1;
        }
        chunks.push(chunk);
    }
    println!("ALLOCATED {} MiB", chunks.len());
    Ok(())
}

fn snapshot_point() -> std::io::Result<()> {
    let port = cocoon_protocol::SNAPSHOT_POINT_PORT;
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    check(unsafe { libc::ioperm(port.into(), 1, 1) })?;
    // SAFETY: the port is cocoon-vmm's snapshot point, which has no effect
    // on guest memory or registers; ioperm above allows the access.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") cocoon_protocol::SNAPSHOT_POINT,
            options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| args.get(i).and_then(|v| v.parse::<u64>().ok());
    let text = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let result = match (args.first().map(String::as_str), number(1), number(2)) {
        (Some("mmap-write"), _, _) => mmap_write(text(1), text(2)),
        (Some("xattr"), _, _) => xattr(text(1), text(2), text(3)),
        (Some("pattern"), Some(bytes), _) => pattern(bytes),
        (Some("alloc"), Some(mib), _) => alloc(mib),
        (Some("euid"), _, _) => euid(),
        (Some("snapshot-point"), _, _) => snapshot_point(),
        (Some("connect"), Some(cid), Some(port)) => try_connect(cid as u32, port as u32),
        (Some("listen"), Some(port), Some(count)) => listen(port as u32, count as usize),
        (Some("send"), Some(port), Some(bytes)) => {
            send(port as u32, bytes, number(3).unwrap_or(1) as usize)
        }
        _ => {
            eprintln!(
                "usage: cocoon-guest-probe listen PORT CONNECTIONS | send PORT BYTES [CONNECTIONS]"
            );
            std::process::exit(2);
        }
    };
    if let Err(error) = result {
        println!("PROBE-ERROR {error}");
        std::process::exit(1);
    }
    let _ = std::io::stdout().flush();
}
