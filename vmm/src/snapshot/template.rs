//! A template boot: the VM that is saved once its agent is ready.

use std::path::Path;
use std::sync::Arc;

use kvm_bindings::{kvm_cpuid_entry2, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

use super::pause::VcpuPause;
use super::{vmm_identity, SnapshotError, SnapshotOutput};
use crate::vcpu::setup::cpuid_for;

/// What a template boot needs to save itself, gathered before the jail and
/// the seccomp filters.
pub struct Template {
    pub output: SnapshotOutput,
    pause: Arc<VcpuPause>,
    pub vmm: String,
    /// The CPUID every vCPU got (vCPU 0's): a restore on a host that would
    /// give another is refused.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// The size of the VM's disk, if it has one, in sectors.
    pub disk_sectors: Option<u64>,
}

impl Template {
    pub fn new(
        kvm: &Kvm,
        dir: &Path,
        vcpus: u8,
        disk_sectors: Option<u64>,
    ) -> Result<Self, SnapshotError> {
        let msr_indices = kvm
            .get_msr_index_list()
            .map_err(|source| SnapshotError::Vm {
                step: "KVM_GET_MSR_INDEX_LIST",
                source,
            })?
            .as_slice()
            .to_vec();
        Ok(Self {
            output: SnapshotOutput::create(dir)?,
            pause: Arc::new(VcpuPause::new(msr_indices)),
            vmm: vmm_identity()?,
            cpuid: vcpu0_cpuid(kvm, vcpus)?,
            disk_sectors,
        })
    }

    pub fn pause(&self) -> Arc<VcpuPause> {
        Arc::clone(&self.pause)
    }
}

/// The CPUID vCPU 0 of a VM with `vcpus` vCPUs gets on this host.
pub fn vcpu0_cpuid(kvm: &Kvm, vcpus: u8) -> Result<Vec<kvm_cpuid_entry2>, SnapshotError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| SnapshotError::Vm {
            step: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    Ok(cpuid_for(&supported, 0, vcpus).as_slice().to_vec())
}
