//! The file server at the VMM's open-file limit (which the jail bounds): the
//! guest's LOOKUPs fail with EMFILE, nothing panics, and once the guest
//! forgets inodes, lookups succeed again. Its own test binary: the limit is
//! process-wide.

use std::mem::size_of;

use cocoon_vmm::virtio::fs::{handle_request_bytes, new_server, Caching, FsServer};
use fuse_backend_rs::abi::fuse_abi::{
    EntryOut, ForgetIn, InHeader, InitIn, Opcode, OutHeader, KERNEL_MINOR_VERSION, KERNEL_VERSION,
    ROOT_ID,
};
use vm_memory::ByteValued;

fn request(opcode: Opcode, nodeid: u64, unique: u64, args: &[u8]) -> Vec<u8> {
    let header = InHeader {
        len: (size_of::<InHeader>() + args.len()) as u32,
        opcode: opcode as u32,
        unique,
        nodeid,
        ..Default::default()
    };
    let mut bytes = header.as_slice().to_vec();
    bytes.extend_from_slice(args);
    bytes
}

/// (errno, node id) of a LOOKUP of `name` in the root.
fn lookup(server: &FsServer, unique: u64, name: &str) -> (i32, u64) {
    let mut name = name.as_bytes().to_vec();
    name.push(0);
    let reply = handle_request_bytes(server, &request(Opcode::Lookup, ROOT_ID, unique, &name));
    assert!(!reply.panicked, "the file server panicked at the limit");
    let mut header = OutHeader::default();
    header
        .as_mut_slice()
        .copy_from_slice(&reply.bytes[..size_of::<OutHeader>()]);
    if header.error != 0 {
        return (-header.error, 0);
    }
    let mut entry = EntryOut::default();
    entry
        .as_mut_slice()
        .copy_from_slice(&reply.bytes[size_of::<OutHeader>()..][..size_of::<EntryOut>()]);
    (0, entry.nodeid)
}

fn set_soft_limit(value: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write the one struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
        let new = libc::rlimit {
            rlim_cur: value,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &new), 0);
    }
    old
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[test]
fn at_the_limit_lookups_fail_with_emfile_and_the_server_recovers() {
    const FILES: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..FILES {
        std::fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
    }
    let server = new_server(dir.path(), Caching::Coherent).unwrap();
    let init = InitIn {
        major: KERNEL_VERSION,
        minor: KERNEL_MINOR_VERSION,
        ..Default::default()
    };
    assert!(!handle_request_bytes(&server, &request(Opcode::Init, 0, 1, init.as_slice())).panicked);

    let room = 50;
    let old = set_soft_limit(open_fds() + room);
    let results: Vec<(i32, u64)> = (0..FILES)
        .map(|i| lookup(&server, 100 + i, &format!("f{i}")))
        .collect();
    let ok: Vec<u64> = results.iter().filter(|r| r.0 == 0).map(|r| r.1).collect();
    let failed = results.iter().filter(|r| r.0 != 0).count() as u64;
    assert!(
        results.iter().all(|r| r.0 == 0 || r.0 == libc::EMFILE),
        "{results:?}"
    );
    // The limit bounds descriptor numbers, not their count: holes below it
    // leave a little more room than counted.
    assert!(
        ok.len() as u64 <= room + 10,
        "{} lookups held fds",
        ok.len()
    );
    assert!(failed >= FILES - room - 10, "only {failed} lookups failed");

    // The guest forgets what it holds; the descriptors come back.
    for (i, node) in ok.iter().enumerate() {
        let forget = ForgetIn { nlookup: 1 };
        handle_request_bytes(
            &server,
            &request(Opcode::Forget, *node, 1000 + i as u64, forget.as_slice()),
        );
    }
    assert_eq!(lookup(&server, 5000, &format!("f{}", FILES - 1)).0, 0);
    // SAFETY: puts back the limit read before.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) };
}
