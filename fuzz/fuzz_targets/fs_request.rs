//! virtio-fs: raw FUSE requests from the guest, served by the same code as the
//! device worker (`cocoon_vmm::virtio::fs::handle_request_bytes`) on a real
//! PassthroughFs share. Neither our request handling nor fuse-backend-rs may
//! panic.
//!
//! An input is a sequence of requests, each framed by its own `InHeader.len`
//! (so concatenated real requests are a valid input): a length that is
//! smaller than a header or runs past the input makes the rest of the input
//! one last request with that lying length. Each input gets a fresh server on
//! a fresh share holding a file `f`, a directory `d` and a symlink `l -> f`,
//! so inputs are independent and node ids and handles are deterministic.
//!
//! The fuzzer runs as root on a developer's machine, so the harness keeps the
//! guest's requests harmless to it: no device nodes (CAP_MKNOD dropped) and no
//! file larger than 1 MiB (RLIMIT_FSIZE; FALLOCATE, WRITE and SETATTR sizes
//! beyond it fail with EFBIG).
//!
//! Found by this target and now refused by the device itself
//! (vmm/src/virtio/fs/request.rs), their reproducers kept as seeds:
//! an O_PATH OPEN/CREATE, after which fuse-backend-rs closed an fd its handle
//! still owned (`known-opath-read-closes-fd`), and GETXATTR/LISTXATTR sizes
//! allocated up front up to 4 GiB (`known-xattr-4g`).
#![no_main]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cocoon_fuzz::confine::confine;
use cocoon_fuzz::scratch_root::scratch_root;
use cocoon_vmm::virtio::fs::{handle_request_bytes, new_server, Caching};
use libfuzzer_sys::fuzz_target;

/// `sizeof(struct fuse_in_header)`.
const IN_HEADER_LEN: usize = 40;
/// Most requests served per input.
const MAX_REQUESTS: usize = 32;
/// Largest file the guest may make (RLIMIT_FSIZE of the fuzzing process).
const MAX_FILE_SIZE: u64 = 1 << 20;

struct Harness {
    // Holds one share at a time.
    share: PathBuf,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        confine(MAX_FILE_SIZE).expect("confine the fuzzing process");
        Harness {
            share: scratch_root("fs").join("share"),
        }
    })
}

fn populate(share: &Path) -> io::Result<()> {
    std::fs::create_dir(share)?;
    std::fs::write(share.join("f"), b"content")?;
    std::fs::create_dir(share.join("d"))?;
    std::os::unix::fs::symlink("f", share.join("l"))
}

// Splits the input into requests by their InHeader.len fields.
fn requests(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while out.len() + 1 < MAX_REQUESTS {
        let Some(len) = data
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        else {
            break;
        };
        if len < IN_HEADER_LEN || len >= data.len() {
            break;
        }
        let (request, rest) = data.split_at(len);
        out.push(request);
        data = rest;
    }
    out.push(data);
    out
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    let share = &harness.share;
    for caching in [Caching::Coherent, Caching::Immutable] {
        populate(share).expect("create the share");
        let server = new_server(share, caching).expect("server");
        for (i, request) in requests(data).into_iter().enumerate() {
            let reply = handle_request_bytes(&server, request);
            assert!(
                !reply.panicked,
                "{caching:?}: request {i} panicked: {request:02x?}"
            );
        }
        drop(server);
        std::fs::remove_dir_all(share).expect("remove the share");
    }
});
