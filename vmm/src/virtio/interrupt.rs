//! The interrupt line a virtio device shares with its transport.
//!
//! virtio-mmio has one interrupt per device plus an InterruptStatus word telling the
//! driver why it fired. The VM supplies the [`InterruptLine`] (an IOAPIC pin pulsed
//! with KVM_IRQ_LINE); the status word lives here so that both the device worker
//! threads (which set bits) and the transport (which lets the guest read and ack
//! them) reach it.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tracing::error;
use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus bit: the device used buffers in at least one queue.
pub const INT_USED_RING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the device configuration (or status) changed.
pub const INT_CONFIG_CHANGE: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// Something that raises the device's interrupt in the guest.
pub trait InterruptLine: Send + Sync {
    fn trigger(&self) -> io::Result<()>;
}

/// An eventfd line: what KVM irqfds and the unit tests use.
impl InterruptLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// Interrupt state of one virtio device.
pub struct VirtioInterrupt {
    line: Box<dyn InterruptLine>,
    status: AtomicU32,
    // Set by a device that met guest input it cannot recover from; the transport
    // reports it as DEVICE_NEEDS_RESET until the driver resets the device.
    needs_reset: AtomicBool,
}

impl VirtioInterrupt {
    /// Interrupt state raising `line`.
    pub fn new(line: impl InterruptLine + 'static) -> Self {
        Self {
            line: Box::new(line),
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
        }
    }

    /// Tells the driver that buffers were added to a used ring.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(INT_USED_RING)
    }

    /// Tells the driver that the config space or the device status changed.
    pub fn signal_config_change(&self) {
        if let Err(e) = self.raise(INT_CONFIG_CHANGE) {
            error!(error = %e, "virtio: cannot signal config change interrupt");
        }
    }

    /// Marks the device as needing reset (the driver sees DEVICE_NEEDS_RESET in
    /// Status) and tells the driver through a config-change interrupt. Returns
    /// whether this call marked it (false: it was marked already).
    ///
    /// Device workers read the mark as "the device is broken": they leave
    /// their queues alone until the driver resets the device.
    pub fn signal_needs_reset(&self) -> bool {
        let first = !self.needs_reset.swap(true, Ordering::SeqCst);
        self.signal_config_change();
        first
    }

    /// Whether [`signal_needs_reset`](Self::signal_needs_reset) was called since the last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The InterruptStatus word.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the given InterruptStatus bits (the driver's InterruptACK write).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Forgets all pending interrupt state; called when the device is reset.
    /// Sets the bits the driver had not acknowledged when a VM was saved
    /// (the line itself is restored with the irqchip).
    pub fn restore_status(&self, bits: u32) {
        self.status
            .store(bits & (INT_USED_RING | INT_CONFIG_CHANGE), Ordering::SeqCst);
    }

    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    // Level-triggered semantics the usual way: set the bit first, then pulse the
    // line; the guest's handler reads InterruptStatus and acks what it handled.
    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.line.trigger()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bits_set_and_ack() -> io::Result<()> {
        let line = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?;
        let irq = VirtioInterrupt::new(line.try_clone()?);
        assert_eq!(irq.status(), 0);
        irq.signal_used_queue()?;
        irq.signal_config_change();
        assert_eq!(irq.status(), INT_USED_RING | INT_CONFIG_CHANGE);
        // Both signals reached the eventfd.
        assert_eq!(line.read()?, 2);
        irq.ack(INT_USED_RING);
        assert_eq!(irq.status(), INT_CONFIG_CHANGE);
        irq.signal_needs_reset();
        assert!(irq.needs_reset());
        irq.reset();
        assert_eq!(irq.status(), 0);
        assert!(!irq.needs_reset());
        Ok(())
    }
}
