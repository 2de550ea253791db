//! virtio-balloon driven end to end through the transport and real split rings.
//!
//! Guest RAM is two adjacent 4 MiB regions (separate anonymous mappings), so
//! that a range can straddle regions while staying inside guest memory.

use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_mmio as reg;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::interrupt::{INT_CONFIG_CHANGE, INT_USED_RING};
use crate::virtio::test_driver::{Driver, SplitRing, TIMEOUT};

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const PAGE: u64 = PAGE_SIZE;
const HUGE: u32 = 2 << 20;
const REGION: u64 = 4 << 20;
const MEM_END: u64 = 2 * REGION;
/// A 2 MiB-aligned range at the end of the first region, as Linux reports.
const FREE: u64 = 2 << 20;
const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING;
const CONFIG: u32 = reg::VIRTIO_MMIO_CONFIG;

struct Balloons {
    d: Driver,
    rings: [SplitRing; 3],
    reported: Arc<AtomicU64>,
}

impl Balloons {
    fn reporting(&self) -> &SplitRing {
        &self.rings[REPORTING_QUEUE]
    }

    // Posts the chain at `head` on queue `queue` and waits for it to be used.
    fn submit(&mut self, queue: usize, head: u16) {
        let ring = &mut self.rings[queue];
        ring.push(&self.d.mem, head);
        let idx = ring.used_idx(&self.d.mem);
        self.d.notify(queue as u32);
        assert!(
            self.rings[queue].wait_used(&self.d.mem, idx.wrapping_add(1)),
            "queue {queue}: chain {head} never completed"
        );
    }

    fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.rings[REPORTING_QUEUE].set_desc(&self.d.mem, index, addr, len, flags, next);
    }

    fn reported(&self) -> u64 {
        self.reported.load(Ordering::Relaxed)
    }
}

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .expect("guest memory")
}

fn active_balloon(features: u64) -> Balloons {
    active_balloon_in(memory(), features)
}

fn active_balloon_in(memory: GuestMemory, features: u64) -> Balloons {
    let balloon = Balloon::new();
    let reported = balloon.reported_bytes();
    let mut d = Driver::with_memory(Box::new(balloon), memory);
    assert!(d.negotiate(features));
    let rings = [0x1000, 0x2000, 0x3000].map(|base| SplitRing::new(base, 16));
    let queues = if features & VIRTIO_BALLOON_F_REPORTING != 0 {
        3
    } else {
        2
    };
    for (index, ring) in rings.iter().enumerate().take(queues) {
        d.setup_queue(index as u32, ring);
    }
    assert!(d.driver_ok());
    assert!(d.transport.is_activated());
    Balloons { d, rings, reported }
}

fn fill(d: &Driver, addr: u64, len: u64, byte: u8) {
    d.mem
        .write_slice(&vec![byte; len as usize], GuestAddress(addr))
        .expect("fill guest memory");
}

fn all(d: &Driver, addr: u64, len: u64, byte: u8) -> bool {
    let mut buf = vec![0; len as usize];
    d.mem
        .read_slice(&mut buf, GuestAddress(addr))
        .expect("read guest memory");
    buf.iter().all(|&b| b == byte)
}

// Waits until the interrupt status has `bit`, up to TIMEOUT.
fn wait_interrupt(driver: &Driver, bit: u32) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if driver.interrupt.status() & bit != 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

fn needs_reset(driver: &mut Driver) -> bool {
    driver.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
}

#[test]
fn offers_free_page_reporting_on_a_third_queue() {
    let mut d = Driver::new(Box::new(Balloon::new()));
    assert_eq!(d.read32(reg::VIRTIO_MMIO_DEVICE_ID), 5);
    assert_eq!(
        d.device_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | (1 << 5)
    );
    for (queue, max) in [(0, 256), (1, 256), (2, 256), (3, 0)] {
        d.write32(reg::VIRTIO_MMIO_QUEUE_SEL, queue);
        assert_eq!(
            d.read32(reg::VIRTIO_MMIO_QUEUE_NUM_MAX),
            max,
            "queue {queue}"
        );
    }
}

#[test]
fn config_space_holds_only_actual() {
    let mut d = Driver::new(Box::new(Balloon::new()));
    for offset in [0, 4, 8, 12, 16] {
        assert_eq!(d.read32(CONFIG + offset), 0, "offset {offset}");
    }
    d.write32(CONFIG + 4, 0x1234_5678);
    assert_eq!(d.read32(CONFIG + 4), 0x1234_5678);
    // A byte write inside `actual`, and a byte read of it.
    d.transport.write(u64::from(CONFIG + 5), &[0xab]);
    let mut byte = [0u8];
    d.transport.read(u64::from(CONFIG + 5), &mut byte);
    assert_eq!(byte, [0xab]);
    assert_eq!(d.read32(CONFIG + 4), 0x1234_ab78);
    // num_pages, the hint command id, poison_val and the space past the end
    // are not the driver's to write.
    for offset in [0, 8, 12, 16, 0x100] {
        d.write32(CONFIG + offset, 0xffff_ffff);
    }
    // Straddling `actual` and its neighbours.
    d.transport
        .write(u64::from(CONFIG), &u64::MAX.to_le_bytes());
    d.transport
        .write(u64::from(CONFIG + 6), &0xffff_ffffu32.to_le_bytes());
    for (offset, value) in [(0, 0), (4, 0x1234_ab78), (8, 0), (12, 0), (16, 0)] {
        assert_eq!(d.read32(CONFIG + offset), value, "offset {offset}");
    }
    // A read straddling the end yields zeros past it.
    let mut data = [0xffu8; 8];
    d.transport.read(u64::from(CONFIG + 12), &mut data);
    assert_eq!(data, [0; 8]);
}

#[test]
fn reported_range_reads_back_as_zeros() {
    let mut b = active_balloon(FEATURES | VIRTIO_RING_F_EVENT_IDX);
    fill(&b.d, FREE - PAGE, u64::from(HUGE) + 2 * PAGE, 0xa5);
    b.set_desc(0, FREE, HUGE, WRITE, 0);
    b.submit(REPORTING_QUEUE, 0);
    assert_eq!(b.reporting().used_elem(&b.d.mem, 0), (0, 0));
    assert!(
        all(&b.d, FREE, u64::from(HUGE), 0),
        "pages were not dropped"
    );
    // The pages on either side are untouched.
    assert!(all(&b.d, FREE - PAGE, PAGE, 0xa5));
    assert!(all(&b.d, FREE + u64::from(HUGE), PAGE, 0xa5));
    assert_eq!(b.reported(), u64::from(HUGE));
    assert!(wait_interrupt(&b.d, INT_USED_RING));
    assert!(!needs_reset(&mut b.d));
    // The memory is usable again.
    fill(&b.d, FREE, PAGE, 0x5a);
    assert!(all(&b.d, FREE, PAGE, 0x5a));
}

#[test]
fn reports_give_small_pages_where_the_guest_uses_part_of_a_chunk() {
    let memory = crate::memory::create_guest_memory(2 * REGION).expect("guest memory");
    let mut b = active_balloon_in(memory, FEATURES);
    let start = b.d.mem.iter().next().expect("a region").as_ptr() as usize;
    let chunk = |index: u64| start + (index * u64::from(HUGE)) as usize;
    let small = |at| crate::memory::tests::vm_flags(at).contains(&"nh".to_string());
    assert!(!small(chunk(0)));
    // The first report: chunk 0 holds the rings (touched), chunk 1 is
    // reported in part; chunk 2 was never touched and chunk 3 is reported
    // whole, so both keep huge pages.
    b.set_desc(0, FREE, PAGE as u32, WRITE, NEXT);
    b.set_desc(1, 3 * u64::from(HUGE), HUGE, WRITE, 0);
    b.submit(REPORTING_QUEUE, 0);
    assert_eq!(b.reporting().used_elem(&b.d.mem, 0), (0, 0));
    assert!(small(chunk(0)));
    assert!(small(chunk(1)));
    assert!(!small(chunk(2)));
    assert!(!small(chunk(3)));
}

#[test]
fn a_report_drops_every_range_of_its_chain() {
    let mut b = active_balloon(FEATURES);
    fill(&b.d, FREE, 3 * PAGE, 0xa5);
    fill(&b.d, REGION, 4 * PAGE, 0xa5);
    // One page, a gap of one, one page in the first region; two pages at the
    // start of the second.
    b.set_desc(0, FREE, PAGE as u32, WRITE | NEXT, 1);
    b.set_desc(1, FREE + 2 * PAGE, PAGE as u32, WRITE | NEXT, 2);
    b.set_desc(2, REGION, 2 * PAGE as u32, WRITE, 0);
    b.submit(REPORTING_QUEUE, 0);
    assert_eq!(b.reporting().used_elem(&b.d.mem, 0), (0, 0));
    assert!(all(&b.d, FREE, PAGE, 0));
    assert!(all(&b.d, FREE + PAGE, PAGE, 0xa5));
    assert!(all(&b.d, FREE + 2 * PAGE, PAGE, 0));
    assert!(all(&b.d, REGION, 2 * PAGE, 0));
    assert!(all(&b.d, REGION + 2 * PAGE, 2 * PAGE, 0xa5));
    assert_eq!(b.reported(), 4 * PAGE);
}

#[test]
fn malformed_reports_drop_nothing() {
    let mut b = active_balloon(FEATURES);
    // Everything a malformed report names, or lies next to.
    let guarded = [
        (FREE, u64::from(HUGE)),
        (REGION, 2 * PAGE),
        (MEM_END - 2 * PAGE, 2 * PAGE),
        (0, PAGE),
    ];
    for (addr, len) in guarded {
        fill(&b.d, addr, len, 0xa5);
    }
    let page = PAGE as u32;
    let heads: [(u16, &str); 12] = [
        (0, "device-readable"),
        (1, "unaligned address"),
        (2, "unaligned length"),
        (3, "empty"),
        (4, "past the end of memory"),
        (5, "straddling the end of memory"),
        (6, "straddling two regions"),
        (7, "wrapping around"),
        (8, "valid, then device-readable"),
        (10, "valid, then outside memory"),
        (12, "a loop of valid ranges"),
        (14, "valid, then a descriptor outside the table"),
    ];
    b.set_desc(0, FREE, HUGE, 0, 0);
    b.set_desc(1, FREE + 512, page, WRITE, 0);
    b.set_desc(2, FREE, page + 1, WRITE, 0);
    b.set_desc(3, FREE, 0, WRITE, 0);
    b.set_desc(4, MEM_END, page, WRITE, 0);
    b.set_desc(5, MEM_END - PAGE, 2 * page, WRITE, 0);
    b.set_desc(6, REGION - PAGE, 2 * page, WRITE, 0);
    b.set_desc(7, 0u64.wrapping_sub(PAGE), 2 * page, WRITE, 0);
    b.set_desc(8, FREE, page, WRITE | NEXT, 9);
    b.set_desc(9, FREE + PAGE, page, 0, 0);
    b.set_desc(10, FREE, page, WRITE | NEXT, 11);
    b.set_desc(11, MEM_END + PAGE, page, WRITE, 0);
    b.set_desc(12, FREE, page, WRITE | NEXT, 13);
    b.set_desc(13, REGION, page, WRITE | NEXT, 12);
    b.set_desc(14, FREE, page, WRITE | NEXT, 100);
    for (head, _) in heads {
        b.submit(REPORTING_QUEUE, head);
    }
    for (i, (head, what)) in heads.into_iter().enumerate() {
        let used = b.reporting().used_elem(&b.d.mem, i as u16);
        assert_eq!(used, (u32::from(head), 0), "{what}");
    }
    for (addr, len) in guarded {
        assert!(all(&b.d, addr, len, 0xa5), "{addr:#x}+{len:#x} was dropped");
    }
    assert_eq!(b.reported(), 0);
    assert!(!needs_reset(&mut b.d));

    // The device is still healthy.
    b.set_desc(15, FREE, HUGE, WRITE, 0);
    b.submit(REPORTING_QUEUE, 15);
    assert_eq!(b.reporting().used_elem(&b.d.mem, 12), (15, 0));
    assert!(all(&b.d, FREE, u64::from(HUGE), 0));
    assert_eq!(b.reported(), u64::from(HUGE));
}

#[test]
fn inflate_and_deflate_buffers_complete_untouched() {
    let mut b = active_balloon(FEATURES);
    let pfns = FREE;
    fill(&b.d, pfns, PAGE, 0xa5);
    for queue in [INFLATE_QUEUE, DEFLATE_QUEUE] {
        // A page frame number list, as Linux sends (device-readable).
        b.rings[queue].set_desc(&b.d.mem, 3, pfns, 16, 0, 0);
        b.submit(queue, 3);
        assert_eq!(b.rings[queue].used_elem(&b.d.mem, 0), (3, 0));
    }
    assert!(all(&b.d, pfns, PAGE, 0xa5));
    assert_eq!(b.reported(), 0);
    assert!(!needs_reset(&mut b.d));
}

#[test]
fn without_the_feature_there_is_no_reporting_queue() {
    let mut b = active_balloon(VIRTIO_F_VERSION_1);
    b.rings[INFLATE_QUEUE].set_desc(&b.d.mem, 0, FREE, 16, 0, 0);
    b.submit(INFLATE_QUEUE, 0);
    assert!(!needs_reset(&mut b.d));
}

#[test]
fn reporting_without_its_queue_cannot_start() {
    let mut d = Driver::with_memory(Box::new(Balloon::new()), memory());
    assert!(d.negotiate(FEATURES));
    d.setup_queue(0, &SplitRing::new(0x1000, 16));
    d.setup_queue(1, &SplitRing::new(0x2000, 16));
    assert!(!d.driver_ok());
    assert!(needs_reset(&mut d));
}

#[test]
fn corrupt_avail_index_needs_reset() {
    let mut b = active_balloon(FEATURES);
    // More entries than the queue has: the driver is lying.
    let size = b.reporting().size;
    b.reporting().set_avail_idx(&b.d.mem, size + 1);
    b.d.notify(REPORTING_QUEUE as u32);
    assert!(wait_interrupt(&b.d, INT_CONFIG_CHANGE));
    assert!(needs_reset(&mut b.d));
    assert_eq!(b.reporting().used_idx(&b.d.mem), 0);
    // Reset clears the condition.
    b.d.write32(reg::VIRTIO_MMIO_STATUS, 0);
    assert!(!needs_reset(&mut b.d));
}

#[test]
fn reset_clears_actual_and_allows_reactivation() {
    let mut b = active_balloon(FEATURES);
    b.d.write32(CONFIG + 4, 42);
    b.d.write32(reg::VIRTIO_MMIO_STATUS, 0);
    assert!(!b.d.transport.is_activated());
    assert_eq!(b.d.read32(CONFIG + 4), 0);

    // Fresh rings elsewhere, as after a driver reload.
    assert!(b.d.negotiate(FEATURES));
    b.rings = [0x4000, 0x5000, 0x6000].map(|base| SplitRing::new(base, 16));
    for (index, ring) in b.rings.iter().enumerate() {
        b.d.setup_queue(index as u32, ring);
    }
    assert!(b.d.driver_ok());
    fill(&b.d, FREE, PAGE, 0xa5);
    b.set_desc(0, FREE, PAGE as u32, WRITE, 0);
    b.submit(REPORTING_QUEUE, 0);
    assert!(all(&b.d, FREE, PAGE, 0));
    assert_eq!(b.reported(), PAGE);
}

#[test]
fn activate_rejects_wrong_queue_count() {
    let mut balloon = Balloon::new();
    let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let result = balloon.activate(memory(), irq, Vec::new(), Vec::new());
    assert!(matches!(result, Err(ActivateError::QueueCount { .. })));
}
