//! A hostile guest: malformed FUSE requests and malformed descriptor chains get
//! an error reply or are dropped, never a panic, and the device keeps serving.

use std::mem::size_of;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader, ReadIn, ROOT_ID};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::guest::{cstr, Guest, Seg, Used, IN_BUF, OUT_BUF, Q, WRITE};
use crate::virtio::fs::request::MAX_REQUEST_LEN;
use crate::virtio::test_driver::{MEM_SIZE, TIMEOUT};
use crate::virtio::VIRTIO_F_VERSION_1;

const OUT_HEADER: u32 = size_of::<OutHeader>() as u32;

/// A guest that completed INIT and has a file "f" in its share.
fn ready_guest() -> Guest {
    let mut g = Guest::new();
    std::fs::write(g.root.as_path().join("f"), b"content").expect("host file");
    g.init();
    g
}

/// The device still answers a valid request and never flagged itself broken.
fn still_serves(g: &mut Guest) {
    assert_eq!(g.entry(ROOT_ID, "f").attr.size, 7);
    assert!(!g.needs_reset(), "device asked for a reset");
}

fn assert_error_reply(used: &Used, errno: i32, unique: u64) {
    assert_eq!(used.len, OUT_HEADER, "{used:?}");
    let header = used.header();
    assert_eq!(header.len, OUT_HEADER);
    assert_eq!(header.error, -errno, "{used:?}");
    assert_eq!(header.unique, unique);
}

#[test]
fn truncated_header_gets_einval() {
    let mut g = ready_guest();
    let header = g.header(Opcode::Lookup, ROOT_ID, 2);
    for len in [0, 1, 16, size_of::<InHeader>() - 1] {
        let used = g.send(
            Q::Request,
            &[Seg::In(&header.as_slice()[..len]), Seg::Out(OUT_HEADER)],
        );
        // We cannot know the request id of a request without a header.
        assert_error_reply(&used, libc::EINVAL, 0);
    }
    still_serves(&mut g);
}

#[test]
fn lying_lengths_get_einval() {
    let mut g = ready_guest();
    let name = cstr("f");
    // Claims more bytes than the chain carries.
    let mut header = g.header(Opcode::Lookup, ROOT_ID, name.len());
    header.len += 4096;
    let used = g.send(
        Q::Request,
        &[Seg::In(header.as_slice()), Seg::In(&name), Seg::Out(256)],
    );
    assert_error_reply(&used, libc::EINVAL, header.unique);
    // Claims less than a header.
    let mut header = g.header(Opcode::Lookup, ROOT_ID, name.len());
    header.len = 8;
    let used = g.send(
        Q::Request,
        &[Seg::In(header.as_slice()), Seg::In(&name), Seg::Out(256)],
    );
    assert_error_reply(&used, libc::EINVAL, header.unique);
    // Claims fewer argument bytes than the opcode needs.
    let mut header = g.header(Opcode::Read, ROOT_ID, 8);
    let read = ReadIn::default();
    let used = g.send(
        Q::Request,
        &[
            Seg::In(header.as_slice()),
            Seg::In(&read.as_slice()[..8]),
            Seg::Out(256),
        ],
    );
    assert_error_reply(&used, libc::EINVAL, header.unique);
    // A name without its NUL.
    header = g.header(Opcode::Lookup, ROOT_ID, 1);
    let used = g.send(
        Q::Request,
        &[Seg::In(header.as_slice()), Seg::In(b"f"), Seg::Out(256)],
    );
    assert_error_reply(&used, libc::EINVAL, header.unique);
    still_serves(&mut g);
}

#[test]
fn oversized_request_gets_enomem() {
    let mut g = ready_guest();
    // More readable bytes than guest RAM by pointing every descriptor at the
    // same buffer; the header claims all of them.
    let chunk = 256 * 1024;
    let count = (MAX_REQUEST_LEN / chunk) as usize + 2;
    let mut header = g.header(Opcode::Write, ROOT_ID, 0);
    header.len = chunk * count as u32;
    g.d.mem
        .write_slice(header.as_slice(), GuestAddress(IN_BUF))
        .expect("header");
    let mut segs: Vec<Seg<'_>> = (0..count)
        .map(|_| Seg::Raw {
            addr: IN_BUF,
            len: chunk,
            flags: 0,
        })
        .collect();
    segs.push(Seg::Out(OUT_HEADER));
    let used = g.send(Q::Request, &segs);
    assert_error_reply(&used, libc::ENOMEM, header.unique);
    still_serves(&mut g);
}

#[test]
fn unknown_opcodes_get_enosys() {
    let mut g = ready_guest();
    // 0, 7 and 19 are holes in the opcode space, 47 (COPY_FILE_RANGE) is not
    // implemented, the rest are beyond it.
    for opcode in [0, 7, 19, 47, 50, 4096, 0x1a00_0000, u32::MAX] {
        let mut header = g.header(Opcode::Getattr, ROOT_ID, 16);
        header.opcode = opcode;
        let used = g.send(
            Q::Request,
            &[Seg::In(header.as_slice()), Seg::In(&[0; 16]), Seg::Out(256)],
        );
        assert_error_reply(&used, libc::ENOSYS, header.unique);
    }
    still_serves(&mut g);
}

#[test]
fn buffers_outside_guest_memory() {
    let mut g = ready_guest();
    let name = cstr("f");
    let header = g.header(Opcode::Lookup, ROOT_ID, name.len());
    // Request buffer beyond the end of RAM: error reply.
    let used = g.send(
        Q::Request,
        &[
            Seg::In(header.as_slice()),
            Seg::Raw {
                addr: MEM_SIZE + 0x1000,
                len: name.len() as u32,
                flags: 0,
            },
            Seg::Out(256),
        ],
    );
    assert_error_reply(&used, libc::EINVAL, 0);
    // Request buffer straddling the end of RAM, and one whose address wraps.
    for addr in [MEM_SIZE - 1, u64::MAX - 1] {
        let used = g.send(
            Q::Request,
            &[
                Seg::In(header.as_slice()),
                Seg::Raw {
                    addr,
                    len: 64,
                    flags: 0,
                },
                Seg::Out(256),
            ],
        );
        assert_error_reply(&used, libc::EINVAL, 0);
    }
    // Reply buffer outside RAM: nowhere to answer, dropped.
    for addr in [MEM_SIZE, MEM_SIZE - 8, u64::MAX - 8] {
        let used = g.send(
            Q::Request,
            &[
                Seg::In(header.as_slice()),
                Seg::In(&name),
                Seg::Raw {
                    addr,
                    len: 256,
                    flags: WRITE,
                },
            ],
        );
        assert_eq!(used.len, 0);
    }
    still_serves(&mut g);
}

#[test]
fn buffers_in_the_wrong_direction() {
    let mut g = ready_guest();
    let name = cstr("f");
    let header = g.header(Opcode::Lookup, ROOT_ID, name.len());
    // Everything device-writable: an empty request.
    let used = g.send(Q::Request, &[Seg::Out(64), Seg::Out(256)]);
    assert_error_reply(&used, libc::EINVAL, 0);
    // Everything device-readable: no room for any reply.
    let used = g.send(Q::Request, &[Seg::In(header.as_slice()), Seg::In(&name)]);
    assert_eq!(used.len, 0);
    // Writable before readable (against the spec): whatever happens, no panic,
    // and a reply, if any, stays within the writable buffer.
    let header = g.header(Opcode::Lookup, ROOT_ID, name.len());
    let used = g.send(
        Q::Request,
        &[Seg::Out(256), Seg::In(header.as_slice()), Seg::In(&name)],
    );
    assert!(used.len <= 256);
    still_serves(&mut g);
}

#[test]
fn reply_buffer_too_small() {
    let mut g = ready_guest();
    let entry = g.entry(ROOT_ID, "f");
    let fh = g.open(entry.nodeid, libc::O_RDONLY);
    // A READ asking for more than the reply buffers hold.
    let read = ReadIn {
        fh,
        size: 1 << 20,
        ..Default::default()
    };
    let header = g.header(Opcode::Read, entry.nodeid, size_of::<ReadIn>());
    let used = g.send(
        Q::Request,
        &[
            Seg::In(header.as_slice()),
            Seg::In(read.as_slice()),
            Seg::Out(OUT_HEADER),
            Seg::Out(2),
        ],
    );
    assert!(used.len <= OUT_HEADER + 2);
    if used.len > 0 {
        assert_eq!(used.header().unique, header.unique);
    }
    // A LOOKUP whose reply (an EntryOut) does not fit: an error instead.
    let name = cstr("f");
    let header = g.header(Opcode::Lookup, ROOT_ID, name.len());
    let used = g.send(
        Q::Request,
        &[
            Seg::In(header.as_slice()),
            Seg::In(&name),
            Seg::Out(OUT_HEADER + 8),
        ],
    );
    assert_error_reply(&used, libc::EINVAL, header.unique);
    // Not even room for an error.
    let header = g.header(Opcode::Lookup, ROOT_ID, name.len());
    let used = g.send(
        Q::Request,
        &[Seg::In(header.as_slice()), Seg::In(&name), Seg::Out(8)],
    );
    assert_eq!(used.len, 0);
    still_serves(&mut g);
}

#[test]
fn requests_before_init_and_garbage_nodes() {
    let mut g = Guest::new();
    std::fs::write(g.root.as_path().join("f"), b"content").expect("host file");
    // Node ids the device never handed out.
    for nodeid in [0, 2, 12345, u64::MAX] {
        let used = g.call(Opcode::Getattr, nodeid, &[&[0; 16]], 256);
        assert_ne!(used.errno(), 0, "GETATTR on node {nodeid}");
    }
    let read = ReadIn {
        fh: 999,
        size: 16,
        ..Default::default()
    };
    let used = g.call(Opcode::Read, ROOT_ID, &[read.as_slice()], 256);
    assert_ne!(used.errno(), 0);
    g.init();
    still_serves(&mut g);
}

#[test]
fn descriptor_loop_does_not_hang() {
    let mut g = ready_guest();
    let name = cstr("f");
    let header = g.header(Opcode::Lookup, ROOT_ID, name.len());
    g.d.mem
        .write_slice(header.as_slice(), GuestAddress(IN_BUF))
        .expect("header");
    // 0 -> 1 -> 0 -> ...: the chain ends after queue-size descriptors.
    let segs = [
        Seg::Raw {
            addr: IN_BUF,
            len: size_of::<InHeader>() as u32,
            flags: 0,
        },
        Seg::Raw {
            addr: OUT_BUF,
            len: 256,
            flags: WRITE,
        },
    ];
    // send() links 0 -> 1; close the loop before posting by hand.
    let used = g.send_looped(&segs);
    assert!(used.len <= 16 * 256);
    still_serves(&mut g);
}

#[test]
fn corrupt_ring_needs_reset_then_recovers() {
    let mut g = ready_guest();
    // More available entries than the ring holds: the driver is lying.
    g.corrupt_avail_idx(Q::Request, 1000);
    let deadline = Instant::now() + TIMEOUT;
    while !g.needs_reset() {
        assert!(Instant::now() < deadline, "device never asked for a reset");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A reset and a fresh INIT bring it back.
    g.bring_up(VIRTIO_F_VERSION_1);
    assert!(!g.needs_reset());
    g.init();
    still_serves(&mut g);
}

// Found by fuzzing (fuzz/seeds/fs_request/known-opath-read-closes-fd): an
// O_PATH handle made fuse-backend-rs close an fd it still owned on READ.
#[test]
fn o_path_opens_are_refused() {
    use fuse_backend_rs::abi::fuse_abi::{OpenIn, OpenOut};
    let mut g = ready_guest();
    let node = g.entry(ROOT_ID, "f").nodeid;
    let open = OpenIn {
        flags: (libc::O_PATH | libc::O_RDONLY) as u32,
        fuse_flags: 0,
    };
    let used = g.call(
        Opcode::Open,
        node,
        &[open.as_slice()],
        size_of::<OpenOut>() as u32,
    );
    assert_eq!(used.header().error, -libc::EINVAL, "{used:?}");
    still_serves(&mut g);
}

// Found by fuzzing (fuzz/seeds/fs_request/known-xattr-4g): the guest's buffer
// size was allocated up front, up to 4 GiB.
#[test]
fn huge_xattr_buffers_are_refused() {
    use fuse_backend_rs::abi::fuse_abi::GetxattrIn;
    let mut g = ready_guest();
    for (opcode, named) in [(Opcode::Getxattr, true), (Opcode::Listxattr, false)] {
        let request = GetxattrIn {
            size: u32::MAX,
            padding: 0,
        };
        let mut args = request.as_slice().to_vec();
        if named {
            args.extend_from_slice(&cstr("user.a"));
        }
        let used = g.call(opcode, ROOT_ID, &[&args], 64);
        assert_eq!(used.header().error, -libc::E2BIG, "{opcode:?}: {used:?}");
    }
    still_serves(&mut g);
}
