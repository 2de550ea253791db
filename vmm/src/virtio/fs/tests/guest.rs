//! A guest-side virtio-fs driver for the tests: it owns a temp share, brings the
//! device up through the virtio-mmio transport like Linux's virtio_fs.c, and
//! sends FUSE requests as descriptor chains on hand-built split rings.

use std::mem::size_of;
use std::path::PathBuf;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use tempfile::TempDir;
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::virtio::fs::{Caching, Fs};
use crate::virtio::test_driver::{Driver, SplitRing};
use crate::virtio::VIRTIO_F_VERSION_1;

pub(super) const TAG: &str = "cocoon-test";
pub(super) const WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub(super) const NEXT: u16 = VRING_DESC_F_NEXT as u16;

const RING_SIZE: u16 = 16;
const HIPRIO_RING: u64 = 0x1000;
const REQUEST_RING: u64 = 0x3000;
/// Where device-readable request bytes go (up to 256 KiB).
pub(super) const IN_BUF: u64 = 0x10000;
/// Where device-writable reply buffers go (up to 256 KiB).
pub(super) const OUT_BUF: u64 = 0x50000;
const BUF_SIZE: u64 = 0x40000;

/// Which virtqueue a chain goes to.
#[derive(Clone, Copy, Debug)]
pub(super) enum Q {
    Hiprio = 0,
    Request = 1,
}

/// One buffer of a descriptor chain.
pub(super) enum Seg<'a> {
    /// Device-readable bytes, copied into IN_BUF.
    In(&'a [u8]),
    /// A zeroed device-writable buffer of this size in OUT_BUF.
    Out(u32),
    /// A descriptor exactly as given (for hostile chains); not read back.
    Raw { addr: u64, len: u32, flags: u16 },
}

/// What the device put in the used ring for a chain, and the reply bytes.
#[derive(Debug)]
pub(super) struct Used {
    pub(super) id: u32,
    pub(super) len: u32,
    /// The first `len` bytes of the chain's Out buffers, in order.
    pub(super) bytes: Vec<u8>,
}

impl Used {
    pub(super) fn header(&self) -> OutHeader {
        read_obj(&self.bytes, 0)
    }

    /// The errno of the reply (0 for success).
    pub(super) fn errno(&self) -> i32 {
        assert!(
            self.bytes.len() >= size_of::<OutHeader>(),
            "no FUSE reply: {self:?}"
        );
        -self.header().error
    }

    /// Asserts a successful reply and returns the object after the header.
    pub(super) fn ok<T: ByteValued + Default>(&self) -> T {
        assert_eq!(self.errno(), 0, "FUSE request failed: {self:?}");
        assert_eq!(self.header().len, self.len, "out header len != used len");
        read_obj(&self.bytes, size_of::<OutHeader>())
    }

    /// The payload after the out header.
    pub(super) fn payload(&self) -> &[u8] {
        &self.bytes[size_of::<OutHeader>().min(self.bytes.len())..]
    }
}

pub(super) fn read_obj<T: ByteValued + Default>(bytes: &[u8], at: usize) -> T {
    let mut obj = T::default();
    let size = size_of::<T>();
    let src = bytes
        .get(at..at + size)
        .unwrap_or_else(|| panic!("reply too short for {size} bytes at {at}: {bytes:?}"));
    obj.as_mut_slice().copy_from_slice(src);
    obj
}

/// Bytes of a NUL-terminated name.
pub(super) fn cstr(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// The guest: a driver bound to an `Fs` device sharing a temp directory.
pub(super) struct Guest {
    pub(super) d: Driver,
    /// The shared host directory.
    pub(super) root: PathBuf,
    _tmp: TempDir,
    rings: [SplitRing; 2],
    used: [u16; 2],
    next_unique: u64,
}

impl Guest {
    /// A device sharing a fresh temp directory, driven up to DRIVER_OK.
    pub(super) fn new() -> Self {
        Self::cached(Caching::Coherent)
    }

    /// Like [`new`](Self::new), for a share cached as `caching` says.
    pub(super) fn cached(caching: Caching) -> Self {
        let tmp = tempfile::tempdir().expect("temp share");
        let root = tmp.path().to_owned();
        Self::with_share(tmp, root, VIRTIO_F_VERSION_1, caching)
    }

    /// A device sharing `root` (somewhere inside `tmp`, which the guest keeps alive).
    pub(super) fn with_share(tmp: TempDir, root: PathBuf, features: u64, caching: Caching) -> Self {
        let fs = Fs::new(TAG, &root, caching).expect("Fs::new");
        let mut guest = Self {
            d: Driver::new(Box::new(fs)),
            root,
            _tmp: tmp,
            rings: [
                SplitRing::new(HIPRIO_RING, RING_SIZE),
                SplitRing::new(REQUEST_RING, RING_SIZE),
            ],
            used: [0; 2],
            next_unique: 1,
        };
        guest.bring_up(features);
        guest
    }

    /// Reset + feature negotiation + both queues + DRIVER_OK on fresh rings.
    pub(super) fn bring_up(&mut self, features: u64) {
        self.bring_up_queues(features, true);
    }

    /// Like [`bring_up`](Self::bring_up), optionally leaving the
    /// high-priority queue disabled.
    pub(super) fn bring_up_queues(&mut self, features: u64, hiprio: bool) {
        assert!(self.d.negotiate(features), "FEATURES_OK refused");
        self.rings = [
            SplitRing::new(HIPRIO_RING, RING_SIZE),
            SplitRing::new(REQUEST_RING, RING_SIZE),
        ];
        self.used = [0; 2];
        // The rings live in zeroed memory again, as after a guest reboot.
        let zeros = vec![0u8; (REQUEST_RING + 0x1000 - HIPRIO_RING) as usize];
        self.d
            .mem
            .write_slice(&zeros, GuestAddress(HIPRIO_RING))
            .expect("clear rings");
        if hiprio {
            self.d.setup_queue(Q::Hiprio as u32, &self.rings[0]);
        }
        self.d.setup_queue(Q::Request as u32, &self.rings[1]);
        assert!(self.d.driver_ok(), "DRIVER_OK refused");
        assert!(self.d.transport.is_activated());
    }

    /// Writes a bogus avail index on `q` (a lying driver) and kicks the device.
    pub(super) fn corrupt_avail_idx(&mut self, q: Q, idx: u16) {
        self.rings[q as usize].set_avail_idx(&self.d.mem, idx);
        self.d.notify(q as u32);
    }

    pub(super) fn needs_reset(&mut self) -> bool {
        self.d.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    /// Posts `segs` as one chain on `q` and waits for the device to use it.
    pub(super) fn send(&mut self, q: Q, segs: &[Seg<'_>]) -> Used {
        self.post(q, segs, None)
    }

    /// Like [`send`](Self::send) on the request queue, but the last descriptor
    /// links back to the first: a chain that never ends.
    pub(super) fn send_looped(&mut self, segs: &[Seg<'_>]) -> Used {
        self.post(Q::Request, segs, Some(0))
    }

    fn post(&mut self, q: Q, segs: &[Seg<'_>], loop_to: Option<u16>) -> Used {
        assert!(!segs.is_empty() && segs.len() <= usize::from(RING_SIZE));
        let mem = &self.d.mem;
        let ring = &mut self.rings[q as usize];
        let (mut in_at, mut out_at) = (IN_BUF, OUT_BUF);
        let mut outs = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let (addr, len, mut flags) = match *seg {
                Seg::In(bytes) => {
                    let addr = in_at;
                    mem.write_slice(bytes, GuestAddress(addr)).expect("in buf");
                    in_at = (in_at + bytes.len() as u64).next_multiple_of(16);
                    (addr, bytes.len() as u32, 0)
                }
                Seg::Out(len) => {
                    let addr = out_at;
                    mem.write_slice(&vec![0; len as usize], GuestAddress(addr))
                        .expect("out buf");
                    out_at = (out_at + u64::from(len)).next_multiple_of(16);
                    outs.push((addr, len));
                    (addr, len, WRITE)
                }
                Seg::Raw { addr, len, flags } => (addr, len, flags & !NEXT),
            };
            assert!(in_at <= IN_BUF + BUF_SIZE && out_at <= OUT_BUF + BUF_SIZE);
            let mut next = i as u16 + 1;
            if i + 1 < segs.len() {
                flags |= NEXT;
            } else if let Some(first) = loop_to {
                flags |= NEXT;
                next = first;
            }
            ring.set_desc(mem, i as u16, addr, len, flags, next);
        }
        ring.push(mem, 0);
        self.used[q as usize] = self.used[q as usize].wrapping_add(1);
        let want = self.used[q as usize];
        self.d.notify(q as u32);
        let ring = &self.rings[q as usize];
        assert!(
            ring.wait_used(&self.d.mem, want),
            "the device never completed the chain on {q:?}"
        );
        let (id, len) = ring.used_elem(&self.d.mem, want.wrapping_sub(1));
        let mut bytes = Vec::new();
        let mut left = len as usize;
        for (addr, size) in outs {
            let take = left.min(size as usize);
            let mut chunk = vec![0; take];
            self.d
                .mem
                .read_slice(&mut chunk, GuestAddress(addr))
                .expect("out buf");
            bytes.extend_from_slice(&chunk);
            left -= take;
        }
        Used { id, len, bytes }
    }

    /// A FUSE request header for `opcode` on `nodeid` with `args_len` bytes of arguments.
    pub(super) fn header(&mut self, opcode: Opcode, nodeid: u64, args_len: usize) -> InHeader {
        let unique = self.next_unique;
        self.next_unique += 1;
        InHeader {
            len: (size_of::<InHeader>() + args_len) as u32,
            opcode: opcode as u32,
            unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        }
    }

    /// Sends a well-formed FUSE request the way Linux lays it out (header and
    /// each argument in its own buffer, then out header and out arguments) and
    /// checks that the reply answers it.
    pub(super) fn call(&mut self, opcode: Opcode, nodeid: u64, args: &[&[u8]], out: u32) -> Used {
        let args_len = args.iter().map(|a| a.len()).sum();
        let header = self.header(opcode, nodeid, args_len);
        let mut segs = vec![Seg::In(header.as_slice())];
        segs.extend(args.iter().copied().filter(|a| !a.is_empty()).map(Seg::In));
        segs.push(Seg::Out(size_of::<OutHeader>() as u32));
        if out > 0 {
            segs.push(Seg::Out(out));
        }
        let used = self.send(Q::Request, &segs);
        assert_eq!(used.id, 0);
        assert_eq!(
            used.header().unique,
            header.unique,
            "reply to another request"
        );
        used
    }
}
