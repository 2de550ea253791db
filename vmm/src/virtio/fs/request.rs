//! One FUSE request: from a descriptor chain to the reply in guest memory.
//!
//! Everything here is guest-controlled. The readable part of the chain holds
//! the request, the writable part receives the reply. A request we cannot make
//! sense of gets a FUSE error reply when the chain has room for one (so the
//! guest's waiter sees an errno rather than a zeroed "success"), otherwise it is
//! completed empty. fuse-backend-rs runs under `catch_unwind`: a panic there
//! answers EIO and is reported to the caller, never unwinding into the VMM.

use std::any::Any;
use std::io::Write;
use std::mem::size_of;
use std::panic::{catch_unwind, AssertUnwindSafe};

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::{Server, MAX_BUFFER_SIZE};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::DescriptorChain;
use vm_memory::ByteValued;

use crate::virtio::warn_limit::{limited, WarnLimiter};
use crate::virtio::GuestMemory;

/// Largest `len` a request header may claim: fuse-backend-rs's limit
/// (MAX_BUFFER_SIZE of payload plus its private 4 KiB header allowance).
/// Checked here so an oversized request is refused before fuse-backend-rs logs
/// it unconditionally.
pub(crate) const MAX_REQUEST_LEN: u32 = MAX_BUFFER_SIZE + 0x1000;

const OUT_HEADER_LEN: u32 = size_of::<OutHeader>() as u32;

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Completion {
    /// Bytes written into the chain's device-writable buffers (the used length).
    pub(crate) len: u32,
    /// fuse-backend-rs panicked on this request. Its state (locks, inode maps)
    /// may be inconsistent: the device should stop serving until reset.
    pub(crate) panicked: bool,
}

impl Completion {
    fn replied(len: u32) -> Self {
        Self {
            len,
            panicked: false,
        }
    }
}

/// Serves the request in `chain` with `server` and writes the reply into the chain.
pub(crate) fn handle_chain<F: FileSystem + Sync>(
    server: &Server<F>,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    log: &mut WarnLimiter,
) -> Completion {
    let head = chain.head_index();
    // Without usable reply buffers there is nobody to tell; FORGET and
    // INTERRUPT legitimately come without any.
    let writer = match VirtioFsWriter::new(mem, chain.clone()) {
        Ok(writer) => writer,
        Err(e) => {
            limited!(log, warn, head, error = %e, "virtio-fs: bad reply buffers, dropping request");
            return Completion::replied(0);
        }
    };
    let reader = match Reader::from_descriptor_chain(mem, chain) {
        Ok(reader) => reader,
        Err(e) => {
            limited!(log, warn, head, error = %e, "virtio-fs: bad request buffers");
            return Completion::replied(reply_header(writer, 0, libc::EINVAL));
        }
    };
    let header = match check_header(&reader) {
        Ok(header) => header,
        Err(bad) => {
            limited!(
                log,
                warn,
                head,
                reason = bad.reason,
                "virtio-fs: request refused"
            );
            return Completion::replied(reply_header(writer, bad.unique, bad.errno));
        }
    };
    let capacity = writer.available_bytes();
    // The writer only tracks its own progress, so this copy still starts at
    // the beginning of the reply buffers if the server fails half-way.
    let spare = writer.clone();
    let result = catch_unwind(AssertUnwindSafe(|| {
        server.handle_message(reader, Writer::VirtioFs(writer), None, None)
    }));
    match result {
        // FORGET, INTERRUPT and DESTROY are answered with nothing. Where the
        // guest still left room for a reply (Linux does for DESTROY), give it a
        // plain success header rather than leave its buffer untouched.
        Ok(Ok(0)) => Completion::replied(reply_header(spare, header.unique, 0)),
        Ok(Ok(written)) => {
            // The server cannot write more than there was room for; clamp anyway
            // so a bookkeeping slip never reports bytes the guest did not get.
            let len = written.min(capacity);
            Completion::replied(u32::try_from(len).unwrap_or(u32::MAX))
        }
        Ok(Err(e)) => {
            limited!(
                log,
                warn,
                head,
                opcode = header.opcode,
                error = %e,
                "virtio-fs: request failed"
            );
            Completion::replied(reply_header(spare, header.unique, errno_for(&e)))
        }
        Err(panic) => {
            limited!(
                log,
                error,
                head,
                opcode = header.opcode,
                panic = panic_message(&*panic),
                "virtio-fs: fuse-backend-rs panicked on a request"
            );
            Completion {
                len: reply_header(spare, header.unique, libc::EIO),
                panicked: true,
            }
        }
    }
}

// A request header we refuse to hand to fuse-backend-rs.
struct BadHeader {
    reason: &'static str,
    unique: u64,
    errno: i32,
}

// Peeks at the request header (the reader itself is left untouched) and checks
// what fuse-backend-rs would trust blindly or act on badly.
fn check_header(reader: &Reader<'_>) -> Result<InHeader, BadHeader> {
    let available = reader.available_bytes();
    let header: InHeader = reader.clone().read_obj().map_err(|_| BadHeader {
        reason: "request shorter than a FUSE header",
        unique: 0,
        errno: libc::EINVAL,
    })?;
    let bad = |reason, errno| BadHeader {
        reason,
        unique: header.unique,
        errno,
    };
    let len = usize::try_from(header.len).unwrap_or(usize::MAX);
    if len < size_of::<InHeader>() {
        return Err(bad("header length shorter than the header", libc::EINVAL));
    }
    if len > available {
        return Err(bad(
            "header length beyond the request buffers",
            libc::EINVAL,
        ));
    }
    if header.len > MAX_REQUEST_LEN {
        return Err(bad("request too large", libc::ENOMEM));
    }
    if !opcode_is_valid(header.opcode) {
        return Err(bad("unknown opcode", libc::ENOSYS));
    }
    if let Some((reason, errno)) = refused_arguments(reader, header.opcode) {
        return Err(bad(reason, errno));
    }
    Ok(header)
}

/// The largest extended attribute value (or list) Linux ever asks for.
const XATTR_SIZE_MAX: u32 = 64 * 1024;

// Arguments we refuse: MKNOD of a device node (policy, see below), and what
// fuse-backend-rs 0.14 mishandles, found by fuzzing
// (fuzz/seeds/fs_request/known-*). The first u32 after the header is the
// mode of MKNOD, the open flags of OPEN/CREATE and the buffer size of
// GETXATTR/LISTXATTR.
// - An O_PATH handle: its READ/WRITE fail fcntl(F_SETFL) and the early return
//   closes the fd the handle still owns, so the guest could later reach
//   whatever the VMM opens next under that number. Linux never sends O_PATH.
// - A size the guest picks is allocated up front (up to 4 GiB).
fn refused_arguments(reader: &Reader<'_>, opcode: u32) -> Option<(&'static str, i32)> {
    let mut body = reader.clone();
    body.read_obj::<InHeader>().ok()?;
    let first: u32 = body.read_obj().ok()?;
    if opcode == Opcode::Mknod as u32 {
        // Device nodes: a guest must not get a node for a host device into a
        // directory the host may use. FIFOs, sockets and plain files pass.
        let kind = first & libc::S_IFMT;
        if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            return Some(("MKNOD of a device node", libc::EPERM));
        }
    } else if opcode == Opcode::Open as u32 || opcode == Opcode::Create as u32 {
        if first & libc::O_PATH as u32 != 0 {
            return Some(("O_PATH open", libc::EINVAL));
        }
    } else if (opcode == Opcode::Getxattr as u32 || opcode == Opcode::Listxattr as u32)
        && first > XATTR_SIZE_MAX
    {
        return Some(("xattr buffer larger than 64 KiB", libc::E2BIG));
    }
    None
}

// fuse-backend-rs turns the opcode into its `Opcode` enum with a transmute for
// every value below MaxOpcode when trace logging is on; the gaps in the
// enumeration (0, 7 and 19) would be undefined behaviour there. Values from
// MaxOpcode up are mapped without a transmute and answered with ENOSYS.
fn opcode_is_valid(opcode: u32) -> bool {
    const GAPS: [u32; 3] = [0, 7, 19];
    opcode >= Opcode::MaxOpcode as u32 || !GAPS.contains(&opcode)
}

// The errno the guest sees when fuse-backend-rs gave up on a request. Its
// errors are all about malformed input or reply buffers too small for the
// answer, i.e. the guest's doing.
fn errno_for(e: &fuse_backend_rs::Error) -> i32 {
    match e {
        fuse_backend_rs::Error::FailedToRemapID(_) => libc::EPERM,
        _ => libc::EINVAL,
    }
}

// Writes a bare FUSE reply header carrying `errno` (0 for success); returns
// the bytes written (0 if the buffers cannot hold it: then nothing is written).
fn reply_header(mut writer: VirtioFsWriter<'_>, unique: u64, errno: i32) -> u32 {
    let header = OutHeader {
        len: OUT_HEADER_LEN,
        error: -errno,
        unique,
    };
    match writer.write_all(header.as_slice()) {
        Ok(()) => OUT_HEADER_LEN,
        Err(_) => 0,
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}
