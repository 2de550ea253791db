//! Saving a template boot at its snapshot point, and starting a VM from the
//! snapshot (see [`crate::snapshot`] for what is saved and why).

use std::path::Path;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kvm_ioctls::{Kvm, VmFd};

use super::{
    attach_virtio_devices, create_kvm_vm, kvm_step, legacy_devices, register_memory, Buses, Vm,
    VmConfig, VmError,
};
use crate::devices::console_log::ConsoleLog;
use crate::snapshot::{
    memory_file, vcpu0_cpuid, Snapshot, SnapshotError, SnapshotInput, VmState, FORMAT,
};
use crate::vcpu::{setup, Vcpu};
use crate::virtio::block::DiskFile;

// How long the vCPUs of a template boot get to pause. Generous: under
// emulation a kick takes a while to land.
const PAUSE_PATIENCE: Duration = Duration::from_secs(30);

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn mismatch(why: String) -> VmError {
    VmError::Snapshot(SnapshotError::Mismatch(why))
}

/// A template boot, saved.
pub struct Saved {
    /// Bytes of guest memory written (the rest are holes).
    pub memory_bytes: u64,
}

impl Vm {
    /// Builds the VM saved in `dir`, with `config`'s host resources (vsock
    /// socket, shares, tap, console), which must make the same devices.
    pub(super) fn restore(mut config: VmConfig, dir: &Path) -> Result<Self, VmError> {
        let SnapshotInput {
            snapshot: saved,
            memory,
        } = SnapshotInput::open(dir)?;
        if saved.vcpus != config.vcpus || saved.memory_mib != config.memory_mib {
            return Err(mismatch(format!(
                "it has {} vCPUs and {} MiB of memory, this VM {} and {}",
                saved.vcpus, saved.memory_mib, config.vcpus, config.memory_mib
            )));
        }
        let disk_sectors = config.disk.as_ref().map(DiskFile::sectors);
        if disk_sectors != saved.disk_sectors {
            return Err(mismatch(format!(
                "its disk has {:?} sectors, this VM's {disk_sectors:?}",
                saved.disk_sectors
            )));
        }
        if saved.vcpu_states.len() != usize::from(saved.vcpus) {
            return Err(mismatch("it lacks the state of a vCPU".into()));
        }
        let (kvm, vm) = create_kvm_vm()?;
        if vcpu0_cpuid(&kvm, config.vcpus)? != saved.cpuid {
            return Err(mismatch(
                "this host's KVM gives the guest another CPU (CPUID)".into(),
            ));
        }
        let memory = memory_file::map(&memory, config.memory_mib << 20)?;
        let memory = register_memory(&vm, memory)?;
        let devices = attach_virtio_devices(&vm, &memory, &mut config, "")?;
        let types: Vec<u32> = devices
            .transports
            .iter()
            .map(|transport| lock(transport).device_type())
            .collect();
        if types != saved.devices {
            return Err(mismatch(format!(
                "it has the virtio devices {:?}, this VM {types:?}",
                saved.devices
            )));
        }
        let events = channel();
        let console = ConsoleLog::default();
        let (pio, serial) = legacy_devices(
            &vm,
            &events.0,
            config.console.take(),
            &console,
            Some(&saved.serial),
        )?;
        saved.vm.restore(&vm)?;
        let vcpus = restore_vcpus(&kvm, &vm, &saved)?;
        Ok(Self {
            _kvm: kvm,
            _vm: vm,
            _memory: memory,
            vcpus,
            device_threads: devices.threads,
            release: Vec::new(),
            vcpu_pthreads: Vec::new(),
            buses: Arc::new(Buses {
                pio,
                mmio: devices.mmio,
            }),
            events,
            console,
            serial,
            transports: devices.transports,
            memory_mib: config.memory_mib,
            template: None,
            saved_transports: saved.transports,
        })
    }

    /// A restored VM: puts each transport back in its saved state, starting
    /// the devices the driver had started (their threads must run).
    pub(super) fn restore_transports(&mut self) -> Result<(), VmError> {
        let saved = std::mem::take(&mut self.saved_transports);
        for (transport, state) in self.transports.iter().zip(&saved) {
            lock(transport)
                .restore_state(state)
                .map_err(SnapshotError::from)?;
        }
        Ok(())
    }

    /// A template boot whose agent reached the snapshot point: pauses every
    /// vCPU, stops every device and saves the VM. The VM never runs again.
    pub fn save_snapshot(&mut self) -> Result<Saved, VmError> {
        let template = self.template.as_mut().ok_or(VmError::NotATemplate)?;
        let vcpu_states = template
            .pause()
            .collect(&self.vcpu_pthreads, PAUSE_PATIENCE)?;
        let transports: Vec<_> = self
            .transports
            .iter()
            .map(|transport| lock(transport).save_state())
            .collect();
        let vm = VmState::save(&self._vm)?;
        let serial = lock(&self.serial).saved();
        let memory_bytes = memory_file::save(&self._memory, &template.output.memory)?;
        let snapshot = Snapshot {
            format: FORMAT,
            vmm: template.vmm.clone(),
            memory_mib: self.memory_mib,
            vcpus: u8::try_from(vcpu_states.len()).unwrap_or(u8::MAX),
            cpuid: template.cpuid.clone(),
            devices: transports.iter().map(|state| state.device_type).collect(),
            disk_sectors: template.disk_sectors,
            vm,
            vcpu_states,
            transports,
            serial,
        };
        template.output.write_state(&snapshot)?;
        Ok(Saved { memory_bytes })
    }
}

// The saved vCPUs, each with this host's CPUID for its place.
fn restore_vcpus(kvm: &Kvm, vm: &VmFd, saved: &Snapshot) -> Result<Vec<Vcpu>, VmError> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_step("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::with_capacity(saved.vcpu_states.len());
    for (id, state) in (0..saved.vcpus).zip(&saved.vcpu_states) {
        if state.id != id {
            return Err(mismatch(format!("vCPU {id}'s state is missing")));
        }
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm_step("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(&setup::cpuid_for(&supported, id, saved.vcpus))
            .map_err(kvm_step("KVM_SET_CPUID2"))?;
        state.restore(&fd)?;
        vcpus.push(Vcpu { id, fd });
    }
    Ok(vcpus)
}
