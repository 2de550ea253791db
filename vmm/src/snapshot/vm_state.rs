//! The VM-wide state KVM keeps in the kernel: the two PICs and the IOAPIC
//! of the in-kernel irqchip, the PIT and kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::SnapshotError;

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    irqchips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
}

fn failed(step: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Vm { step, source }
}

impl VmState {
    /// Reads the state of a VM whose vCPUs are all paused.
    pub fn save(vm: &VmFd) -> Result<Self, SnapshotError> {
        let mut irqchips = Vec::with_capacity(CHIPS.len());
        for chip_id in CHIPS {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip)
                .map_err(failed("KVM_GET_IRQCHIP"))?;
            irqchips.push(chip);
        }
        let pit = vm.get_pit2().map_err(failed("KVM_GET_PIT2"))?;
        let clock = vm.get_clock().map_err(failed("KVM_GET_CLOCK"))?;
        Ok(Self {
            irqchips,
            pit,
            clock,
        })
    }

    /// Writes the state into a new VM (irqchip and PIT created) before its
    /// vCPUs run. kvmclock goes on from the value it had when saved: the
    /// guest's monotonic clock does not jump; its wall clock is set by the
    /// agent from the host's.
    pub fn restore(&self, vm: &VmFd) -> Result<(), SnapshotError> {
        for chip in &self.irqchips {
            vm.set_irqchip(chip).map_err(failed("KVM_SET_IRQCHIP"))?;
        }
        vm.set_pit2(&self.pit).map_err(failed("KVM_SET_PIT2"))?;
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            // Flags such as KVM_CLOCK_REALTIME would advance the clock by
            // the time since the snapshot, possibly days.
            flags: 0,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(failed("KVM_SET_CLOCK"))?;
        Ok(())
    }
}
