//! A minimal guest-side virtio-mmio driver for unit tests and fuzz targets
//! (feature `fuzzing`, which makes this module public; not a stable API).
//!
//! It pokes the transport the way Linux's virtio_mmio.c does and lays out split
//! rings in guest memory by hand, so tests exercise exactly what a guest sees.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::VirtioInterrupt;
use super::mmio::MmioTransport;
use super::{GuestMemory, VirtioDevice};

/// Size of the test guest's RAM, mapped at guest physical 0.
pub const MEM_SIZE: u64 = 1 << 20;

/// How long a test waits for a worker thread before failing.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory")
}

/// The guest driver talking to one transport.
pub struct Driver {
    pub transport: MmioTransport,
    pub mem: GuestMemory,
    pub interrupt: Arc<VirtioInterrupt>,
    /// The eventfd behind `interrupt`: readable once an interrupt was raised.
    pub irq: EventFd,
}

impl Driver {
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        Self::with_memory(device, guest_memory())
    }

    /// A driver whose guest RAM is `mem` instead of [`guest_memory`].
    pub fn with_memory(mut device: Box<dyn VirtioDevice>, mem: GuestMemory) -> Self {
        // As the VM does before the guest runs; no seccomp filter in tests.
        device.threads().start(None).expect("device threads");
        let irq = EventFd::new(EFD_NONBLOCK).expect("irq eventfd");
        let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().expect("irq eventfd")));
        let transport =
            MmioTransport::new(device, mem.clone(), Arc::clone(&interrupt)).expect("transport");
        Self {
            transport,
            mem,
            interrupt,
            irq,
        }
    }

    pub fn read32(&mut self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset.into(), &mut data);
        u32::from_le_bytes(data)
    }

    pub fn write32(&mut self, offset: u32, value: u32) {
        self.transport.write(offset.into(), &value.to_le_bytes());
    }

    pub fn status(&mut self) -> u32 {
        self.read32(reg::VIRTIO_MMIO_STATUS)
    }

    /// Linux's add_status: read, OR in the bit, write back.
    pub fn add_status(&mut self, bit: u32) {
        let status = self.status();
        self.write32(reg::VIRTIO_MMIO_STATUS, status | bit);
    }

    pub fn device_features(&mut self) -> u64 {
        self.write32(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let high = self.read32(reg::VIRTIO_MMIO_DEVICE_FEATURES);
        self.write32(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = self.read32(reg::VIRTIO_MMIO_DEVICE_FEATURES);
        (u64::from(high) << 32) | u64::from(low)
    }

    pub fn write_driver_features(&mut self, features: u64) {
        self.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        self.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, ack `features`, FEATURES_OK; returns whether
    /// the device kept FEATURES_OK.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.write32(reg::VIRTIO_MMIO_STATUS, 0);
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.add_status(VIRTIO_CONFIG_S_DRIVER);
        self.write_driver_features(features);
        self.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
        self.status() & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    /// vm_setup_vq: select, check not ready, program size and addresses, enable.
    pub fn setup_queue(&mut self, index: u32, ring: &SplitRing) {
        self.write32(reg::VIRTIO_MMIO_QUEUE_SEL, index);
        assert_eq!(self.read32(reg::VIRTIO_MMIO_QUEUE_READY), 0);
        self.write32(reg::VIRTIO_MMIO_QUEUE_NUM, ring.size.into());
        for (low, addr) in [
            (reg::VIRTIO_MMIO_QUEUE_DESC_LOW, ring.desc),
            (reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, ring.avail),
            (reg::VIRTIO_MMIO_QUEUE_USED_LOW, ring.used),
        ] {
            self.write32(low, addr as u32);
            self.write32(low + 4, (addr >> 32) as u32);
        }
        self.write32(reg::VIRTIO_MMIO_QUEUE_READY, 1);
    }

    /// Sets DRIVER_OK and returns whether it stuck.
    pub fn driver_ok(&mut self) -> bool {
        self.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
        self.status() & VIRTIO_CONFIG_S_DRIVER_OK != 0
    }

    pub fn notify(&mut self, queue: u32) {
        self.write32(reg::VIRTIO_MMIO_QUEUE_NOTIFY, queue);
    }
}

/// One split virtqueue laid out contiguously in guest memory.
pub struct SplitRing {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    avail_idx: u16,
}

impl SplitRing {
    pub fn new(base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        Self {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
        }
    }

    /// The device's view of this ring: a ready queue of at most `max_size`
    /// entries, for activating a device directly (without a transport).
    pub fn queue(&self, max_size: u16) -> Queue {
        let mut queue = Queue::new(max_size).expect("queue");
        queue.set_size(self.size);
        let split = |addr: u64| (Some(addr as u32), Some((addr >> 32) as u32));
        let (low, high) = split(self.desc);
        queue.set_desc_table_address(low, high);
        let (low, high) = split(self.avail);
        queue.set_avail_ring_address(low, high);
        let (low, high) = split(self.used);
        queue.set_used_ring_address(low, high);
        queue.set_ready(true);
        queue
    }

    /// One past the last byte of the used ring.
    pub fn end(&self) -> u64 {
        self.used + 6 + 8 * u64::from(self.size)
    }

    pub fn set_desc(
        &self,
        mem: &GuestMemory,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc + 16 * u64::from(index);
        mem.write_obj(addr.to_le(), GuestAddress(at))
            .expect("desc addr");
        mem.write_obj(len.to_le(), GuestAddress(at + 8))
            .expect("desc len");
        mem.write_obj(flags.to_le(), GuestAddress(at + 12))
            .expect("desc flags");
        mem.write_obj(next.to_le(), GuestAddress(at + 14))
            .expect("desc next");
    }

    /// Offers the chain starting at `head` to the device.
    pub fn push(&mut self, mem: &GuestMemory, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(mem, self.avail_idx);
    }

    /// Writes avail->idx directly (including bogus values).
    pub fn set_avail_idx(&self, mem: &GuestMemory, idx: u16) {
        mem.write_obj(idx.to_le(), GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(self.used + 2)).expect("used idx"))
    }

    /// (id, len) of used ring entry `i`.
    pub fn used_elem(&self, mem: &GuestMemory, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).expect("used id");
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used len");
        (u32::from_le(id), u32::from_le(len))
    }

    /// Polls the used ring until its index reaches `idx`, up to [`TIMEOUT`].
    pub fn wait_used(&self, mem: &GuestMemory, idx: u16) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if self.used_idx(mem) == idx {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.used_idx(mem) == idx
    }
}
