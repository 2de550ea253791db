//! One request chain of any shape, posted and waited for: the guest half
//! the request-queue targets (`block_queues`, `fs_chains`) share. Their
//! devices answer each chain once, in order, so the guest posts one, waits
//! for its used entry and checks it before the next.

use std::time::{Duration, Instant};

use cocoon_vmm::virtio::test_driver::{Driver, SplitRing};
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;

/// How long a device may take to complete one chain.
pub const CHAIN_TIMEOUT: Duration = Duration::from_secs(5);
const NEXT: u16 = VRING_DESC_F_NEXT as u16;

/// One descriptor as the guest writes it.
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    /// A `next` of the input's choosing instead of the following descriptor.
    pub jump: Option<u16>,
}

/// A split ring in guest memory and how many of its chains were used.
pub struct PostedRing {
    pub ring: SplitRing,
    pub used: u16,
}

impl PostedRing {
    pub fn new(ring: SplitRing) -> Self {
        Self { ring, used: 0 }
    }

    /// Writes `descs` from descriptor 0 on, each linked to the next (or
    /// where it jumps; the last back to the first when `looped`), makes the
    /// chain available on queue `queue` and waits for it to be used.
    /// Asserts that it is, within [`CHAIN_TIMEOUT`], without the device
    /// needing a reset, under its own head, and with a used length no
    /// larger than `writable` when that bounds it.
    pub fn post(
        &mut self,
        driver: &mut Driver,
        queue: u32,
        descs: &[Desc],
        looped: bool,
        writable: Option<u64>,
    ) {
        let mem = driver.mem.clone();
        for (i, desc) in descs.iter().enumerate() {
            let index = i as u16;
            let last = i + 1 == descs.len();
            let (flags, next) = match desc.jump {
                Some(to) => (desc.flags | NEXT, to),
                None if !last => (desc.flags | NEXT, index + 1),
                None if looped => (desc.flags | NEXT, 0),
                None => (desc.flags, 0),
            };
            self.ring
                .set_desc(&mem, index, desc.addr, desc.len, flags, next);
        }
        self.ring.push(&mem, 0);
        self.used = self.used.wrapping_add(1);
        driver.notify(queue);

        let deadline = Instant::now() + CHAIN_TIMEOUT;
        while self.ring.used_idx(&mem) != self.used {
            assert!(
                driver.status() & VIRTIO_CONFIG_S_NEEDS_RESET == 0,
                "the device needs a reset (a panic in it?)"
            );
            assert!(
                Instant::now() < deadline,
                "the device never completed the chain"
            );
            std::thread::yield_now();
        }
        let (id, len) = self.ring.used_elem(&mem, self.used.wrapping_sub(1));
        assert_eq!(id, 0, "used entry for a chain never posted");
        if let Some(writable) = writable {
            assert!(
                u64::from(len) <= writable,
                "used length {len} > {writable} writable bytes"
            );
        }
    }
}
