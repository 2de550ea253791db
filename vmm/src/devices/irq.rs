//! Raising a legacy (IOAPIC) interrupt from a device.
//!
//! We inject with KVM_IRQ_LINE from the thread that raises the interrupt
//! rather than through an irqfd: for IOAPIC pins KVM delivers irqfd writes
//! from a kernel workqueue, which on a host with one spare CPU can cost a
//! scheduler tick per interrupt (a serial console then prints ~250 chars/s).

use std::sync::Arc;

use kvm_ioctls::VmFd;

/// An edge-triggered interrupt line of the VM.
#[derive(Clone)]
pub struct IrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl IrqLine {
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> Self {
        Self { vm, gsi }
    }

    /// Pulses the line: the IOAPIC latches the rising edge.
    pub fn trigger(&self) -> std::io::Result<()> {
        self.vm.set_irq_line(self.gsi, true)?;
        self.vm.set_irq_line(self.gsi, false)?;
        Ok(())
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        IrqLine::trigger(self)
    }
}

impl crate::virtio::interrupt::InterruptLine for IrqLine {
    fn trigger(&self) -> std::io::Result<()> {
        IrqLine::trigger(self)
    }
}
