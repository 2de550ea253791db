//! A minimal guest-side virtio-mmio driver for unit tests.
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
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::VirtioInterrupt;
use super::mmio::MmioTransport;
use super::{GuestMemory, VirtioDevice};

/// Size of the test guest's RAM, mapped at guest physical 0.
pub(crate) const MEM_SIZE: u64 = 1 << 20;

/// How long a test waits for a worker thread before failing.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory")
}

/// The guest driver talking to one transport.
pub(crate) struct Driver {
    pub(crate) transport: MmioTransport,
    pub(crate) mem: GuestMemory,
    pub(crate) interrupt: Arc<VirtioInterrupt>,
    /// The eventfd behind `interrupt`: readable once an interrupt was raised.
    pub(crate) irq: EventFd,
}

impl Driver {
    pub(crate) fn new(device: Box<dyn VirtioDevice>) -> Self {
        Self::with_memory(device, guest_memory())
    }

    /// A driver whose guest RAM is `mem` instead of [`guest_memory`].
    pub(crate) fn with_memory(mut device: Box<dyn VirtioDevice>, mem: GuestMemory) -> Self {
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

    pub(crate) fn read32(&mut self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset.into(), &mut data);
        u32::from_le_bytes(data)
    }

    pub(crate) fn write32(&mut self, offset: u32, value: u32) {
        self.transport.write(offset.into(), &value.to_le_bytes());
    }

    pub(crate) fn status(&mut self) -> u32 {
        self.read32(reg::VIRTIO_MMIO_STATUS)
    }

    /// Linux's add_status: read, OR in the bit, write back.
    pub(crate) fn add_status(&mut self, bit: u32) {
        let status = self.status();
        self.write32(reg::VIRTIO_MMIO_STATUS, status | bit);
    }

    pub(crate) fn device_features(&mut self) -> u64 {
        self.write32(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let high = self.read32(reg::VIRTIO_MMIO_DEVICE_FEATURES);
        self.write32(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = self.read32(reg::VIRTIO_MMIO_DEVICE_FEATURES);
        (u64::from(high) << 32) | u64::from(low)
    }

    pub(crate) fn write_driver_features(&mut self, features: u64) {
        self.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        self.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, ack `features`, FEATURES_OK; returns whether
    /// the device kept FEATURES_OK.
    pub(crate) fn negotiate(&mut self, features: u64) -> bool {
        self.write32(reg::VIRTIO_MMIO_STATUS, 0);
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.add_status(VIRTIO_CONFIG_S_DRIVER);
        self.write_driver_features(features);
        self.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
        self.status() & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    /// vm_setup_vq: select, check not ready, program size and addresses, enable.
    pub(crate) fn setup_queue(&mut self, index: u32, ring: &SplitRing) {
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
    pub(crate) fn driver_ok(&mut self) -> bool {
        self.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
        self.status() & VIRTIO_CONFIG_S_DRIVER_OK != 0
    }

    pub(crate) fn notify(&mut self, queue: u32) {
        self.write32(reg::VIRTIO_MMIO_QUEUE_NOTIFY, queue);
    }
}

/// One split virtqueue laid out contiguously in guest memory.
pub(crate) struct SplitRing {
    pub(crate) size: u16,
    pub(crate) desc: u64,
    pub(crate) avail: u64,
    pub(crate) used: u64,
    avail_idx: u16,
}

impl SplitRing {
    pub(crate) fn new(base: u64, size: u16) -> Self {
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

    /// One past the last byte of the used ring.
    pub(crate) fn end(&self) -> u64 {
        self.used + 6 + 8 * u64::from(self.size)
    }

    pub(crate) fn set_desc(
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
    pub(crate) fn push(&mut self, mem: &GuestMemory, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(mem, self.avail_idx);
    }

    /// Writes avail->idx directly (including bogus values).
    pub(crate) fn set_avail_idx(&self, mem: &GuestMemory, idx: u16) {
        mem.write_obj(idx.to_le(), GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    pub(crate) fn used_idx(&self, mem: &GuestMemory) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(self.used + 2)).expect("used idx"))
    }

    /// (id, len) of used ring entry `i`.
    pub(crate) fn used_elem(&self, mem: &GuestMemory, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).expect("used id");
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used len");
        (u32::from_le(id), u32::from_le(len))
    }

    /// Polls the used ring until its index reaches `idx`, up to [`TIMEOUT`].
    pub(crate) fn wait_used(&self, mem: &GuestMemory, idx: u16) -> bool {
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
