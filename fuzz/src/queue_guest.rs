//! The guest half of the queue targets (`net_queues`, `vsock_queues`): the
//! input reader, and a device's rx and tx split rings in guest memory driven
//! the way the input says: rx chains of any shape (some unusable), tx chains
//! cut at input-chosen points with hostile descriptors added, and every used
//! entry checked against what the guest still had out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cocoon_vmm::virtio::interrupt::VirtioInterrupt;
use cocoon_vmm::virtio::test_driver::SplitRing;
use cocoon_vmm::virtio::{GuestMemory, VirtioDevice};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Most descriptors of an rx chain from [`GuestQueues::post_rx`].
const MAX_SEGS: usize = 8;
/// How long the device may take to complete the tx chains posted.
const TX_TIMEOUT: Duration = Duration::from_secs(5);
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;

/// Whether `COCOON_FUZZ_TRACE` is set: then the targets print what goes
/// through the queues (seed work).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("COCOON_FUZZ_TRACE").is_some())
}

/// `eprintln!` when [`tracing`].
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::queue_guest::tracing() {
            eprintln!($($arg)*);
        }
    };
}

/// The fuzz input, read front to back; zeros once it is used up.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    pub fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    /// Up to `n` bytes (fewer where the input ends).
    pub fn take(&mut self, n: usize) -> &[u8] {
        let (now, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        now
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Where the rings and buffers lie in guest memory (one region from 0).
pub struct Layout {
    pub mem_size: u64,
    /// Ring addresses in queue order: rx, tx, then any more the device has.
    pub rings: &'static [u64],
    /// Each rx chain gets `rx_stride` bytes of room at `rx_bufs + head * rx_stride`.
    pub rx_bufs: u64,
    pub rx_stride: u64,
    /// Each tx chain's bytes go to `tx_bufs + head * tx_stride`.
    pub tx_bufs: u64,
    pub tx_stride: u64,
}

// Descriptor indices of one ring that no posted chain uses.
struct FreeList(Vec<u16>);

impl FreeList {
    fn new(size: u16) -> Self {
        Self((0..size).rev().collect())
    }
    fn take(&mut self, n: usize) -> Option<Vec<u16>> {
        (self.0.len() >= n).then(|| self.0.split_off(self.0.len() - n))
    }
}

// An rx chain the device owns.
struct RxChain {
    descs: Vec<u16>,
    // (address, length) of its writable buffers in order; None if the chain
    // is unusable (the device must return it empty).
    bufs: Option<Vec<(u64, u64)>>,
}

/// An rx chain the device gave back.
pub enum UsedRx {
    /// One the guest posted unusable, returned empty as it must be.
    Unusable,
    /// What the device wrote into a usable one (maybe nothing).
    Written(Vec<u8>),
}

/// The guest side of a device's rx (0) and tx (1) queues; the device's
/// other queues are activated and left alone.
pub struct GuestQueues {
    pub mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    kicks: Vec<EventFd>,
    layout: Layout,
    rx: SplitRing,
    tx: SplitRing,
    rx_free: FreeList,
    tx_free: FreeList,
    rx_posted: HashMap<u16, RxChain>,
    tx_posted: HashMap<u16, Vec<u16>>,
    rx_seen: u16,
    tx_seen: u16,
}

impl GuestQueues {
    /// Starts `device`'s threads (as the VM does before the guest runs,
    /// without seccomp filters) and activates it on fresh guest memory with
    /// rings of `queue_size` at `layout.rings`; the features it is to use
    /// must be acked already.
    pub fn activate(device: &mut dyn VirtioDevice, layout: Layout, queue_size: u16) -> Self {
        device.threads().start(None).expect("device threads");
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), layout.mem_size as usize)])
            .expect("guest memory");
        let irq = EventFd::new(EFD_NONBLOCK).expect("irq");
        let interrupt = Arc::new(VirtioInterrupt::new(irq));
        let rings: Vec<SplitRing> = layout
            .rings
            .iter()
            .map(|&addr| SplitRing::new(addr, queue_size))
            .collect();
        let queues = rings.iter().map(|ring| ring.queue(queue_size)).collect();
        let events: Vec<EventFd> = rings
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("queue event"))
            .collect();
        let kicks = events
            .iter()
            .map(|e| e.try_clone().expect("queue event"))
            .collect();
        device
            .activate(mem.clone(), Arc::clone(&interrupt), queues, events)
            .expect("activate");
        let mut rings = rings.into_iter();
        let (Some(rx), Some(tx)) = (rings.next(), rings.next()) else {
            panic!("the layout names no rx and tx ring");
        };
        Self {
            mem,
            interrupt,
            kicks,
            layout,
            rx,
            tx,
            rx_free: FreeList::new(queue_size),
            tx_free: FreeList::new(queue_size),
            rx_posted: HashMap::new(),
            tx_posted: HashMap::new(),
            rx_seen: 0,
            tx_seen: 0,
        }
    }

    pub fn kick(&self, queue: usize) {
        self.kicks[queue].write(1).expect("kick");
    }

    /// Asserts the device does not need a reset.
    pub fn check(&self) {
        assert!(!self.interrupt.needs_reset(), "the device needs a reset");
    }

    // Writes `descs` as a chain through the descriptor indices `indices`.
    fn write_chain(
        ring: &SplitRing,
        mem: &GuestMemory,
        indices: &[u16],
        descs: &[(u64, u32, u16)],
        loop_back: bool,
    ) {
        for (i, (&index, &(addr, len, flags))) in indices.iter().zip(descs).enumerate() {
            let (flags, next) = match indices.get(i + 1) {
                Some(&next) => (flags | NEXT, next),
                None if loop_back => (flags | NEXT, indices[0]),
                None => (flags, 0),
            };
            ring.set_desc(mem, index, addr, len, flags, next);
        }
    }

    /// Takes back the tx chains the device completed.
    pub fn reap_tx(&mut self) {
        while let Some((descs, len)) = pop_used(
            &self.tx,
            &self.mem,
            &mut self.tx_seen,
            &mut self.tx_posted,
            "tx",
        ) {
            assert_eq!(len, 0, "the device wrote into a tx chain");
            self.tx_free.0.extend(descs);
        }
    }

    /// Waits until the device completed every tx chain, running [`check`]
    /// and `also` (the target's own checks) while it waits.
    ///
    /// [`check`]: GuestQueues::check
    pub fn settle_tx(&mut self, also: &dyn Fn()) {
        let deadline = Instant::now() + TX_TIMEOUT;
        loop {
            self.reap_tx();
            self.check();
            also();
            if self.tx_posted.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the device stopped completing tx chains"
            );
            std::thread::yield_now();
        }
    }

    /// Waits for rx to go quiet: no buffer used for 2 ms (at most 50 ms).
    pub fn wait_rx_quiet(&self) {
        let start = Instant::now();
        let mut last = (Instant::now(), self.rx.used_idx(&self.mem));
        while start.elapsed() < Duration::from_millis(50) {
            let used = self.rx.used_idx(&self.mem);
            if used != last.1 {
                last = (Instant::now(), used);
            } else if last.0.elapsed() > Duration::from_millis(2) {
                break;
            }
            std::thread::yield_now();
        }
    }

    /// Takes back the next rx chain the device returned, checking that the
    /// guest had it out and that its used length fits its room.
    pub fn next_used_rx(&mut self) -> Option<UsedRx> {
        let (chain, len) = pop_used(
            &self.rx,
            &self.mem,
            &mut self.rx_seen,
            &mut self.rx_posted,
            "rx",
        )?;
        self.rx_free.0.extend(&chain.descs);
        let Some(bufs) = chain.bufs else {
            assert_eq!(len, 0, "the device used an unusable rx buffer");
            return Some(UsedRx::Unusable);
        };
        let room: u64 = bufs.iter().map(|b| b.1).sum();
        assert!(u64::from(len) <= room, "used length {len} > room {room}");
        let mut bytes = Vec::with_capacity(len as usize);
        let mut left = u64::from(len);
        for (addr, blen) in bufs {
            let n = blen.min(left);
            let mut part = vec![0u8; n as usize];
            self.mem
                .read_slice(&mut part, GuestAddress(addr))
                .expect("rx bytes");
            bytes.extend(part);
            left -= n;
        }
        Some(UsedRx::Written(bytes))
    }

    /// Posts one rx chain of up to 8 contiguous descriptors, each as long as
    /// the input says modulo `seg_len_modulus`; some are made unusable (a
    /// device-readable or out-of-memory descriptor).
    pub fn post_rx(&mut self, input: &mut Input<'_>, seg_len_modulus: u64) {
        let nsegs = 1 + usize::from(input.u8()) % MAX_SEGS;
        let variant = input.u8();
        let Some(indices) = self.rx_free.take(nsegs) else {
            return;
        };
        let head = indices[0];
        let base = self.layout.rx_bufs + u64::from(head) * self.layout.rx_stride;
        let mut at = base;
        let mut descs = Vec::with_capacity(nsegs);
        for _ in 0..nsegs {
            let len =
                (u64::from(input.u16()) % seg_len_modulus).min(base + self.layout.rx_stride - at);
            descs.push((at, len as u32, WRITE));
            at += len;
        }
        let mut usable = true;
        // Spoil one descriptor (with a length, or the device may skip it).
        let spoil = usize::from(variant >> 4) % nsegs;
        match variant % 4 {
            1 => {
                descs[spoil] = (descs[spoil].0, descs[spoil].1.max(1), 0);
                usable = false;
            }
            2 => {
                descs[spoil] = (self.layout.mem_size - 16, 64, WRITE);
                usable = false;
            }
            _ => {}
        }
        let bufs: Vec<(u64, u64)> = descs
            .iter()
            .filter(|d| d.1 > 0)
            .map(|d| (d.0, u64::from(d.1)))
            .collect();
        Self::write_chain(&self.rx, &self.mem, &indices, &descs, false);
        self.rx_posted.insert(
            head,
            RxChain {
                descs: indices,
                bufs: usable.then_some(bufs),
            },
        );
        self.rx.push(&self.mem, head);
        self.kick(RX_QUEUE);
    }

    /// Posts `n` rx buffers as Linux does: one `len`-byte descriptor each.
    pub fn post_rx_standard(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            let Some(indices) = self.rx_free.take(1) else {
                break;
            };
            let head = indices[0];
            let base = self.layout.rx_bufs + u64::from(head) * self.layout.rx_stride;
            self.rx.set_desc(&self.mem, head, base, len, WRITE, 0);
            self.rx_posted.insert(
                head,
                RxChain {
                    descs: indices,
                    bufs: Some(vec![(base, len.into())]),
                },
            );
            self.rx.push(&self.mem, head);
        }
        self.kick(RX_QUEUE);
    }

    /// Posts `bytes` as one tx chain cut at input-chosen points; `shape`
    /// adds hostile descriptors. Waits for the device (see [`settle_tx`],
    /// which gets `also`) if too few descriptors are free.
    ///
    /// [`settle_tx`]: GuestQueues::settle_tx
    pub fn post_tx(&mut self, bytes: &[u8], shape: u8, input: &mut Input<'_>, also: &dyn Fn()) {
        let ncuts = usize::from(shape & 7);
        let mut cuts: Vec<usize> = (0..ncuts)
            .map(|_| usize::from(input.u16()) % (bytes.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.push(bytes.len());
        let mut descs = Vec::with_capacity(cuts.len() + 1);
        let mut extra = None;
        let (tx_bufs, mem_size) = (self.layout.tx_bufs, self.layout.mem_size);
        match (shape >> 3) % 8 {
            // A zero-length descriptor first.
            1 => descs.push((tx_bufs, 0, 0)),
            // A device-writable descriptor in the chain.
            2 => extra = Some((tx_bufs, 16, WRITE)),
            // A descriptor outside guest memory.
            3 => extra = Some((mem_size + 0x1000, 64, 0)),
            // One straddling its end.
            4 => extra = Some((mem_size - 8, 64, 0)),
            // A huge length.
            5 => extra = Some((tx_bufs, u32::MAX, 0)),
            _ => {}
        }
        let nmax = cuts.len() + 2;
        self.reap_tx();
        if self.tx_free.0.len() < nmax {
            self.settle_tx(also);
        }
        let Some(indices) = self.tx_free.take(nmax) else {
            return;
        };
        let head = indices[0];
        let buf = tx_bufs + u64::from(head) * self.layout.tx_stride;
        self.mem
            .write_slice(bytes, GuestAddress(buf))
            .expect("tx bytes");
        if let Some(d) = descs.first_mut() {
            d.0 = buf;
        }
        let mut start = 0;
        for &cut in &cuts {
            descs.push((buf + start as u64, (cut - start) as u32, 0));
            start = cut;
        }
        if let Some(extra) = extra {
            let at = usize::from(shape >> 6) % descs.len();
            descs.insert(at, extra);
        }
        // 6: the chain loops back to its head.
        let loop_back = (shape >> 3) % 8 == 6;
        let (used, spare) = indices.split_at(descs.len());
        self.tx_free.0.extend(spare);
        Self::write_chain(&self.tx, &self.mem, used, &descs, loop_back);
        self.tx_posted.insert(head, used.to_vec());
        self.tx.push(&self.mem, head);
        self.kick(TX_QUEUE);
    }
}

// The next entry of `ring`'s used ring past `seen`, if there is one: the
// chain the guest had out at its id (taken from `posted`) and its used length.
fn pop_used<T>(
    ring: &SplitRing,
    mem: &GuestMemory,
    seen: &mut u16,
    posted: &mut HashMap<u16, T>,
    queue: &str,
) -> Option<(T, u32)> {
    if *seen == ring.used_idx(mem) {
        return None;
    }
    let (id, len) = ring.used_elem(mem, *seen);
    *seen = seen.wrapping_add(1);
    let head = u16::try_from(id).unwrap_or_else(|_| panic!("{queue} used id {id} out of range"));
    let chain = posted
        .remove(&head)
        .unwrap_or_else(|| panic!("{queue} used entry {head} for a chain we do not have out"));
    Some((chain, len))
}
