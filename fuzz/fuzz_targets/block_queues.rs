//! virtio-blk through its queue: a guest brings the device up through the
//! virtio-mmio transport (test driver `cocoon_vmm::virtio::test_driver`) and
//! posts requests as descriptor chains of any shape: any request type and
//! sector (near the disk's end, past it, wrapping), headers of any length
//! and direction, data buffers of either direction, zero-length, outside or
//! straddling the end of guest memory or over the ring, status bytes
//! missing or readable, chains as long as the descriptor table, loops. The
//! disk is a real file of 64 sectors, beside a canary file.
//!
//! Asserts: nothing panics and the device never needs a reset; every chain
//! completes within 5 s with its own head and a used length no larger than
//! its writable buffers; the status byte is OK, IOERR or UNSUPP, or
//! untouched; the disk file keeps its size (nothing is written past the
//! disk) and the canary its contents.
//!
//! An input is a sequence of chains, each `[type, s0..s7, nsegs]` then
//! `1 + nsegs % 32` descriptors `[kind, l0, l1, next]`: `type` picks the
//! request type (IN, OUT, GET_ID or the byte itself), `s` the sector
//! (little-endian; `type & 0x80` makes it relative to the disk's end),
//! `kind % 8` a shape in `lay_out` below, `kind & 0x10` the device-writable
//! flag for the shapes that take one, `kind & 0x80` a jump to descriptor
//! `next`; `type & 0x40` loops the last descriptor back to the first.
#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use cocoon_fuzz::chain_post::{Desc, PostedRing};
use cocoon_fuzz::scratch_root::{scratch_root, write_canary, CANARY};
use cocoon_vmm::virtio::block::request::{S_IOERR, S_OK, S_UNSUPP, T_GET_ID, T_IN, T_OUT};
use cocoon_vmm::virtio::block::{Block, DiskFile};
use cocoon_vmm::virtio::test_driver::{Driver, SplitRing, MEM_SIZE};
use cocoon_vmm::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::{Bytes, GuestAddress};

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const RING_SIZE: u16 = 64;
const RING: u64 = 0x1000;
const HEADER: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const DATA_END: u64 = 0xc_0000;
const STATUS: u64 = 0xd_0000;
const SECTORS: u64 = 64;
const MAX_CHAINS: usize = 16;
const MAX_SEGS: u8 = 32;
const UNTOUCHED: u8 = 0xee;

struct Harness {
    disk: PathBuf,
    canary: PathBuf,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let root = scratch_root("block");
        Harness {
            disk: root.join("disk"),
            canary: write_canary(root),
        }
    })
}

struct Chain {
    request_type: u32,
    sector: u64,
    looped: bool,
    segs: Vec<[u8; 4]>,
}

fn chains(mut data: &[u8]) -> Vec<Chain> {
    let mut out = Vec::new();
    while out.len() < MAX_CHAINS {
        let Some((head, rest)) = data.split_first_chunk::<10>() else {
            break;
        };
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&head[1..9]);
        let sector = u64::from_le_bytes(sector);
        let sector = if head[0] & 0x80 != 0 {
            SECTORS.wrapping_sub(sector % 4)
        } else {
            sector
        };
        let request_type = match head[0] % 4 {
            0 => T_IN,
            1 => T_OUT,
            2 => T_GET_ID,
            _ => u32::from(head[0]),
        };
        let nsegs = 1 + usize::from(head[9] % MAX_SEGS);
        let segs: Vec<[u8; 4]> = rest
            .chunks_exact(4)
            .take(nsegs)
            .map(|s| [s[0], s[1], s[2], s[3]])
            .collect();
        data = &rest[4 * segs.len()..];
        out.push(Chain {
            request_type,
            sector,
            looped: head[0] & 0x40 != 0,
            segs: if segs.is_empty() {
                // Header, one sector of data, status.
                vec![[0, 16, 0, 0], [1, 0, 2, 0], [2, 1, 0, 0]]
            } else {
                segs
            },
        });
    }
    out
}

// Lays out a chain's descriptors; returns them and their writable length,
// when that bounds the used length (not with jumps or loops).
fn lay_out(chain: &Chain) -> (Vec<Desc>, Option<u64>) {
    let mut data_at = DATA;
    let mut writable = Some(0u64);
    let mut descs = Vec::new();
    for &[kind, l0, l1, next] in &chain.segs {
        let len = u16::from_le_bytes([l0, l1]);
        let flag = if kind & 0x10 != 0 { WRITE } else { 0 };
        let (addr, len, flags) = match kind % 8 {
            // The header, `len` bytes of it (16 is right).
            0 => (HEADER, u32::from(len % 64), flag),
            // A data buffer of `len` sectors' worth or `len` bytes.
            1 | 3 => {
                let want = if kind % 8 == 1 {
                    u64::from(len % 64) * 512
                } else {
                    u64::from(len)
                };
                let len = want.min(DATA_END - data_at);
                let addr = data_at;
                data_at += len;
                (addr, len as u32, flag)
            }
            // The status byte (or a longer buffer).
            2 => (STATUS, u32::from(len % 4).max(1), flag),
            // Past the end of guest memory.
            4 => (MEM_SIZE + u64::from(len) * 8, u32::from(len), flag),
            // Straddling the end of guest memory.
            5 => (MEM_SIZE - u64::from(len % 0x1000) - 1, 0x2000, flag),
            // A length that wraps or runs far past the end.
            6 => (DATA + u64::from(len), u32::MAX - u32::from(len), flag),
            // Over the descriptor table itself.
            _ => (RING, u32::from(len), flag),
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
    ring: PostedRing,
}

impl Guest {
    fn new(disk: &std::path::Path, features: u64) -> Self {
        let mut file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(disk)
            .expect("disk file");
        file.write_all(&[0x5a; (SECTORS * 512) as usize])
            .expect("disk contents");
        let disk = DiskFile::from_file(file).expect("a disk");
        let mut driver = Driver::new(Box::new(Block::new(disk)));
        let ring = SplitRing::new(RING, RING_SIZE);
        assert!(driver.negotiate(features), "FEATURES_OK refused");
        driver.setup_queue(0, &ring);
        assert!(driver.driver_ok(), "DRIVER_OK refused");
        Self {
            driver,
            ring: PostedRing::new(ring),
        }
    }

    fn post(&mut self, chain: &Chain) {
        let mem = self.driver.mem.clone();
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&chain.request_type.to_le_bytes());
        header[8..16].copy_from_slice(&chain.sector.to_le_bytes());
        mem.write_slice(&header, GuestAddress(HEADER))
            .expect("header");
        mem.write_obj(UNTOUCHED, GuestAddress(STATUS))
            .expect("status");
        let (descs, writable) = lay_out(chain);
        self.ring
            .post(&mut self.driver, 0, &descs, chain.looped, writable);
        // A status byte that nothing else in the chain can write: exactly
        // one descriptor there, the last, in a plain chain.
        let lone_status = writable.is_some()
            && descs.iter().filter(|d| d.addr == STATUS).count() == 1
            && descs.last().is_some_and(|d| d.addr == STATUS);
        if lone_status {
            let status: u8 = mem.read_obj(GuestAddress(STATUS)).expect("status");
            assert!(
                [S_OK, S_IOERR, S_UNSUPP, UNTOUCHED].contains(&status),
                "status byte {status:#x}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    let (features, data) = match data.split_first() {
        Some((&f, rest)) if f & 1 != 0 => (VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX, rest),
        Some((_, rest)) => (VIRTIO_F_VERSION_1, rest),
        None => (VIRTIO_F_VERSION_1, data),
    };
    let mut guest = Guest::new(&harness.disk, features);
    for chain in chains(data) {
        guest.post(&chain);
    }
    drop(guest);
    let size = std::fs::metadata(&harness.disk).expect("disk").len();
    assert_eq!(size, SECTORS * 512, "the disk file changed size");
    assert_eq!(
        std::fs::read(&harness.canary).expect("canary"),
        CANARY,
        "the canary changed"
    );
});
