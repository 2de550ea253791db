//! Initial state of a vCPU for the Linux 64-bit boot protocol: CPUID, MSRs,
//! FPU, local APIC, and (for the boot processor) registers in long mode
//! pointing at the kernel's entry with boot_params in RSI.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;

use crate::boot::long_mode::{segment, CODE_SELECTOR, DATA_SELECTOR, GDT, TSS_SELECTOR};
use crate::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PML4_ADDR, ZERO_PAGE_ADDR};

#[derive(Debug, thiserror::Error)]
#[error("setting up vCPU {vcpu}: {step} failed: {source}")]
pub struct SetupError {
    pub vcpu: u8,
    pub step: &'static str,
    pub source: kvm_ioctls::Error,
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_VMX: u32 = 1 << 5;
const ECX_PDCM: u32 = 1 << 15;
const EDX_HTT: u32 = 1 << 28;
const LEAF_PERFMON: u32 = 0xa;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const EXT_ECX_SVM: u32 = 1 << 2;
const EXT_ECX_PERFCTR_CORE: u32 = 1 << 23;
const EXT_ECX_PERFCTR_NB: u32 = 1 << 24;
const EXT_ECX_PERFCTR_LLC: u32 = 1 << 28;

/// The CPUID KVM supports, adjusted for vCPU `id` of `count`: its APIC ID,
/// a flat topology (one thread per core, all cores in one package) and the
/// hypervisor bit; and without what a sandbox must not see: hardware
/// virtualization (no nested VMs inside a sandbox) and performance counters
/// (a side channel, and state we do not save).
pub fn cpuid_for(supported: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    let core_bits = u32::BITS - (u32::from(count).saturating_sub(1)).leading_zeros();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(count) << 16) | (u32::from(id) << 24);
                // KVM emulates the TSC-deadline timer in the in-kernel LAPIC
                // but leaves advertising it to us. Without it the guest
                // calibrates the LAPIC timer at boot, which is slow.
                entry.ecx |= ECX_HYPERVISOR | ECX_TSC_DEADLINE;
                entry.ecx &= !(ECX_VMX | ECX_PDCM);
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                // Level 0: SMT (1 thread per core); level 1: cores; then end.
                let (eax, ebx, level_type) = match entry.index {
                    0 => (0, 1, 1),
                    1 => (core_bits, u32::from(count), 2),
                    _ => (0, 0, 0),
                };
                entry.eax = eax;
                entry.ebx = ebx;
                entry.ecx = (level_type << 8) | (entry.index & 0xff);
                entry.edx = u32::from(id);
            }
            LEAF_PERFMON => {
                (entry.eax, entry.ebx, entry.ecx, entry.edx) = (0, 0, 0, 0);
            }
            LEAF_EXT_FEATURES => {
                entry.ecx &= !(EXT_ECX_SVM
                    | EXT_ECX_PERFCTR_CORE
                    | EXT_ECX_PERFCTR_NB
                    | EXT_ECX_PERFCTR_LLC);
            }
            _ => {}
        }
    }
    cpuid
}

fn step(vcpu: u8, step: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SetupError {
    move |source| SetupError { vcpu, step, source }
}

/// State every vCPU needs before it runs.
pub fn configure_common(fd: &VcpuFd, id: u8, cpuid: &CpuId) -> Result<(), SetupError> {
    fd.set_cpuid2(cpuid).map_err(step(id, "KVM_SET_CPUID2"))?;

    let entries = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    });
    let msrs = Msrs::from_entries(&entries).map_err(|_| SetupError {
        vcpu: id,
        step: "building the MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let written = fd.set_msrs(&msrs).map_err(step(id, "KVM_SET_MSRS"))?;
    if written != entries.len() {
        return Err(SetupError {
            vcpu: id,
            step: "KVM_SET_MSRS (not all MSRs taken)",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        });
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(step(id, "KVM_SET_FPU"))?;

    // LINT0 delivers the PIC's ExtINT, LINT1 NMIs: what Linux expects of a PC.
    let mut lapic = fd.get_lapic().map_err(step(id, "KVM_GET_LAPIC"))?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, byte) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *byte as i8;
        }
    }
    fd.set_lapic(&lapic).map_err(step(id, "KVM_SET_LAPIC"))?;
    Ok(())
}

/// Registers of the boot processor: long mode, paging on, at `entry`.
pub fn configure_boot_processor(fd: &VcpuFd, entry: u64) -> Result<(), SetupError> {
    let mut sregs = fd.get_sregs().map_err(step(0, "KVM_GET_SREGS"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = segment(CODE_SELECTOR / 8);
    let data = segment(DATA_SELECTOR / 8);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_SELECTOR / 8);
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    fd.set_sregs(&sregs).map_err(step(0, "KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    };
    fd.set_regs(&regs).map_err(step(0, "KVM_SET_REGS"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn cpuid_carries_apic_id_and_topology() {
        let supported = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: LEAF_FEATURES,
                ebx: 0xff00_0800,
                ecx: ECX_VMX,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_TOPOLOGY,
                index: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_TOPOLOGY,
                index: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_PERFMON,
                eax: 0x0704_0102,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_EXT_FEATURES,
                ecx: EXT_ECX_SVM | EXT_ECX_PERFCTR_CORE | 1,
                ..Default::default()
            },
        ])
        .unwrap();
        let cpuid = cpuid_for(&supported, 3, 4);
        let entries = cpuid.as_slice();
        assert_eq!(entries[0].ebx >> 24, 3);
        assert_eq!((entries[0].ebx >> 16) & 0xff, 4);
        assert_eq!(entries[0].ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(entries[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(entries[1].edx, 3);
        assert_eq!(entries[0].ecx & ECX_VMX, 0, "no VMX in a sandbox");
        assert_eq!(entries[3].eax, 0, "no architectural PMU");
        assert_eq!(entries[4].ecx, 1, "no SVM or core perf counters, LAHF kept");
        assert_eq!(
            (entries[2].eax, entries[2].ebx, entries[2].ecx >> 8),
            (2, 4, 2)
        );
    }
}
