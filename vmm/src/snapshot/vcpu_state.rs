//! One vCPU's architectural state, read from KVM when the VM is paused and
//! written back into a fresh vCPU when a VM starts from the snapshot.
//!
//! The order of the calls is KVM's, not ours to choose (QEMU and Firecracker
//! follow the same rules): reading the MP state first (it may deliver
//! pending LAPIC events), the events last; writing CPUID before the MSRs,
//! the LAPIC before the TSC deadline (KVM drops a deadline while the LAPIC
//! timer is not in TSC-deadline mode), the MP state and events last.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// The TSC deadline MSR, written after the LAPIC.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// What a vCPU is, beyond guest memory.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    mp_state: kvm_mp_state,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debug_regs: kvm_debugregs,
    lapic: kvm_lapic_state,
    msrs: Vec<kvm_msr_entry>,
    events: kvm_vcpu_events,
}

fn failed(vcpu: u8, step: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Vcpu { vcpu, step, source }
}

impl VcpuState {
    /// Reads the state of vCPU `id`, which must be out of KVM_RUN with any
    /// pending I/O completed; `msr_indices` are the MSRs KVM can save.
    pub fn save(id: u8, fd: &VcpuFd, msr_indices: &[u32]) -> Result<Self, SnapshotError> {
        let mp_state = fd.get_mp_state().map_err(failed(id, "KVM_GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(failed(id, "KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(failed(id, "KVM_GET_SREGS"))?;
        let xsave = fd.get_xsave().map_err(failed(id, "KVM_GET_XSAVE"))?;
        let xcrs = fd.get_xcrs().map_err(failed(id, "KVM_GET_XCRS"))?;
        let debug_regs = fd
            .get_debug_regs()
            .map_err(failed(id, "KVM_GET_DEBUGREGS"))?;
        let lapic = fd.get_lapic().map_err(failed(id, "KVM_GET_LAPIC"))?;
        let msrs = read_msrs(id, fd, msr_indices)?;
        let events = fd
            .get_vcpu_events()
            .map_err(failed(id, "KVM_GET_VCPU_EVENTS"))?;
        Ok(Self {
            id,
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            events,
        })
    }

    /// Writes the state into `fd`, a new vCPU whose CPUID is already set.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), SnapshotError> {
        let id = self.id;
        let (deadline, others): (Vec<_>, Vec<_>) = self
            .msrs
            .iter()
            .partition(|entry| entry.index == MSR_IA32_TSC_DEADLINE);
        write_msrs(id, fd, &others)?;
        fd.set_regs(&self.regs)
            .map_err(failed(id, "KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs)
            .map_err(failed(id, "KVM_SET_SREGS"))?;
        // SAFETY: the buffer is a whole kvm_xsave read by KVM_GET_XSAVE on
        // this host (the VMM's identity and CPUID were checked), so KVM reads
        // no more than the struct holds.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(failed(id, "KVM_SET_XSAVE"))?;
        fd.set_xcrs(&self.xcrs)
            .map_err(failed(id, "KVM_SET_XCRS"))?;
        fd.set_debug_regs(&self.debug_regs)
            .map_err(failed(id, "KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic)
            .map_err(failed(id, "KVM_SET_LAPIC"))?;
        write_msrs(id, fd, &deadline)?;
        fd.set_mp_state(self.mp_state)
            .map_err(failed(id, "KVM_SET_MP_STATE"))?;
        fd.set_vcpu_events(&self.events)
            .map_err(failed(id, "KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

// At most this many MSRs go in one KVM_GET_MSRS/KVM_SET_MSRS (the limit of
// kvm-bindings' `Msrs`).
const MSR_CHUNK: usize = kvm_bindings::KVM_MAX_MSR_ENTRIES;

// Reads every MSR of `indices` that the vCPU has. KVM_GET_MSRS stops at the
// first MSR it cannot read and says how many it read: that one is skipped
// (KVM lists some MSRs that a given vCPU model lacks) and reading goes on.
fn read_msrs(id: u8, fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let mut saved = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<_> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::MsrCount)?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(failed(id, "KVM_GET_MSRS"))?
            .min(chunk.len());
        saved.extend_from_slice(&msrs.as_slice()[..read]);
        // A short read skips the MSR that stopped it.
        let consumed = if read < chunk.len() { read + 1 } else { read };
        rest = &rest[consumed..];
    }
    Ok(saved)
}

fn write_msrs(id: u8, fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), SnapshotError> {
    for chunk in entries.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| SnapshotError::MsrCount)?;
        let written = fd.set_msrs(&msrs).map_err(failed(id, "KVM_SET_MSRS"))?;
        if let Some(refused) = chunk.get(written) {
            return Err(SnapshotError::MsrRefused {
                vcpu: id,
                index: refused.index,
            });
        }
    }
    Ok(())
}
