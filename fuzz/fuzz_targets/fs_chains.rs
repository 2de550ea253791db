//! virtio-fs through its queues: a guest brings the device up through the
//! virtio-mmio transport (as Linux's virtio_fs.c does, with the test driver
//! `cocoon_vmm::virtio::test_driver`) and posts FUSE requests as descriptor
//! chains of any shape: the request split at arbitrary points over many
//! descriptors, reply buffers of any size, zero-length descriptors, writable
//! before readable, descriptors outside or straddling the end of guest
//! memory, with huge lengths or overlapping the request or the ring, chains
//! as long as the descriptor table, and jumps or loops via `next`. The file
//! server is the real PassthroughFs over a fresh share per input.
//!
//! Asserts: nothing panics (neither our request handling nor fuse-backend-rs,
//! where a panic would set DEVICE_NEEDS_RESET, also checked); every chain is
//! completed within 5 s, with its own head and a used length no larger than
//! its writable buffers; nothing outside the share changes: a canary file
//! next to it keeps its contents and metadata (the share holds symlinks to it,
//! relative and absolute) and no other file appears there.
//!
//! An input is a sequence of chains, each
//! `[ctl, nsegs, len0, len1] request[len] nsegs * [kind, l0, l1, next]`:
//! `ctl & 7 == 7` picks the high-priority queue (else the request queue),
//! `ctl & 8` links the last descriptor back to the first; `1 + nsegs % 64`
//! descriptors; `kind % 8` is one of the shapes in `Shape::of` below, and
//! `kind & 0x80` makes the descriptor's `next` the byte `next` (a jump).
//! The fuzzer runs as root: CAP_MKNOD is dropped and files are capped at
//! 1 MiB (`cocoon_fuzz::confine`).
#![no_main]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cocoon_fuzz::chain_post::{Desc, PostedRing};
use cocoon_fuzz::confine::confine;
use cocoon_fuzz::scratch_root::{scratch_root, write_canary, CANARY};
use cocoon_vmm::virtio::fs::{Caching, Fs};
use cocoon_vmm::virtio::test_driver::{Driver, SplitRing, MEM_SIZE};
use cocoon_vmm::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::{Bytes, GuestAddress};

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const RING_SIZE: u16 = 64;
const HIPRIO_RING: u64 = 0x1000;
const REQUEST_RING: u64 = 0x3000;
/// Device-readable request bytes go here, device-writable buffers after.
const IN_BUF: u64 = 0x1_0000;
const OUT_BUF: u64 = 0x5_0000;
const OUT_END: u64 = 0xf_0000;
const MAX_CHAINS: usize = 16;
const MAX_FILE_SIZE: u64 = 1 << 20;

struct Harness {
    // Holds the canary and one share at a time.
    root: &'static Path,
    share: PathBuf,
    canary: PathBuf,
    canary_meta: (u64, i64, i64, u32, u64, u64),
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        confine(MAX_FILE_SIZE).expect("confine the fuzzing process");
        let root = scratch_root("fs-chains");
        let canary = write_canary(root);
        let canary_meta = meta(&canary);
        Harness {
            share: root.join("share"),
            root,
            canary,
            canary_meta,
        }
    })
}

// What a write through a symlink or hard link would change.
fn meta(path: &Path) -> (u64, i64, i64, u32, u64, u64) {
    let m = std::fs::symlink_metadata(path).expect("canary metadata");
    (
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.mode(),
        m.nlink(),
        m.uid().into(),
    )
}

fn populate(harness: &Harness) {
    let share = &harness.share;
    std::fs::create_dir(share).expect("share");
    std::fs::write(share.join("f"), b"content").expect("f");
    std::fs::create_dir(share.join("d")).expect("d");
    std::os::unix::fs::symlink("f", share.join("l")).expect("l");
    // Ways out, should the file server ever follow a guest's symlink on the host.
    std::os::unix::fs::symlink("../canary", share.join("up")).expect("up");
    std::os::unix::fs::symlink(&harness.canary, share.join("abs")).expect("abs");
}

fn check_sandbox(harness: &Harness) {
    let contents = std::fs::read(&harness.canary).expect("canary is gone");
    assert_eq!(contents, CANARY, "the canary outside the share changed");
    assert_eq!(
        meta(&harness.canary),
        harness.canary_meta,
        "canary metadata"
    );
    let mut names: Vec<_> = std::fs::read_dir(harness.root)
        .expect("root")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["canary", "share"],
        "files appeared outside the share"
    );
}

// One descriptor as the guest writes it.
struct Chain<'a> {
    hiprio: bool,
    looped: bool,
    request: &'a [u8],
    segs: Vec<[u8; 4]>,
}

// Splits the input into chains.
fn chains(mut data: &[u8]) -> Vec<Chain<'_>> {
    let mut out = Vec::new();
    while out.len() < MAX_CHAINS {
        let Some((&[ctl, nsegs, l0, l1], rest)) = data.split_first_chunk::<4>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([l0, l1])).min(rest.len());
        let (request, rest) = rest.split_at(len);
        let nsegs = 1 + usize::from(nsegs) % usize::from(RING_SIZE);
        let segs: Vec<[u8; 4]> = rest
            .chunks_exact(4)
            .take(nsegs)
            .map(|s| [s[0], s[1], s[2], s[3]])
            .collect();
        data = &rest[4 * segs.len()..];
        out.push(Chain {
            hiprio: ctl & 7 == 7,
            looped: ctl & 8 != 0,
            request,
            segs: if segs.is_empty() {
                // A request with no descriptor spec: one readable, one reply buffer.
                vec![[2, 0, 0, 0], [1, 0, 1, 0]]
            } else {
                segs
            },
        });
    }
    out
}

// Lays out a chain's descriptors (request bytes into IN_BUF, reply buffers in
// OUT_BUF); returns them and the total writable length, if it is meaningful.
fn lay_out(driver: &Driver, chain: &Chain<'_>) -> (Vec<Desc>, Option<u64>) {
    let mem = &driver.mem;
    let (mut req_at, mut out_at) = (0usize, OUT_BUF);
    let mut writable = Some(0u64);
    let mut descs = Vec::new();
    for &[kind, l0, l1, next] in &chain.segs {
        let len = u16::from_le_bytes([l0, l1]);
        let flag = if kind & 0x10 != 0 { WRITE } else { 0 };
        let (addr, len, flags) = match kind % 8 {
            // The next `len` request bytes (none: a zero-length descriptor).
            0 | 2 => {
                let take = if kind % 8 == 2 {
                    chain.request.len() - req_at
                } else {
                    usize::from(len).min(chain.request.len() - req_at)
                };
                let addr = IN_BUF + req_at as u64;
                mem.write_slice(&chain.request[req_at..req_at + take], GuestAddress(addr))
                    .expect("request bytes");
                req_at += take;
                (addr, take as u32, 0)
            }
            // A reply buffer of `len` bytes, or 16 times that.
            kind @ (1 | 3) => {
                let want = u64::from(len) * if kind == 3 { 16 } else { 1 };
                let len = want.min(OUT_END - out_at);
                let addr = out_at;
                out_at += len;
                (addr, len as u32, WRITE)
            }
            // Past the end of guest memory.
            4 => (MEM_SIZE + u64::from(len) * 8, u32::from(len), flag),
            // Straddling the end of guest memory.
            5 => (MEM_SIZE - u64::from(len % 0x1000) - 1, 0x2000, flag),
            // A length that wraps or runs far past the end.
            6 => (IN_BUF + u64::from(len), u32::MAX - u32::from(len), flag),
            // Over the request bytes or the descriptor table itself.
            _ => {
                let addr = if len & 1 == 0 { IN_BUF } else { REQUEST_RING };
                (addr, u32::from(len), flag)
            }
        };
        if flags & WRITE != 0 {
            writable = writable.map(|w| w + u64::from(len));
        }
        let jump = (kind & 0x80 != 0).then(|| u16::from(next) % RING_SIZE);
        if jump.is_some() {
            writable = None;
        }
        descs.push(Desc {
            addr,
            len,
            flags,
            jump,
        });
    }
    if chain.looped {
        writable = None;
    }
    (descs, writable)
}

struct Guest {
    driver: Driver,
    rings: [PostedRing; 2],
}

impl Guest {
    fn new(share: &Path, features: u64, caching: Caching) -> Self {
        let fs = Fs::new("cocoon-fuzz", share, caching).expect("Fs::new");
        let mut driver = Driver::new(Box::new(fs));
        let rings = [
            SplitRing::new(HIPRIO_RING, RING_SIZE),
            SplitRing::new(REQUEST_RING, RING_SIZE),
        ];
        assert!(driver.negotiate(features), "FEATURES_OK refused");
        driver.setup_queue(0, &rings[0]);
        driver.setup_queue(1, &rings[1]);
        assert!(driver.driver_ok(), "DRIVER_OK refused");
        Self {
            driver,
            rings: rings.map(PostedRing::new),
        }
    }

    fn post(&mut self, chain: &Chain<'_>) {
        let (descs, writable) = lay_out(&self.driver, chain);
        let q = usize::from(!chain.hiprio);
        self.rings[q].post(&mut self.driver, q as u32, &descs, chain.looped, writable);
    }
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    populate(harness);
    // The first byte: bit 0 EVENT_IDX, bit 1 the immutable share's caching.
    let (first, data) = data.split_first().map_or((0, data), |(&f, rest)| (f, rest));
    let features = if first & 1 != 0 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    } else {
        VIRTIO_F_VERSION_1
    };
    let caching = if first & 2 != 0 {
        Caching::Immutable
    } else {
        Caching::Coherent
    };
    let mut guest = Guest::new(&harness.share, features, caching);
    for chain in chains(data) {
        guest.post(&chain);
    }
    assert!(
        guest.driver.status() & VIRTIO_CONFIG_S_NEEDS_RESET == 0,
        "the device needs a reset (a panic in the file server?)"
    );
    // Stops and joins the device's workers.
    drop(guest);
    check_sandbox(harness);
    std::fs::remove_dir_all(&harness.share).expect("remove the share");
});
