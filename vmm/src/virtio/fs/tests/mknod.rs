//! MKNOD: device nodes are refused with EPERM (the VMM runs as root, so the
//! host would create them otherwise); FIFOs and sockets are made as asked.

use std::mem::size_of;
use std::os::unix::fs::FileTypeExt;

use fuse_backend_rs::abi::fuse_abi::{EntryOut, MknodIn, Opcode, ROOT_ID};
use vm_memory::ByteValued;

use super::guest::{cstr, Guest, Used};

fn mknod(g: &mut Guest, name: &str, mode: u32, rdev: u32) -> Used {
    let mknod = MknodIn {
        mode,
        rdev,
        umask: 0,
        padding: 0,
    };
    let name = cstr(name);
    g.call(
        Opcode::Mknod,
        ROOT_ID,
        &[mknod.as_slice(), &name],
        size_of::<EntryOut>() as u32,
    )
}

#[test]
fn device_nodes_are_refused_and_fifos_and_sockets_made() {
    let mut g = Guest::new();
    g.init();
    // /dev/null (1:3) and /dev/loop0 (7:0).
    let null = libc::makedev(1, 3) as u32;
    let loop0 = libc::makedev(7, 0) as u32;
    for (name, mode, rdev) in [
        ("chr", libc::S_IFCHR | 0o666, null),
        ("blk", libc::S_IFBLK | 0o600, loop0),
        // A whiteout (0:0) is a character device too.
        ("whiteout", libc::S_IFCHR, 0),
    ] {
        assert_eq!(
            mknod(&mut g, name, mode, rdev).errno(),
            libc::EPERM,
            "{name}"
        );
        assert!(
            std::fs::symlink_metadata(g.root.as_path().join(name)).is_err(),
            "{name} was created on the host"
        );
    }
    let fifo: EntryOut = mknod(&mut g, "fifo", libc::S_IFIFO | 0o644, 0).ok();
    assert_eq!(fifo.attr.mode & libc::S_IFMT, libc::S_IFIFO);
    let socket: EntryOut = mknod(&mut g, "socket", libc::S_IFSOCK | 0o644, 0).ok();
    assert_eq!(socket.attr.mode & libc::S_IFMT, libc::S_IFSOCK);
    let host = |name| {
        std::fs::symlink_metadata(g.root.as_path().join(name))
            .expect("made on the host")
            .file_type()
    };
    assert!(host("fifo").is_fifo());
    assert!(host("socket").is_socket());
    assert!(!g.needs_reset());
}
