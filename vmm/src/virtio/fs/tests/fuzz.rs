//! The fuzz entry point: real requests, garbage, and a file system that panics.

use std::ffi::CStr;
use std::io;
use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{
    InHeader, InitIn, InitOut, Opcode, OutHeader, KERNEL_MINOR_VERSION, KERNEL_VERSION, ROOT_ID,
};
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem};
use fuse_backend_rs::api::server::Server;
use vm_memory::ByteValued;

use super::guest::{cstr, read_obj};
use crate::virtio::fs::fuzz::FUZZ_REPLY_CAPACITY;
use crate::virtio::fs::{handle_request_bytes, new_server, Caching};

fn request(opcode: u32, nodeid: u64, unique: u64, args: &[u8]) -> Vec<u8> {
    let header = InHeader {
        len: (size_of::<InHeader>() + args.len()) as u32,
        opcode,
        unique,
        nodeid,
        ..Default::default()
    };
    let mut bytes = header.as_slice().to_vec();
    bytes.extend_from_slice(args);
    bytes
}

#[test]
fn serves_init_and_lookup() {
    let dir = tempfile::tempdir().expect("share");
    std::fs::write(dir.path().join("f"), b"x").expect("host file");
    let server = new_server(dir.path(), Caching::Coherent).expect("server");
    let init = InitIn {
        major: KERNEL_VERSION,
        minor: KERNEL_MINOR_VERSION,
        ..Default::default()
    };
    let reply = handle_request_bytes(
        &server,
        &request(Opcode::Init as u32, 0, 7, init.as_slice()),
    );
    assert!(!reply.panicked);
    let header: OutHeader = read_obj(&reply.bytes, 0);
    assert_eq!((header.error, header.unique), (0, 7));
    assert_eq!(header.len as usize, reply.bytes.len());
    let out: InitOut = read_obj(&reply.bytes, size_of::<OutHeader>());
    assert_eq!(
        (out.major, out.minor),
        (KERNEL_VERSION, KERNEL_MINOR_VERSION)
    );

    let reply = handle_request_bytes(
        &server,
        &request(Opcode::Lookup as u32, ROOT_ID, 8, &cstr("f")),
    );
    let header: OutHeader = read_obj(&reply.bytes, 0);
    assert_eq!((header.error, header.unique), (0, 8));
}

// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn garbage_never_panics() {
    // Random DESTROYs make PassthroughFs re-import its root, which clears the
    // umask of the calling thread's fs context: keep that context private, as
    // the device's worker threads do.
    std::thread::spawn(|| {
        crate::virtio::fs::passthrough::enter_worker_thread();
        garbage_requests();
    })
    .join()
    .expect("garbage requests");
}

fn garbage_requests() {
    let dir = tempfile::tempdir().expect("share");
    std::fs::create_dir(dir.path().join("d")).expect("dir");
    std::fs::write(dir.path().join("f"), b"content").expect("host file");
    let server = new_server(dir.path(), Caching::Coherent).expect("server");
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for i in 0..3000u64 {
        let body_len = rng.below(300) as usize;
        let body: Vec<u8> = (0..body_len).map(|_| rng.next() as u8).collect();
        let bytes = match rng.below(4) {
            // Pure noise.
            0 => body,
            // A consistent header with a random opcode and body. FALLOCATE and
            // MKNOD are left out: random sizes and device numbers are not
            // something to do to the test machine's disk.
            1 | 2 => {
                let mut opcode = rng.below(52) as u32;
                if opcode == Opcode::Fallocate as u32 || opcode == Opcode::Mknod as u32 {
                    opcode = Opcode::Getattr as u32;
                }
                let nodeid = if rng.below(2) == 0 {
                    ROOT_ID
                } else {
                    rng.below(8)
                };
                request(opcode, nodeid, i, &body)
            }
            // A header whose length lies.
            _ => {
                let mut bytes = request(Opcode::Lookup as u32, ROOT_ID, i, &body);
                let len = rng.next() as u32;
                bytes[..4].copy_from_slice(&len.to_le_bytes());
                bytes
            }
        };
        let reply = handle_request_bytes(&server, &bytes);
        assert!(!reply.panicked, "request {i} panicked: {bytes:?}");
        assert!(reply.bytes.len() <= FUZZ_REPLY_CAPACITY as usize);
        if reply.bytes.len() >= size_of::<OutHeader>() {
            let header: OutHeader = read_obj(&reply.bytes, 0);
            assert_eq!(
                header.len as usize,
                reply.bytes.len(),
                "request {i}: {bytes:?}"
            );
            assert!(header.error <= 0);
        }
    }
}

// A file system that panics on LOOKUP.
struct Panicky;

impl FileSystem for Panicky {
    type Inode = u64;
    type Handle = u64;

    fn lookup(&self, _ctx: &Context, _parent: u64, _name: &CStr) -> io::Result<Entry> {
        panic!("lookup exploded");
    }
}

#[test]
fn panic_in_the_file_system_is_contained() {
    let server = Server::new(Panicky);
    let reply = handle_request_bytes(
        &server,
        &request(Opcode::Lookup as u32, ROOT_ID, 42, &cstr("f")),
    );
    assert!(reply.panicked);
    let header: OutHeader = read_obj(&reply.bytes, 0);
    assert_eq!(header.error, -libc::EIO);
    assert_eq!(header.unique, 42);
    // Other opcodes go to the default implementation (ENOSYS).
    let reply = handle_request_bytes(
        &server,
        &request(Opcode::Getattr as u32, ROOT_ID, 43, &[0; 16]),
    );
    assert!(!reply.panicked);
    let header: OutHeader = read_obj(&reply.bytes, 0);
    assert_eq!(header.error, -libc::ENOSYS);
}

#[test]
fn empty_and_oversized_inputs() {
    let dir = tempfile::tempdir().expect("share");
    let server = new_server(dir.path(), Caching::Coherent).expect("server");
    let reply = handle_request_bytes(&server, &[]);
    let header: OutHeader = read_obj(&reply.bytes, 0);
    assert_eq!(header.error, -libc::EINVAL);
    let big = request(Opcode::Write as u32, ROOT_ID, 1, &vec![0; 3 << 20]);
    let reply = handle_request_bytes(&server, &big);
    assert!(!reply.panicked);
    let header: OutHeader = read_obj(&reply.bytes, 0);
    assert!(header.error < 0);
}
