//! The virtio-mmio transport, version 2 ("modern") only.
//!
//! Each device gets a 4 KiB MMIO window: 32-bit registers below 0x100, the
//! device's config space from 0x100. The VM dispatches trapped guest accesses in
//! that window to [`MmioTransport::read`] / [`MmioTransport::write`]. Queue
//! notifications normally bypass this code entirely through KVM ioeventfds on
//! QueueNotify; a write that still lands here takes the slow path and signals the
//! same eventfd.

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory as _};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::{VirtioInterrupt, INT_CONFIG_CHANGE, INT_USED_RING};
use super::warn_limit::{limited, WarnLimiter};
use super::{
    ActivateError, GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of QueueNotify in the window: the VM registers each queue event as an
/// ioeventfd at `base + QUEUE_NOTIFY_OFFSET`, 4 bytes, datamatch = queue index.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Little-endian "virt".
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The only transport version we speak.
pub const MMIO_VERSION: u32 = 2;
/// Our VendorID: "COCN".
pub const VENDOR_ID: u32 = 0x434f_434e;

const CONFIG_SPACE_OFFSET: u64 = reg::VIRTIO_MMIO_CONFIG as u64;

// Status bits the driver may set; DEVICE_NEEDS_RESET belongs to the device.
const DRIVER_STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FAILED;

// Sizes of the split-ring areas (virtio 1.x, 2.7): the avail and used rings
// always carry the event-index field, whether or not EVENT_IDX is negotiated.
const DESC_SIZE: usize = 16;
const AVAIL_RING_META: usize = 6;
const AVAIL_ELEM_SIZE: usize = 2;
const USED_RING_META: usize = 6;
const USED_ELEM_SIZE: usize = 8;

/// The kernel command-line entry that makes a Linux guest probe a device at
/// `base` with interrupt `irq` (needs CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
pub fn kernel_cmdline_entry(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

// One virtqueue as the driver is configuring it.
struct QueueSlot {
    queue: Queue,
    // The driver wrote a size or address the queue refused. Sticky until reset:
    // otherwise the queue would silently keep a stale value the driver does not
    // know about.
    bad_config: bool,
}

/// A virtio device behind its virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<QueueSlot>,
    queue_events: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    // The driver acked a bit in a feature word beyond 63, which no device offers.
    acked_unknown_features: bool,
    queue_sel: u32,
    activated: bool,
    // Guest-triggerable logs go through these so a guest cannot flood the log;
    // lifecycle events get their own budget so register noise cannot hide them.
    access_log: WarnLimiter,
    event_log: WarnLimiter,
}

// Why the device could not be started at DRIVER_OK.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("queue {0} has an invalid size or address, or lies outside guest memory")]
    BadQueue(usize),
    #[error("queue {0}: {1}")]
    Queue(usize, virtio_queue::Error),
    #[error("cannot clone queue events: {0}")]
    Events(#[source] io::Error),
    #[error("device was not reset since its last activation")]
    StillActive,
    #[error(transparent)]
    Activate(#[from] ActivateError),
}

impl MmioTransport {
    /// Puts `device` behind a new transport. Fails if the device declares an
    /// impossible queue size or is not a virtio 1.x device.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
    ) -> io::Result<Self> {
        if device.avail_features() & VIRTIO_F_VERSION_1 == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "virtio-mmio v2 needs a device offering VIRTIO_F_VERSION_1",
            ));
        }
        let queues = device
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(i, &max)| {
                Queue::new(max)
                    .map(|queue| QueueSlot {
                        queue,
                        bad_config: false,
                    })
                    .map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("queue {i}: max size {max}: {e}"),
                        )
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let queue_events = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_events,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            acked_unknown_features: false,
            queue_sel: 0,
            activated: false,
            access_log: WarnLimiter::default(),
            event_log: WarnLimiter::default(),
        })
    }

    /// The virtio device type of the device behind this transport.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// Whether the device is running (DRIVER_OK was accepted and not reset since).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// One eventfd per queue, to be registered as KVM ioeventfd on QueueNotify
    /// with datamatch = queue index.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The interrupt shared with the device.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Whatever we do not fill in reads as zero, never as stale buffer contents.
        data.fill(0);
        if offset >= CONFIG_SPACE_OFFSET {
            self.read_config(offset, data);
            return;
        }
        let Some(register) = self.register(offset, data.len(), "read") else {
            return;
        };
        let value = match register {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            reg::VIRTIO_MMIO_VERSION => MMIO_VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => {
                let features = self.device.avail_features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| q.max_size().into())
            }
            reg::VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            reg::VIRTIO_MMIO_STATUS => self.status(),
            // All ones means "no such shared memory region"; we have none.
            reg::VIRTIO_MMIO_SHM_LEN_LOW
            | reg::VIRTIO_MMIO_SHM_LEN_HIGH
            | reg::VIRTIO_MMIO_SHM_BASE_LOW
            | reg::VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            // Our config space never changes behind the driver's back.
            reg::VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => {
                self.warn(offset, "read of a write-only or unknown register");
                return;
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.write_config(offset, data);
            return;
        }
        let Some(register) = self.register(offset, data.len(), "write") else {
            return;
        };
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match register {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            reg::VIRTIO_MMIO_QUEUE_NUM
            | reg::VIRTIO_MMIO_QUEUE_READY
            | reg::VIRTIO_MMIO_QUEUE_DESC_LOW
            | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | reg::VIRTIO_MMIO_QUEUE_USED_LOW
            | reg::VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_register(register, value),
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self
                .interrupt
                .ack(value & (INT_USED_RING | INT_CONFIG_CHANGE)),
            reg::VIRTIO_MMIO_STATUS => self.write_status(value),
            // Selecting a shared memory region is harmless; every one reads as absent.
            reg::VIRTIO_MMIO_SHM_SEL => {}
            _ => self.warn(offset, "write to a read-only, legacy or unknown register"),
        }
    }

    // Checks that a register access is a 4-byte aligned 32-bit access and returns
    // the register offset in the type the bindings use.
    fn register(&mut self, offset: u64, len: usize, what: &str) -> Option<u32> {
        if len != 4 || !offset.is_multiple_of(4) {
            limited!(
                self.access_log,
                warn,
                device = self.device.device_type(),
                offset,
                len,
                "virtio-mmio: ignoring {what} with bad width or alignment"
            );
            return None;
        }
        u32::try_from(offset).ok()
    }

    fn warn(&mut self, offset: u64, msg: &str) {
        limited!(
            self.access_log,
            warn,
            device = self.device.device_type(),
            offset,
            "virtio-mmio: {msg}"
        );
    }

    fn selected_queue(&self) -> Option<&Queue> {
        let index = usize::try_from(self.queue_sel).ok()?;
        self.queues.get(index).map(|slot| &slot.queue)
    }

    fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn config_access_ok(&mut self, offset: u64, len: usize) -> bool {
        let in_window = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= MMIO_WINDOW_SIZE);
        if !matches!(len, 1 | 2 | 4 | 8) || !in_window {
            self.warn(offset, "ignoring config access with bad width or range");
            return false;
        }
        true
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        if self.config_access_ok(offset, data.len()) {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if self.config_access_ok(offset, data.len()) {
            self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are negotiated between DRIVER and FEATURES_OK; later writes
        // would change what the device already agreed to.
        if self.status & VIRTIO_CONFIG_S_DRIVER == 0
            || self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
        {
            self.warn(
                reg::VIRTIO_MMIO_DRIVER_FEATURES.into(),
                "ignoring DriverFeatures write outside feature negotiation",
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            _ => self.acked_unknown_features |= value != 0,
        }
    }

    fn write_queue_register(&mut self, register: u32, value: u32) {
        // Linux disables each queue again after resetting the device; that is a
        // no-op here, not worth a warning.
        if register == reg::VIRTIO_MMIO_QUEUE_READY
            && value == 0
            && !self.selected_queue().is_some_and(|q| q.ready())
        {
            return;
        }
        // Queues are set up after FEATURES_OK and frozen once the device runs
        // (we do not offer VIRTIO_F_RING_RESET).
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0
            || self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            || self.activated
        {
            self.warn(
                register.into(),
                "ignoring queue setup outside FEATURES_OK..DRIVER_OK",
            );
            return;
        }
        let Some(slot) = usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
        else {
            self.warn(
                register.into(),
                "ignoring queue setup of a queue that does not exist",
            );
            return;
        };
        if register == reg::VIRTIO_MMIO_QUEUE_READY {
            match value {
                0 | 1 => slot.queue.set_ready(value == 1),
                _ => self.warn(register.into(), "ignoring QueueReady value other than 0/1"),
            }
            return;
        }
        if slot.queue.ready() {
            self.warn(register.into(), "ignoring queue setup of an enabled queue");
            return;
        }
        let queue = &mut slot.queue;
        let result = match register {
            reg::VIRTIO_MMIO_QUEUE_NUM => u16::try_from(value)
                .map_err(|_| virtio_queue::Error::InvalidSize)
                .and_then(|size| queue.try_set_size(size)),
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                let addr = with_half(queue.desc_table(), value, register);
                queue.try_set_desc_table_address(GuestAddress(addr))
            }
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                let addr = with_half(queue.avail_ring(), value, register);
                queue.try_set_avail_ring_address(GuestAddress(addr))
            }
            reg::VIRTIO_MMIO_QUEUE_USED_LOW | reg::VIRTIO_MMIO_QUEUE_USED_HIGH => {
                let addr = with_half(queue.used_ring(), value, register);
                queue.try_set_used_ring_address(GuestAddress(addr))
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            slot.bad_config = true;
            let msg = format!("queue {}: refusing value {value:#x}: {e}", self.queue_sel);
            self.warn(register.into(), &msg);
        }
    }

    // Slow path of a queue notification: the VM did not (or could not) install an
    // ioeventfd, so signal the same eventfd it would have.
    fn notify(&mut self, value: u32) {
        // Without VIRTIO_F_NOTIFICATION_DATA the value is just the queue index.
        let event = usize::try_from(value)
            .ok()
            .and_then(|i| self.queue_events.get(i));
        match event {
            Some(event) => {
                if let Err(e) = event.write(1) {
                    limited!(
                        self.event_log,
                        error,
                        queue = value,
                        error = %e,
                        "virtio-mmio: cannot signal queue event"
                    );
                }
            }
            None => self.warn(
                QUEUE_NOTIFY_OFFSET,
                "ignoring notification of a queue that does not exist",
            ),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver echoes what it read, which may include DEVICE_NEEDS_RESET:
        // that bit is ours, so drop it; anything else unknown is a driver bug.
        let requested = value & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if requested & !DRIVER_STATUS_BITS != 0 {
            self.warn(
                reg::VIRTIO_MMIO_STATUS.into(),
                "ignoring unknown status bits",
            );
            return;
        }
        // Bits only go away through a reset (writing 0).
        if self.status & !requested != 0 {
            self.warn(
                reg::VIRTIO_MMIO_STATUS.into(),
                "ignoring status write that clears bits without reset",
            );
            return;
        }
        let new_bits = requested & !self.status;
        if new_bits & VIRTIO_CONFIG_S_FAILED != 0 {
            limited!(
                self.event_log,
                info,
                device = self.device.device_type(),
                "virtio-mmio: driver gave up on the device"
            );
            self.status |= VIRTIO_CONFIG_S_FAILED;
        }
        if self.status & VIRTIO_CONFIG_S_FAILED != 0 || self.interrupt.needs_reset() {
            if new_bits & !VIRTIO_CONFIG_S_FAILED != 0 {
                self.warn(
                    reg::VIRTIO_MMIO_STATUS.into(),
                    "ignoring status progress on a failed device; reset first",
                );
            }
            return;
        }
        // Walk the initialisation sequence in order; a step that is out of order
        // or refused leaves its bit (and every later one) clear, which is how the
        // driver learns about it when it reads Status back.
        for bit in [
            VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_DRIVER,
            VIRTIO_CONFIG_S_FEATURES_OK,
            VIRTIO_CONFIG_S_DRIVER_OK,
        ] {
            if new_bits & bit == 0 {
                continue;
            }
            let accepted = match bit {
                VIRTIO_CONFIG_S_ACKNOWLEDGE => true,
                VIRTIO_CONFIG_S_DRIVER => self.status & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0,
                VIRTIO_CONFIG_S_FEATURES_OK => {
                    self.status & VIRTIO_CONFIG_S_DRIVER != 0 && self.accept_features()
                }
                _ => self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 && self.activate(),
            };
            if !accepted {
                self.warn(reg::VIRTIO_MMIO_STATUS.into(), "refusing status transition");
                return;
            }
            self.status |= bit;
        }
    }

    fn accept_features(&mut self) -> bool {
        let offered = self.device.avail_features();
        let unoffered = self.acked_features & !offered;
        if unoffered != 0 || self.acked_unknown_features {
            limited!(
                self.event_log,
                warn,
                device = self.device.device_type(),
                acked = self.acked_features,
                offered,
                "virtio-mmio: driver acked features we did not offer"
            );
            return false;
        }
        if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            limited!(
                self.event_log,
                warn,
                device = self.device.device_type(),
                acked = self.acked_features,
                "virtio-mmio: driver did not ack VIRTIO_F_VERSION_1 (legacy drivers unsupported)"
            );
            return false;
        }
        self.device.set_acked_features(self.acked_features);
        true
    }

    // Validates the queues and starts the device. On failure the device is
    // marked as needing reset and DRIVER_OK stays clear.
    fn activate(&mut self) -> bool {
        match self.try_activate() {
            Ok(()) => {
                limited!(
                    self.event_log,
                    info,
                    device = self.device.device_type(),
                    "virtio-mmio: device activated"
                );
                self.activated = true;
                true
            }
            Err(e) => {
                limited!(
                    self.event_log,
                    warn,
                    device = self.device.device_type(),
                    error = %e,
                    "virtio-mmio: cannot activate device, it needs reset"
                );
                self.interrupt.signal_needs_reset();
                false
            }
        }
    }

    fn try_activate(&mut self) -> Result<(), SetupError> {
        // Only a device that could not be reset gets here.
        if self.activated {
            return Err(SetupError::StillActive);
        }
        let (queues, events) = self.activation_queues()?;
        let mem = self.mem.clone();
        let interrupt = Arc::clone(&self.interrupt);
        self.device.activate(mem, interrupt, queues, events)?;
        Ok(())
    }

    // Copies of the driver's queues for the device, with every enabled queue
    // checked to lie entirely inside guest memory.
    fn activation_queues(&self) -> Result<(Vec<Queue>, Vec<EventFd>), SetupError> {
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, slot) in self.queues.iter().enumerate() {
            if slot.queue.ready() && (slot.bad_config || !rings_in_memory(&slot.queue, &self.mem)) {
                return Err(SetupError::BadQueue(i));
            }
            let mut queue =
                Queue::try_from(slot.queue.state()).map_err(|e| SetupError::Queue(i, e))?;
            queue.set_event_idx(event_idx);
            queues.push(queue);
        }
        let events = self
            .queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<Vec<_>>>()
            .map_err(SetupError::Events)?;
        Ok((queues, events))
    }

    fn reset(&mut self) {
        if self.activated && !self.device.reset() {
            // The worker keeps running on the old queues, so the device can never
            // be handed new ones: it stays flagged until the VM goes away.
            limited!(
                self.event_log,
                error,
                device = self.device.device_type(),
                "virtio-mmio: device does not support reset"
            );
            self.status = 0;
            self.interrupt.signal_needs_reset();
            return;
        }
        self.activated = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.acked_unknown_features = false;
        self.queue_sel = 0;
        for slot in &mut self.queues {
            slot.queue.reset();
            slot.bad_config = false;
        }
        // Drop notifications meant for the old queues (EAGAIN when there are none).
        for event in &self.queue_events {
            let _ = event.read();
        }
        self.interrupt.reset();
    }
}

// Replaces the low or high 32 bits of a queue address, as selected by `register`.
fn with_half(old: u64, value: u32, register: u32) -> u64 {
    let high = matches!(
        register,
        reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | reg::VIRTIO_MMIO_QUEUE_USED_HIGH
    );
    if high {
        (old & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (old & !0xffff_ffff) | u64::from(value)
    }
}

// Whether the descriptor table and both rings lie entirely in guest memory.
// Stricter than Queue::is_valid in that a ring may not straddle a memory hole,
// and exact at the top of memory (is_valid wants one byte past the ring mapped).
fn rings_in_memory(queue: &Queue, mem: &GuestMemory) -> bool {
    let n = usize::from(queue.size());
    [
        (queue.desc_table(), DESC_SIZE * n),
        (queue.avail_ring(), AVAIL_RING_META + AVAIL_ELEM_SIZE * n),
        (queue.used_ring(), USED_RING_META + USED_ELEM_SIZE * n),
    ]
    .into_iter()
    .all(|(addr, len)| {
        addr.checked_add(len as u64).is_some() && mem.check_range(GuestAddress(addr), len)
    })
}

mod snapshot;

pub use snapshot::{RestoreError, TransportState};

#[cfg(test)]
mod tests;
