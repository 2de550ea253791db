//! The file operations a container root file system needs, end to end: FUSE
//! requests on the virtqueues, effects checked on the host directory.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{
    FlushIn, InitOut, Opcode, OpenIn, SetattrIn, KERNEL_MINOR_VERSION, KERNEL_VERSION, ROOT_ID,
};
use fuse_backend_rs::api::filesystem::{FsOptions, SetattrValid};
use vm_memory::ByteValued;

use super::fuse_ops::offered_init_flags;
use super::guest::Guest;
use crate::virtio::fs::passthrough::{COHERENT_TIMEOUT, IMMUTABLE_TIMEOUT};
use crate::virtio::fs::Caching;
use crate::virtio::interrupt::INT_USED_RING;
use crate::virtio::test_driver::TIMEOUT;
use crate::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

fn wait_interrupt(guest: &Guest, bit: u32) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if guest.d.interrupt.status() & bit != 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

fn check_init(out: &InitOut) {
    assert_eq!(out.major, KERNEL_VERSION);
    assert_eq!(out.minor, KERNEL_MINOR_VERSION);
    let flags = FsOptions::from_bits_truncate(u64::from(out.flags));
    // Granted only what we offered, and none of what our config turns down.
    assert!(offered_init_flags().contains(flags), "granted {flags:?}");
    assert!(!flags.contains(FsOptions::WRITEBACK_CACHE));
    assert!(!flags.contains(FsOptions::ZERO_MESSAGE_OPEN));
    assert!(flags.contains(FsOptions::MAX_PAGES));
    assert_eq!(out.max_pages, 256);
}

#[test]
fn init_handshake() {
    let mut g = Guest::new();
    let out = g.init();
    check_init(&out);
    // The reply came with an interrupt, the device is healthy.
    assert!(wait_interrupt(&g, INT_USED_RING));
    assert!(g.d.irq.read().expect("irq fired") >= 1);
    assert!(!g.needs_reset());
}

#[test]
fn init_with_event_idx() {
    let tmp = tempfile::tempdir().expect("share");
    fs::write(tmp.path().join("f"), b"x").expect("host file");
    let root = tmp.path().to_owned();
    let mut g = Guest::with_share(
        tmp,
        root,
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
        Caching::Coherent,
    );
    check_init(&g.init());
    // Several round trips: each one needs avail_event republished.
    for _ in 0..20 {
        assert_eq!(g.entry(ROOT_ID, "f").attr.size, 1);
    }
}

#[test]
fn lookup_open_read_existing_file() {
    let mut g = Guest::new();
    let content: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    fs::write(g.root.as_path().join("hello.bin"), &content).expect("host file");
    g.init();

    let entry = g.entry(ROOT_ID, "hello.bin");
    assert_eq!(entry.entry_valid, COHERENT_TIMEOUT.as_secs());
    assert_eq!(entry.attr_valid, COHERENT_TIMEOUT.as_secs());
    assert_ne!(entry.nodeid, 0);
    assert_ne!(entry.nodeid, ROOT_ID);
    assert_eq!(entry.attr.size, content.len() as u64);
    assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFREG);

    let fh = g.open(entry.nodeid, libc::O_RDONLY);
    let read = g.read(entry.nodeid, fh, 0, 16384);
    assert_eq!(read.errno(), 0);
    assert_eq!(read.payload(), &content[..]);
    // A read at an offset returns the tail.
    let read = g.read(entry.nodeid, fh, 9_000, 4096);
    assert_eq!(read.payload(), &content[9_000..]);
    g.release(entry.nodeid, fh);

    // A missing name is ENOENT, not a failure of the device.
    assert_eq!(g.lookup(ROOT_ID, "missing").errno(), libc::ENOENT);
}

#[test]
fn create_and_write_reach_the_host() {
    let mut g = Guest::new();
    g.init();
    let (entry, open) = g.create(
        ROOT_ID,
        "new.txt",
        libc::S_IFREG | 0o640,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
    );
    assert_ne!(entry.nodeid, 0);
    let data = b"written through virtio-fs\n";
    assert_eq!(g.write(entry.nodeid, open.fh, 0, data), data.len() as u32);
    // A second, larger write split over several guest pages.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let offset = data.len() as u64;
    assert_eq!(
        g.write(entry.nodeid, open.fh, offset, &big),
        big.len() as u32
    );
    g.release(entry.nodeid, open.fh);

    let host = g.root.as_path().join("new.txt");
    let on_host = fs::read(&host).expect("file on host");
    assert_eq!(&on_host[..data.len()], data);
    assert_eq!(&on_host[data.len()..], &big[..]);
    // The mode is exactly what the guest asked for (minus its umask of 022),
    // whatever the VMM's own umask is.
    let mode = fs::metadata(&host).expect("metadata").permissions().mode();
    assert_eq!(mode & 0o7777, 0o640);
}

#[test]
fn root_file_system_operations() {
    let mut g = Guest::new();
    let root = g.root.as_path().to_owned();
    fs::write(root.join("orig"), b"data").expect("host file");
    g.init();

    // mkdir with a mode the VMM's umask would normally clip.
    let dir = g.mkdir(ROOT_ID, "dir", 0o1777);
    let meta = fs::metadata(root.join("dir")).expect("dir on host");
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o1777);

    // Symlink and readlink.
    let link = g.symlink(dir.nodeid, "sym", "../orig");
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(g.readlink(link.nodeid), b"../orig");
    assert_eq!(
        fs::read_link(root.join("dir/sym")).expect("symlink on host"),
        std::path::Path::new("../orig")
    );

    // Hard link.
    let orig = g.entry(ROOT_ID, "orig");
    let hard = g.link(orig.nodeid, dir.nodeid, "hard");
    assert_eq!(hard.attr.nlink, 2);
    assert_eq!(
        fs::metadata(root.join("dir/hard"))
            .expect("hard link")
            .ino(),
        fs::metadata(root.join("orig")).expect("orig").ino()
    );

    // Rename across directories, then unlink.
    assert_eq!(g.rename(ROOT_ID, "orig", dir.nodeid, "moved").errno(), 0);
    assert!(!root.join("orig").exists());
    assert_eq!(fs::read(root.join("dir/moved")).expect("moved"), b"data");
    assert_eq!(g.unlink(dir.nodeid, "hard").errno(), 0);
    assert!(!root.join("dir/hard").exists());

    // chown, then chmod (a chown clears setuid, so in that order), then truncate.
    let moved = g.entry(dir.nodeid, "moved");
    g.setattr(
        moved.nodeid,
        SetattrIn {
            valid: (SetattrValid::UID | SetattrValid::GID).bits(),
            uid: 1234,
            gid: 5678,
            ..Default::default()
        },
    );
    let attr = g.setattr(
        moved.nodeid,
        SetattrIn {
            valid: SetattrValid::MODE.bits(),
            mode: libc::S_IFREG | 0o4755,
            ..Default::default()
        },
    );
    assert_eq!(attr.attr.mode & 0o7777, 0o4755);
    assert_eq!((attr.attr.uid, attr.attr.gid), (1234, 5678));
    let meta = fs::metadata(root.join("dir/moved")).expect("moved");
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o4755);
    g.setattr(
        moved.nodeid,
        SetattrIn {
            valid: SetattrValid::SIZE.bits(),
            size: 2,
            ..Default::default()
        },
    );
    assert_eq!(fs::read(root.join("dir/moved")).expect("moved"), b"da");

    // Extended attributes.
    assert_eq!(g.setxattr(moved.nodeid, "user.cocoon", b"value").errno(), 0);
    let got = g.getxattr(moved.nodeid, "user.cocoon", 64);
    assert_eq!(got.errno(), 0);
    assert_eq!(got.payload(), b"value");
    assert_eq!(
        g.getxattr(moved.nodeid, "user.absent", 64).errno(),
        libc::ENODATA
    );

    // Large files: a write beyond 4 GiB makes a sparse file of that size.
    let (big, open) = g.create(
        ROOT_ID,
        "large",
        libc::S_IFREG | 0o644,
        libc::O_RDWR | libc::O_CREAT,
    );
    let offset = 5 << 30;
    assert_eq!(g.write(big.nodeid, open.fh, offset, b"end"), 3);
    let read = g.read(big.nodeid, open.fh, offset, 16);
    assert_eq!(read.payload(), b"end");
    g.release(big.nodeid, open.fh);
    assert_eq!(
        fs::metadata(root.join("large")).expect("large").len(),
        offset + 3
    );
}

#[test]
fn lookup_cannot_leave_the_share() {
    // outer/secret next to outer/share: the guest must never see "secret".
    let tmp = tempfile::tempdir().expect("outer");
    fs::write(tmp.path().join("secret"), b"host only").expect("secret");
    let root = tmp.path().join("share");
    fs::create_dir(&root).expect("share");
    fs::write(root.join("inside"), b"x").expect("inside");
    let mut g = Guest::with_share(tmp, root, VIRTIO_F_VERSION_1, Caching::Coherent);
    g.init();

    // ".." of the root is the root itself, however often it is taken.
    let mut dir = ROOT_ID;
    for _ in 0..3 {
        dir = g.entry(dir, "..").nodeid;
        assert_eq!(g.lookup(dir, "secret").errno(), libc::ENOENT);
        assert_eq!(g.entry(dir, "inside").attr.size, 1);
    }
    // Names are single path components.
    assert_eq!(g.lookup(ROOT_ID, "../secret").errno(), libc::EINVAL);
    assert_eq!(g.lookup(ROOT_ID, "/etc").errno(), libc::EINVAL);
    // A symlink pointing out is only a string: the guest resolves it in its
    // own namespace, the device never follows it.
    let link = g.symlink(ROOT_ID, "out", "../secret");
    assert_eq!(g.readlink(link.nodeid), b"../secret");
    let fh_attempt = g.call(
        fuse_backend_rs::abi::fuse_abi::Opcode::Open,
        link.nodeid,
        &[&[0; 8]],
        16,
    );
    assert_ne!(fh_attempt.errno(), 0, "opened a symlink on the host");
}

#[test]
fn forget_on_the_high_priority_queue() {
    let mut g = Guest::new();
    fs::write(g.root.as_path().join("f"), b"x").expect("host file");
    g.init();
    let entry = g.entry(ROOT_ID, "f");
    let used = g.forget(entry.nodeid, 1);
    // No reply buffer, no reply.
    assert_eq!(used.len, 0);
    // The name resolves again (to a fresh inode) and the device still serves.
    assert_eq!(g.entry(ROOT_ID, "f").attr.size, 1);
    assert!(!g.needs_reset());
}

#[test]
fn reset_then_a_new_driver_mounts_again() {
    let mut g = Guest::new();
    fs::write(g.root.as_path().join("f"), b"abc").expect("host file");
    g.init();
    let entry = g.entry(ROOT_ID, "f");
    let fh = g.open(entry.nodeid, libc::O_RDONLY);

    // Driver reset (guest reboot or module reload): workers stop, state goes.
    g.d.write32(virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS, 0);
    assert!(!g.d.transport.is_activated());

    g.bring_up(VIRTIO_F_VERSION_1);
    check_init(&g.init());
    // The old node is forgotten; the file is found again.
    let read = g.read(entry.nodeid, fh, 0, 16);
    assert_ne!(read.errno(), 0);
    let entry = g.entry(ROOT_ID, "f");
    let fh = g.open(entry.nodeid, libc::O_RDONLY);
    assert_eq!(g.read(entry.nodeid, fh, 0, 16).payload(), b"abc");
}

#[test]
fn shares_are_independent_devices() {
    let mut a = Guest::new();
    let mut b = Guest::new();
    fs::write(a.root.as_path().join("only-in-a"), b"a").expect("host file");
    a.init();
    b.init();
    assert_eq!(a.lookup(ROOT_ID, "only-in-a").errno(), 0);
    assert_eq!(b.lookup(ROOT_ID, "only-in-a").errno(), libc::ENOENT);
}

#[test]
fn files_of_an_immutable_share_are_read_without_open_or_close() {
    let mut g = Guest::cached(Caching::Immutable);
    fs::write(
        g.root.as_path().join("passwd"),
        b"root:x:0:0::/root:/bin/sh\n",
    )
    .expect("host file");
    let flags = FsOptions::from_bits_truncate(u64::from(g.init().flags));
    assert!(flags.contains(FsOptions::ZERO_MESSAGE_OPEN), "{flags:?}");
    // It needs OPEN (O_TRUNC comes with it), which the guest no longer sends.
    assert!(!flags.contains(FsOptions::ATOMIC_O_TRUNC), "{flags:?}");

    let entry = g.entry(ROOT_ID, "passwd");
    assert_eq!(entry.entry_valid, IMMUTABLE_TIMEOUT.as_secs());
    assert_eq!(entry.attr_valid, IMMUTABLE_TIMEOUT.as_secs());
    // OPEN answers ENOSYS once, and Linux stops sending OPEN, FLUSH and
    // RELEASE on this connection (and keeps each file's page cache).
    let open = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let opened = g.call(Opcode::Open, entry.nodeid, &[open.as_slice()], 32);
    assert_eq!(opened.errno(), libc::ENOSYS);
    let read = g.read(entry.nodeid, 0, 0, 4096);
    assert_eq!(read.payload(), b"root:x:0:0::/root:/bin/sh\n");
    let flush = FlushIn {
        fh: 0,
        ..Default::default()
    };
    let flushed = g.call(Opcode::Flush, entry.nodeid, &[flush.as_slice()], 0);
    assert_eq!(flushed.errno(), libc::ENOSYS);
}
