//! Transport tests: a fake device behind the transport, driven like Linux would.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::config::{read_config_bytes, write_config_bytes};
use crate::virtio::test_driver::{Driver, SplitRing, MEM_SIZE};
use crate::virtio::{ActivateError, VirtioDevice, VIRTIO_ID_VSOCK};

const FEATURE_A: u64 = 1 << 0;
const FEATURE_B: u64 = 1 << 5;
const OFFERED: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | FEATURE_A | FEATURE_B;

// What the fake device saw, shared with the test after the device is boxed.
#[derive(Default)]
struct Seen {
    acked: Vec<u64>,
    activations: Vec<(Vec<QueueState>, Vec<EventFd>)>,
    resets: usize,
    config: [u8; 8],
}

struct FakeDevice {
    seen: Arc<Mutex<Seen>>,
    sizes: Vec<u16>,
    fail_activate: bool,
    resettable: bool,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn avail_features(&self) -> u64 {
        OFFERED
    }
    fn threads(&mut self) -> crate::virtio::worker_thread::ParkedThreads {
        crate::virtio::worker_thread::ParkedThreads::new("fake", VIRTIO_ID_VSOCK, 0, None)
    }
    fn set_acked_features(&mut self, features: u64) {
        self.seen.lock().unwrap().acked.push(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.seen.lock().unwrap().config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        write_config_bytes(&mut self.seen.lock().unwrap().config, offset, data);
    }
    fn activate(
        &mut self,
        _mem: GuestMemory,
        _interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::QueueNotReady(0));
        }
        let states = queues.iter().map(Queue::state).collect();
        self.seen
            .lock()
            .unwrap()
            .activations
            .push((states, queue_events));
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.seen.lock().unwrap().resets += 1;
        self.resettable
    }
}

struct Fixture {
    driver: Driver,
    seen: Arc<Mutex<Seen>>,
}

fn fixture_with(sizes: &[u16], fail_activate: bool, resettable: bool) -> Fixture {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let device = FakeDevice {
        seen: Arc::clone(&seen),
        sizes: sizes.to_vec(),
        fail_activate,
        resettable,
    };
    Fixture {
        driver: Driver::new(Box::new(device)),
        seen,
    }
}

// Two queues, like vsock's rx/tx pair but small.
fn fixture() -> Fixture {
    fixture_with(&[16, 8], false, true)
}

fn rings() -> [SplitRing; 2] {
    [SplitRing::new(0x1000, 16), SplitRing::new(0x2000, 8)]
}

// Full happy-path bring-up; returns whether DRIVER_OK stuck.
fn bring_up(f: &mut Fixture, features: u64, rings: &[SplitRing]) -> bool {
    assert!(f.driver.negotiate(features));
    for (i, ring) in rings.iter().enumerate() {
        f.driver.setup_queue(i as u32, ring);
    }
    f.driver.driver_ok()
}

fn needs_reset(f: &mut Fixture) -> bool {
    f.driver.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
}

#[test]
fn identity_registers() {
    let mut f = fixture();
    let d = &mut f.driver;
    assert_eq!(d.read32(reg::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(d.read32(reg::VIRTIO_MMIO_VERSION), 2);
    assert_eq!(d.read32(reg::VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_VSOCK);
    assert_eq!(d.read32(reg::VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
    assert_eq!(d.read32(reg::VIRTIO_MMIO_STATUS), 0);
    assert_eq!(d.read32(reg::VIRTIO_MMIO_CONFIG_GENERATION), 0);
    assert_eq!(f.driver.transport.device_type(), VIRTIO_ID_VSOCK);
    assert!(!f.driver.transport.is_activated());
    assert_eq!(f.driver.transport.queue_events().len(), 2);
}

#[test]
fn queue_num_max_per_queue() {
    let mut f = fixture();
    let d = &mut f.driver;
    for (sel, max) in [(0, 16), (1, 8), (2, 0), (u32::MAX, 0)] {
        d.write32(reg::VIRTIO_MMIO_QUEUE_SEL, sel);
        assert_eq!(d.read32(reg::VIRTIO_MMIO_QUEUE_NUM_MAX), max);
        assert_eq!(d.read32(reg::VIRTIO_MMIO_QUEUE_READY), 0);
    }
}

#[test]
fn no_shared_memory_regions() {
    let mut f = fixture();
    f.driver.write32(reg::VIRTIO_MMIO_SHM_SEL, 0);
    assert_eq!(f.driver.read32(reg::VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
    assert_eq!(f.driver.read32(reg::VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
}

#[test]
fn feature_negotiation_accepts_offered_subset() {
    let mut f = fixture();
    assert_eq!(f.driver.device_features(), OFFERED);
    f.driver.write32(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
    assert_eq!(f.driver.read32(reg::VIRTIO_MMIO_DEVICE_FEATURES), 0);
    assert!(f.driver.negotiate(VIRTIO_F_VERSION_1 | FEATURE_B));
    assert_eq!(
        f.seen.lock().unwrap().acked,
        vec![VIRTIO_F_VERSION_1 | FEATURE_B]
    );
}

#[test]
fn feature_negotiation_refuses_unoffered_feature() {
    let mut f = fixture();
    assert!(!f.driver.negotiate(VIRTIO_F_VERSION_1 | (1 << 3)));
    assert!(f.seen.lock().unwrap().acked.is_empty());
    // The driver may not go on to DRIVER_OK either.
    assert!(!f.driver.driver_ok());
}

#[test]
fn feature_negotiation_refuses_missing_version_1() {
    let mut f = fixture();
    assert!(!f.driver.negotiate(FEATURE_A));
    assert!(f.seen.lock().unwrap().acked.is_empty());
}

#[test]
fn feature_negotiation_refuses_features_beyond_64_bits() {
    let mut f = fixture();
    let d = &mut f.driver;
    d.write32(reg::VIRTIO_MMIO_STATUS, 0);
    d.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
    d.add_status(VIRTIO_CONFIG_S_DRIVER);
    d.write_driver_features(VIRTIO_F_VERSION_1);
    d.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
    d.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES, 1);
    d.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
    assert_eq!(d.status() & VIRTIO_CONFIG_S_FEATURES_OK, 0);
}

#[test]
fn driver_features_frozen_after_features_ok() {
    let mut f = fixture();
    assert!(f.driver.negotiate(VIRTIO_F_VERSION_1));
    f.driver
        .write_driver_features(VIRTIO_F_VERSION_1 | FEATURE_A);
    let rings = rings();
    f.driver.setup_queue(0, &rings[0]);
    f.driver.setup_queue(1, &rings[1]);
    assert!(f.driver.driver_ok());
    // The device was told once, and about the features agreed at FEATURES_OK.
    assert_eq!(f.seen.lock().unwrap().acked, vec![VIRTIO_F_VERSION_1]);
}

#[test]
fn status_steps_out_of_order_are_refused() {
    let mut f = fixture();
    let d = &mut f.driver;
    // DRIVER without ACKNOWLEDGE.
    d.write32(reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(d.status(), 0);
    d.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
    // FEATURES_OK and DRIVER_OK without DRIVER.
    d.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
    d.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(d.status(), VIRTIO_CONFIG_S_ACKNOWLEDGE);
    d.add_status(VIRTIO_CONFIG_S_DRIVER);
    // DRIVER_OK without FEATURES_OK.
    d.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(
        d.status(),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    );
    // Clearing bits without a reset is ignored.
    d.write32(reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    assert_eq!(
        d.status(),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    );
    // Unknown bits are ignored.
    d.write32(reg::VIRTIO_MMIO_STATUS, 0x3 | 0x10);
    assert_eq!(
        d.status(),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    );
}

#[test]
fn several_steps_in_one_write() {
    let mut f = fixture();
    let d = &mut f.driver;
    d.write32(
        reg::VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    assert_eq!(
        d.status(),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    );
}

#[test]
fn failed_status_blocks_progress() {
    let mut f = fixture();
    let d = &mut f.driver;
    d.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
    d.add_status(VIRTIO_CONFIG_S_FAILED);
    d.add_status(VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(
        d.status(),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FAILED
    );
}

#[test]
fn valid_queues_activate_exactly_once() {
    let mut f = fixture();
    let rings = rings();
    assert!(bring_up(
        &mut f,
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
        &rings
    ));
    assert!(f.driver.transport.is_activated());
    {
        let seen = f.seen.lock().unwrap();
        assert_eq!(seen.activations.len(), 1);
        let (states, events) = &seen.activations[0];
        assert_eq!(events.len(), 2);
        for (state, ring) in states.iter().zip(&rings) {
            assert!(state.ready);
            assert!(state.event_idx_enabled);
            assert_eq!(state.size, ring.size);
            assert_eq!(state.desc_table, ring.desc);
            assert_eq!(state.avail_ring, ring.avail);
            assert_eq!(state.used_ring, ring.used);
        }
    }
    // Writing DRIVER_OK again (as add_status of anything would) changes nothing.
    f.driver.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(f.seen.lock().unwrap().activations.len(), 1);
    // Queue registers are frozen now.
    f.driver.write32(reg::VIRTIO_MMIO_QUEUE_SEL, 0);
    f.driver.write32(reg::VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(f.driver.read32(reg::VIRTIO_MMIO_QUEUE_READY), 1);
}

#[test]
fn disabled_queue_is_passed_not_ready() {
    let mut f = fixture();
    let rings = rings();
    assert!(bring_up(&mut f, VIRTIO_F_VERSION_1, &rings[..1]));
    let seen = f.seen.lock().unwrap();
    let (states, _) = &seen.activations[0];
    assert!(states[0].ready);
    assert!(!states[1].ready);
    assert!(!states[0].event_idx_enabled);
}

#[test]
fn queue_setup_before_features_ok_is_ignored() {
    let mut f = fixture();
    let d = &mut f.driver;
    d.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
    d.add_status(VIRTIO_CONFIG_S_DRIVER);
    d.write32(reg::VIRTIO_MMIO_QUEUE_SEL, 0);
    d.write32(reg::VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(d.read32(reg::VIRTIO_MMIO_QUEUE_READY), 0);
}

fn assert_refused_activation(f: &mut Fixture) {
    assert!(!f.driver.driver_ok());
    assert!(!f.driver.transport.is_activated());
    assert!(f.seen.lock().unwrap().activations.is_empty());
    assert!(needs_reset(f));
    assert_ne!(f.driver.interrupt.status() & INT_CONFIG_CHANGE, 0);
}

#[test]
fn invalid_queue_sizes_prevent_activation() {
    for size in [0u32, 3, 12, 32, 0x1_0010] {
        let mut f = fixture();
        let rings = rings();
        assert!(f.driver.negotiate(VIRTIO_F_VERSION_1));
        f.driver.setup_queue(1, &rings[1]);
        f.driver.write32(reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        f.driver.write32(reg::VIRTIO_MMIO_QUEUE_NUM, size);
        f.driver
            .write32(reg::VIRTIO_MMIO_QUEUE_DESC_LOW, rings[0].desc as u32);
        f.driver
            .write32(reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, rings[0].avail as u32);
        f.driver
            .write32(reg::VIRTIO_MMIO_QUEUE_USED_LOW, rings[0].used as u32);
        f.driver.write32(reg::VIRTIO_MMIO_QUEUE_READY, 1);
        assert_refused_activation(&mut f);
    }
}

#[test]
fn rings_outside_guest_memory_prevent_activation() {
    // Descriptor table wrapping around the end of the address space.
    let mut wrapping = SplitRing::new(0x1000, 16);
    wrapping.desc = u64::MAX - 0xf;
    let cases = [
        // Descriptor table entirely beyond RAM.
        SplitRing::new(MEM_SIZE + 0x1000, 16),
        // Used ring runs off the end of RAM.
        SplitRing::new(MEM_SIZE - 0x100, 16),
        // Above 4 GiB (exercises the High registers).
        SplitRing::new(0x1_0000_1000, 16),
        wrapping,
    ];
    for ring in cases {
        let mut f = fixture();
        assert!(f.driver.negotiate(VIRTIO_F_VERSION_1));
        f.driver.setup_queue(0, &ring);
        assert_refused_activation(&mut f);
    }
}

#[test]
fn misaligned_ring_prevents_activation() {
    let mut f = fixture();
    let mut ring = SplitRing::new(0x1000, 16);
    ring.desc += 8;
    assert!(f.driver.negotiate(VIRTIO_F_VERSION_1));
    f.driver.setup_queue(0, &ring);
    assert_refused_activation(&mut f);
}

#[test]
fn ring_ending_at_top_of_memory_activates() {
    let mut f = fixture();
    let probe = SplitRing::new(0, 16);
    let ring = SplitRing::new((MEM_SIZE - probe.end()) & !0xf, 16);
    assert!(ring.end() <= MEM_SIZE && ring.end() > MEM_SIZE - 16);
    assert!(bring_up(&mut f, VIRTIO_F_VERSION_1, &[ring]));
}

#[test]
fn activation_error_marks_needs_reset_until_reset() {
    let mut f = fixture_with(&[16, 8], true, true);
    let rings = rings();
    assert!(!bring_up(&mut f, VIRTIO_F_VERSION_1, &rings));
    assert!(needs_reset(&mut f));
    assert_ne!(f.driver.interrupt.status() & INT_CONFIG_CHANGE, 0);
    assert_eq!(f.driver.irq.read().unwrap(), 1);
    // Further progress is refused until the driver resets.
    f.driver.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(f.driver.status() & VIRTIO_CONFIG_S_DRIVER_OK, 0);
    f.driver.write32(reg::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(f.driver.status(), 0);
    assert_eq!(f.driver.interrupt.status(), 0);
}

#[test]
fn reset_returns_to_initial_state_and_allows_reactivation() {
    let mut f = fixture();
    let rings = rings();
    assert!(bring_up(&mut f, VIRTIO_F_VERSION_1, &rings));
    f.driver.write32(reg::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(f.driver.status(), 0);
    assert!(!f.driver.transport.is_activated());
    assert_eq!(f.seen.lock().unwrap().resets, 1);
    for sel in 0..2 {
        f.driver.write32(reg::VIRTIO_MMIO_QUEUE_SEL, sel);
        assert_eq!(f.driver.read32(reg::VIRTIO_MMIO_QUEUE_READY), 0);
    }
    assert!(bring_up(&mut f, VIRTIO_F_VERSION_1, &rings));
    assert_eq!(f.seen.lock().unwrap().activations.len(), 2);
}

#[test]
fn device_without_reset_support_stays_flagged() {
    let mut f = fixture_with(&[16, 8], false, false);
    let rings = rings();
    assert!(bring_up(&mut f, VIRTIO_F_VERSION_1, &rings));
    f.driver.write32(reg::VIRTIO_MMIO_STATUS, 0);
    assert!(needs_reset(&mut f));
    assert!(!f.driver.negotiate(VIRTIO_F_VERSION_1));
    assert_eq!(f.seen.lock().unwrap().activations.len(), 1);
}

#[test]
fn bad_width_or_alignment_is_ignored() {
    let mut f = fixture();
    let t = &mut f.driver.transport;
    for (offset, len) in [(0u64, 1usize), (0, 2), (0, 8), (1, 4), (2, 4), (0x70, 3)] {
        let mut data = vec![0xaa; len];
        t.read(offset, &mut data);
        assert!(data.iter().all(|&b| b == 0), "read {offset:#x}/{len}");
    }
    // A byte-wide Status write and a misaligned one must not change state.
    t.write(0x70, &[VIRTIO_CONFIG_S_ACKNOWLEDGE as u8]);
    t.write(0x71, &VIRTIO_CONFIG_S_ACKNOWLEDGE.to_le_bytes());
    t.write(0x70, &u64::from(VIRTIO_CONFIG_S_ACKNOWLEDGE).to_le_bytes());
    assert_eq!(f.driver.status(), 0);
}

#[test]
fn write_only_and_unknown_registers_read_zero() {
    let mut f = fixture();
    for offset in [
        reg::VIRTIO_MMIO_QUEUE_NOTIFY,
        reg::VIRTIO_MMIO_DRIVER_FEATURES,
        reg::VIRTIO_MMIO_QUEUE_PFN,
        0xf8,
    ] {
        assert_eq!(f.driver.read32(offset), 0);
    }
    // Writes to read-only and legacy registers change nothing.
    f.driver.write32(reg::VIRTIO_MMIO_MAGIC_VALUE, 0);
    f.driver.write32(reg::VIRTIO_MMIO_QUEUE_PFN, 1);
    assert_eq!(f.driver.read32(reg::VIRTIO_MMIO_MAGIC_VALUE), MAGIC_VALUE);
}

#[test]
fn interrupt_status_and_ack() {
    let mut f = fixture();
    f.driver.interrupt.signal_used_queue().unwrap();
    f.driver.interrupt.signal_config_change();
    assert_eq!(
        f.driver.read32(reg::VIRTIO_MMIO_INTERRUPT_STATUS),
        INT_USED_RING | INT_CONFIG_CHANGE
    );
    f.driver
        .write32(reg::VIRTIO_MMIO_INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(
        f.driver.read32(reg::VIRTIO_MMIO_INTERRUPT_STATUS),
        INT_CONFIG_CHANGE
    );
    f.driver.write32(reg::VIRTIO_MMIO_INTERRUPT_ACK, u32::MAX);
    assert_eq!(f.driver.read32(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    // InterruptStatus is read-only.
    f.driver.write32(reg::VIRTIO_MMIO_INTERRUPT_STATUS, 3);
    assert_eq!(f.driver.read32(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

#[test]
fn queue_notify_slow_path_signals_queue_event() {
    let mut f = fixture();
    f.driver.notify(1);
    f.driver.notify(1);
    f.driver.notify(7);
    f.driver.notify(u32::MAX);
    let events = f.driver.transport.queue_events();
    assert_eq!(events[1].read().unwrap(), 2);
    assert!(events[0].read().is_err(), "queue 0 was not notified");
}

#[test]
fn config_space_widths_and_bounds() {
    let mut f = fixture();
    let t = &mut f.driver.transport;
    t.write(0x100, &0x0807_0605_0403_0201u64.to_le_bytes());
    let mut b8 = [0u8; 8];
    t.read(0x100, &mut b8);
    assert_eq!(u64::from_le_bytes(b8), 0x0807_0605_0403_0201);
    let mut b1 = [0u8; 1];
    t.read(0x103, &mut b1);
    assert_eq!(b1, [4]);
    let mut b2 = [0u8; 2];
    t.read(0x106, &mut b2);
    assert_eq!(b2, [7, 8]);
    let mut b4 = [0u8; 4];
    t.read(0x104, &mut b4);
    assert_eq!(b4, [5, 6, 7, 8]);
    // Beyond the device's config: zeros.
    t.read(0x108, &mut b4);
    assert_eq!(b4, [0; 4]);
    // Odd widths and accesses past the window are ignored.
    let mut b3 = [0xffu8; 3];
    t.read(0x100, &mut b3);
    assert_eq!(b3, [0; 3]);
    t.write(0x100, &[9, 9, 9]);
    t.read(0xffe, &mut b4);
    assert_eq!(b4, [0; 4]);
    t.write(u64::MAX - 1, &[1, 2]);
    t.read(0x100, &mut b1);
    assert_eq!(b1, [1]);
}

#[test]
fn transport_rejects_bad_devices() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let device = FakeDevice {
        seen,
        sizes: vec![12],
        fail_activate: false,
        resettable: true,
    };
    let mem = crate::virtio::test_driver::guest_memory();
    let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    assert!(MmioTransport::new(Box::new(device), mem, irq).is_err());
}

#[test]
fn cmdline_entry_format() {
    assert_eq!(
        kernel_cmdline_entry(0xd000_0000, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
}

// Random register traffic, as a hostile guest might send: nothing may panic.
#[test]
fn random_accesses_never_panic() {
    let mut f = fixture();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..200_000 {
        let r = next();
        // Mostly real registers, sometimes anywhere.
        let offset = if r & 1 == 0 {
            ((r >> 8) % 0x110) & !3
        } else {
            (r >> 8) % 0x1100
        };
        let len = [1usize, 2, 4, 4, 4, 8][((r >> 40) % 6) as usize];
        let value = next();
        // Bias values towards small numbers so status/queue logic gets exercised.
        let value = if r & 2 == 0 { value % 0x110 } else { value };
        let bytes = value.to_le_bytes();
        if r & 4 == 0 {
            f.driver.transport.write(offset, &bytes[..len]);
        } else {
            let mut data = vec![0u8; len];
            f.driver.transport.read(offset, &mut data);
        }
    }
}

#[test]
fn transport_and_interrupt_are_thread_safe() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    // The VM keeps transports behind a lock shared by vCPU threads; workers
    // share the interrupt.
    send::<MmioTransport>();
    send_sync::<VirtioInterrupt>();
}
