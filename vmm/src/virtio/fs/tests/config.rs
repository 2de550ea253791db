//! Device identity, config space, tag validation and construction errors.

use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::ROOT_ID;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::guest::{Guest, TAG};
use crate::virtio::fs::{
    validate_tag, Caching, Fs, FsError, TagError, CONFIG_SPACE_SIZE, NUM_QUEUES, QUEUE_SIZE,
    TAG_LEN,
};
use crate::virtio::interrupt::VirtioInterrupt;
use crate::virtio::test_driver::guest_memory;
use crate::virtio::{
    ActivateError, Queue, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_ID_FS, VIRTIO_RING_F_EVENT_IDX,
};

fn share() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp share")
}

#[test]
fn identity_and_features() {
    let dir = share();
    let fs = Fs::new("id", dir.path(), Caching::Coherent).expect("Fs::new");
    assert_eq!(fs.device_type(), VIRTIO_ID_FS);
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes(), &[QUEUE_SIZE; NUM_QUEUES]);
    assert_eq!(NUM_QUEUES, 2);
    assert_eq!(
        fs.avail_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    );
    assert_eq!(fs.tag(), "id");
    assert_eq!(fs.root(), dir.path());
}

#[test]
fn config_space_holds_tag_and_queue_count() {
    let dir = share();
    let fs = Fs::new("rootfs-0", dir.path(), Caching::Coherent).expect("Fs::new");
    let mut config = [0xffu8; CONFIG_SPACE_SIZE];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..8], b"rootfs-0");
    assert!(
        config[8..TAG_LEN].iter().all(|&b| b == 0),
        "tag is NUL padded"
    );
    assert_eq!(
        u32::from_le_bytes(config[TAG_LEN..].try_into().expect("4 bytes")),
        1
    );
    // Past the end reads as zero; straddling reads are clipped.
    let mut data = [0xffu8; 8];
    fs.read_config(CONFIG_SPACE_SIZE as u64, &mut data);
    assert_eq!(data, [0; 8]);
    fs.read_config(TAG_LEN as u64, &mut data);
    assert_eq!(data, [1, 0, 0, 0, 0, 0, 0, 0]);
    fs.read_config(u64::MAX, &mut data);
    assert_eq!(data, [0; 8]);
}

#[test]
fn config_space_through_the_transport() {
    let mut g = Guest::new();
    // Linux reads the tag byte by byte and num_request_queues as a le32.
    let tag: Vec<u8> = (0..TAG_LEN as u64)
        .map(|i| {
            let mut b = [0u8; 1];
            g.d.transport.read(0x100 + i, &mut b);
            b[0]
        })
        .collect();
    let end = tag.iter().position(|&b| b == 0).unwrap_or(TAG_LEN);
    assert_eq!(&tag[..end], TAG.as_bytes());
    assert_eq!(g.d.read32(0x100 + TAG_LEN as u32), 1);
    // The config space is read-only.
    g.d.write32(0x100, 0x4141_4141);
    assert_eq!(
        g.d.read32(0x100),
        u32::from_le_bytes(TAG.as_bytes()[..4].try_into().unwrap())
    );
}

#[test]
fn full_length_tag_has_no_terminator() {
    let dir = share();
    let tag = "a".repeat(TAG_LEN);
    let fs = Fs::new(&tag, dir.path(), Caching::Coherent).expect("36-byte tag");
    let mut config = [0u8; CONFIG_SPACE_SIZE];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..TAG_LEN], tag.as_bytes());
    assert_eq!(config[TAG_LEN], 1);
}

#[test]
fn tag_validation() {
    assert_eq!(validate_tag(""), Err(TagError::Empty));
    assert_eq!(validate_tag("ok"), Ok(()));
    assert_eq!(validate_tag(&"x".repeat(TAG_LEN)), Ok(()));
    assert_eq!(
        validate_tag(&"x".repeat(TAG_LEN + 1)),
        Err(TagError::TooLong(TAG_LEN + 1))
    );
    // The limit is in bytes, not characters.
    assert_eq!(validate_tag(&"é".repeat(18)), Ok(()));
    assert_eq!(validate_tag(&"é".repeat(19)), Err(TagError::TooLong(38)));
    assert_eq!(validate_tag("a\0b"), Err(TagError::BadChar));
    assert_eq!(validate_tag("a\nb"), Err(TagError::BadChar));
}

#[test]
fn construction_errors() {
    let dir = share();
    assert!(matches!(
        Fs::new("", dir.path(), Caching::Coherent),
        Err(FsError::Tag {
            source: TagError::Empty,
            ..
        })
    ));
    assert!(matches!(
        Fs::new(&"t".repeat(37), dir.path(), Caching::Coherent),
        Err(FsError::Tag {
            source: TagError::TooLong(37),
            ..
        })
    ));
    assert!(matches!(
        Fs::new("t", dir.path().join("missing"), Caching::Coherent),
        Err(FsError::Root { .. })
    ));
    let file = dir.path().join("file");
    std::fs::write(&file, b"").expect("file");
    assert!(matches!(
        Fs::new("t", &file, Caching::Coherent),
        Err(FsError::NotADirectory(_))
    ));
    // A symlink to a directory is resolved, not refused.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).expect("symlink");
    Fs::new("t", &link, Caching::Coherent).expect("share through a symlink");
}

#[test]
fn umask_of_the_vmm_is_left_alone() {
    // In a thread with its own fs context, so that other tests building
    // devices concurrently neither disturb nor see this thread's mask.
    let thread = std::thread::spawn(|| {
        // SAFETY: detaches this thread's umask/cwd/root from the process; no memory involved.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_FS) }, 0);
        // SAFETY: only sets this (now private) thread's mask.
        unsafe { libc::umask(0o027) };
        let dir = share();
        let _fs = Fs::new("t", dir.path(), Caching::Coherent).expect("Fs::new");
        // SAFETY: as above; reads the mask by swapping it.
        unsafe { libc::umask(0o022) }
    });
    assert_eq!(thread.join().expect("thread"), 0o027);
}

#[test]
fn activate_checks_queues() {
    let dir = share();
    let mut fs = Fs::new("t", dir.path(), Caching::Coherent).expect("Fs::new");
    let irq = || {
        Arc::new(VirtioInterrupt::new(
            EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        ))
    };
    let result = fs.activate(guest_memory(), irq(), Vec::new(), Vec::new());
    assert!(matches!(result, Err(ActivateError::QueueCount { .. })));
    // Both queues present, none enabled: the request queue is required.
    let queues = (0..NUM_QUEUES)
        .map(|_| Queue::new(QUEUE_SIZE).expect("queue"))
        .collect();
    let events = (0..NUM_QUEUES)
        .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let result = fs.activate(guest_memory(), irq(), queues, events);
    assert!(matches!(result, Err(ActivateError::QueueNotReady(1))));
}

#[test]
fn works_without_the_high_priority_queue() {
    let mut g = Guest::new();
    std::fs::write(g.root.as_path().join("f"), b"x").expect("host file");
    g.bring_up_queues(VIRTIO_F_VERSION_1, false);
    g.init();
    assert_eq!(g.entry(ROOT_ID, "f").attr.size, 1);
}
