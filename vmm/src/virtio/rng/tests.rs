//! virtio-rng driven end to end through the transport and a real split ring.

use std::time::Instant;

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::interrupt::{INT_CONFIG_CHANGE, INT_USED_RING};
use crate::virtio::test_driver::{Driver, SplitRing, MEM_SIZE, TIMEOUT};

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const BUF: u64 = 0x10000;

fn active_rng(features: u64, ring_base: u64) -> (Driver, SplitRing) {
    let mut driver = Driver::new(Box::new(Rng::new()));
    assert_eq!(driver.device_features(), AVAIL_FEATURES);
    assert!(driver.negotiate(features));
    let ring = SplitRing::new(ring_base, 16);
    driver.setup_queue(0, &ring);
    assert!(driver.driver_ok());
    assert!(driver.transport.is_activated());
    (driver, ring)
}

fn read_buf(driver: &Driver, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    driver
        .mem
        .read_slice(&mut buf, GuestAddress(addr))
        .expect("read buffer");
    buf
}

// Waits until the interrupt status has `bit`, up to TIMEOUT.
fn wait_interrupt(driver: &Driver, bit: u32) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if driver.interrupt.status() & bit != 0 {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    false
}

fn needs_reset(driver: &mut Driver) -> bool {
    driver.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
}

#[test]
fn fills_a_writable_buffer() {
    let (mut d, mut ring) = active_rng(VIRTIO_F_VERSION_1, 0x1000);
    ring.set_desc(&d.mem, 0, BUF, 4096, WRITE, 0);
    ring.push(&d.mem, 0);
    d.notify(0);
    assert!(ring.wait_used(&d.mem, 1), "request never completed");
    assert_eq!(ring.used_elem(&d.mem, 0), (0, 4096));
    assert!(read_buf(&d, BUF, 4096).iter().any(|&b| b != 0));
    assert!(wait_interrupt(&d, INT_USED_RING));
    assert!(d.irq.read().expect("irq fired") >= 1);
    assert!(!needs_reset(&mut d));
}

#[test]
fn fills_a_chain_of_buffers() {
    let (mut d, mut ring) = active_rng(VIRTIO_F_VERSION_1, 0x1000);
    ring.set_desc(&d.mem, 3, BUF, 100, WRITE | NEXT, 5);
    ring.set_desc(&d.mem, 5, BUF + 0x1000, 200, WRITE, 0);
    ring.push(&d.mem, 3);
    d.notify(0);
    assert!(ring.wait_used(&d.mem, 1));
    assert_eq!(ring.used_elem(&d.mem, 0), (3, 300));
    assert!(read_buf(&d, BUF, 100).iter().any(|&b| b != 0));
    assert!(read_buf(&d, BUF + 0x1000, 200).iter().any(|&b| b != 0));
    // Nothing past the second buffer was touched.
    assert!(read_buf(&d, BUF + 0x1000 + 200, 64).iter().all(|&b| b == 0));
}

#[test]
fn caps_each_request() {
    let (mut d, mut ring) = active_rng(VIRTIO_F_VERSION_1, 0x1000);
    let huge = 0x80000;
    ring.set_desc(&d.mem, 0, BUF, huge, WRITE, 0);
    ring.push(&d.mem, 0);
    d.notify(0);
    assert!(ring.wait_used(&d.mem, 1));
    assert_eq!(ring.used_elem(&d.mem, 0), (0, MAX_REQUEST_BYTES as u32));
    let past = BUF + MAX_REQUEST_BYTES as u64;
    assert!(read_buf(&d, past, 4096).iter().all(|&b| b == 0));
}

#[test]
fn malformed_requests_complete_empty() {
    let (mut d, mut ring) = active_rng(VIRTIO_F_VERSION_1, 0x1000);
    // Device-readable only.
    ring.set_desc(&d.mem, 0, BUF, 64, 0, 0);
    // Entirely beyond guest memory.
    ring.set_desc(&d.mem, 1, MEM_SIZE + 0x1000, 64, WRITE, 0);
    // Straddling the end of guest memory.
    ring.set_desc(&d.mem, 2, MEM_SIZE - 16, 64, WRITE, 0);
    // Writable, then readable.
    ring.set_desc(&d.mem, 3, BUF + 0x100, 64, WRITE | NEXT, 4);
    ring.set_desc(&d.mem, 4, BUF + 0x200, 64, 0, 0);
    // Address so high it wraps.
    ring.set_desc(&d.mem, 5, u64::MAX - 8, 64, WRITE, 0);
    for head in 0..6 {
        ring.push(&d.mem, head);
    }
    d.notify(0);
    assert!(ring.wait_used(&d.mem, 6));
    for i in 0..6 {
        assert_eq!(ring.used_elem(&d.mem, i), (u32::from(i), 0), "request {i}");
    }
    assert!(read_buf(&d, BUF, 64).iter().all(|&b| b == 0));
    assert!(!needs_reset(&mut d));

    // The device is still healthy.
    ring.set_desc(&d.mem, 6, BUF, 32, WRITE, 0);
    ring.push(&d.mem, 6);
    d.notify(0);
    assert!(ring.wait_used(&d.mem, 7));
    assert_eq!(ring.used_elem(&d.mem, 6), (6, 32));
}

#[test]
fn descriptor_loop_terminates() {
    let (mut d, mut ring) = active_rng(VIRTIO_F_VERSION_1, 0x1000);
    // 0 -> 1 -> 0 -> ...: the chain length is bounded by the queue size.
    ring.set_desc(&d.mem, 0, BUF, 16, WRITE | NEXT, 1);
    ring.set_desc(&d.mem, 1, BUF + 16, 16, WRITE | NEXT, 0);
    ring.push(&d.mem, 0);
    d.notify(0);
    assert!(ring.wait_used(&d.mem, 1));
    let (id, len) = ring.used_elem(&d.mem, 0);
    assert_eq!(id, 0);
    assert!(len <= 16 * u32::from(ring.size));
}

#[test]
fn corrupt_avail_index_needs_reset() {
    let (mut d, ring) = active_rng(VIRTIO_F_VERSION_1, 0x1000);
    // More entries than the queue has: the driver is lying.
    ring.set_avail_idx(&d.mem, ring.size + 1);
    d.notify(0);
    assert!(wait_interrupt(&d, INT_CONFIG_CHANGE));
    assert!(needs_reset(&mut d));
    assert_eq!(ring.used_idx(&d.mem), 0);
    // Reset clears the condition.
    d.write32(virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS, 0);
    assert!(!needs_reset(&mut d));
}

#[test]
fn out_of_range_head_needs_reset() {
    let (mut d, mut ring) = active_rng(VIRTIO_F_VERSION_1, 0x1000);
    ring.push(&d.mem, 200);
    d.notify(0);
    assert!(wait_interrupt(&d, INT_CONFIG_CHANGE));
    assert!(needs_reset(&mut d));
}

#[test]
fn reset_stops_worker_and_allows_reactivation() {
    let (mut d, mut ring) = active_rng(VIRTIO_F_VERSION_1, 0x1000);
    ring.set_desc(&d.mem, 0, BUF, 8, WRITE, 0);
    ring.push(&d.mem, 0);
    d.notify(0);
    assert!(ring.wait_used(&d.mem, 1));

    d.write32(virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS, 0);
    assert!(!d.transport.is_activated());

    // A fresh ring elsewhere, as after a driver reload.
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    let mut ring = SplitRing::new(0x4000, 16);
    d.setup_queue(0, &ring);
    assert!(d.driver_ok());
    ring.set_desc(&d.mem, 0, BUF + 0x1000, 8, WRITE, 0);
    ring.push(&d.mem, 0);
    d.notify(0);
    assert!(ring.wait_used(&d.mem, 1));
    assert_eq!(ring.used_elem(&d.mem, 0), (0, 8));
}

#[test]
fn event_idx_publishes_avail_event_and_interrupts() {
    let (mut d, mut ring) = active_rng(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX, 0x1000);
    // used_event = 0: interrupt me after the first completion.
    let used_event = GuestAddress(ring.avail + 4 + 2 * u64::from(ring.size));
    d.mem.write_obj(0u16, used_event).unwrap();
    ring.set_desc(&d.mem, 0, BUF, 16, WRITE, 0);
    ring.push(&d.mem, 0);
    d.notify(0);
    assert!(ring.wait_used(&d.mem, 1));
    assert!(wait_interrupt(&d, INT_USED_RING));
    // avail_event tells the driver to kick us for the next entry.
    let avail_event = GuestAddress(ring.used + 4 + 8 * u64::from(ring.size));
    let deadline = Instant::now() + TIMEOUT;
    while u16::from_le(d.mem.read_obj(avail_event).unwrap()) != 1 {
        assert!(Instant::now() < deadline, "avail_event never published");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn activate_rejects_wrong_queue_count() {
    let mut rng = Rng::new();
    let mem = crate::virtio::test_driver::guest_memory();
    let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let result = rng.activate(mem, irq, Vec::new(), Vec::new());
    assert!(matches!(result, Err(ActivateError::QueueCount { .. })));
}

#[test]
fn config_space_is_empty() {
    let rng = Rng::new();
    let mut data = [0xffu8; 8];
    rng.read_config(0, &mut data);
    assert_eq!(data, [0; 8]);
}
