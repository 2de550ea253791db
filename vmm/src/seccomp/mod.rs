//! Per-thread seccomp filters: every VMM thread runs under the filter of its
//! role (vCPU, device worker, signal thread, main thread), deny by default:
//! a syscall outside it kills the whole VMM (`SECCOMP_RET_KILL_PROCESS`, the
//! process dies of SIGSYS).
//!
//! Filters are built here in Rust (one module per role) and compiled to BPF
//! with seccompiler when the VMM starts, before any thread exists; each thread
//! installs its own filter first thing ([`install`]), which also sets
//! no_new_privs. Filters are inherited by the threads a filtered thread
//! creates and stack, so every thread is created by the unfiltered main
//! thread before it installs its own (see `vm.rs` and `virtio/worker_thread.rs`).
//!
//! Debug builds only: `COCOON_VMM_SECCOMP=log` turns the default action into
//! "allow and log" (audit `type=1326` lines in the kernel log), which is how
//! the syscall lists were found.

mod main_thread;
mod signals;
mod vcpu;
mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why the filters could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filter for {role}: {source}")]
    Build {
        role: String,
        source: seccompiler::BackendError,
    },
    #[error("seccomp filter for {role} does not compile: {source}")]
    Compile {
        role: String,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter: {0}")]
    Install(seccompiler::Error),
    #[error("seccomp filters exist for x86_64 only, not {0}")]
    Arch(&'static str),
}

/// What a thread does, which decides what it may ask the kernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs KVM_RUN and the device emulation of its exits.
    Vcpu,
    /// A device worker thread of the virtio device type (`VIRTIO_ID_*`).
    Worker(u32),
    /// Waits for SIGTERM/SIGINT and turns them into a stop request.
    Signals,
    /// The main thread once the VM runs: waits for the event that ends it.
    Main,
    /// A vCPU of a template boot, which also reads its state to be saved.
    TemplateVcpu,
    /// The main thread of a template boot, which also saves the VM.
    TemplateMain,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vcpu => f.write_str("vCPU threads"),
            Self::Worker(device_type) => write!(f, "workers of virtio device type {device_type}"),
            Self::Signals => f.write_str("the signal thread"),
            Self::Main => f.write_str("the main thread"),
            Self::TemplateVcpu => f.write_str("vCPU threads of a template boot"),
            Self::TemplateMain => f.write_str("the main thread of a template boot"),
        }
    }
}

/// A compiled filter, ready to install on any number of threads.
pub type Filter = Arc<BpfProgram>;

/// The compiled filter of `role`, for x86_64 (the only architecture we run on).
pub fn filter(role: Role) -> Result<Filter, SeccompError> {
    filter_for(role, TargetArch::x86_64, default_action())
}

/// Installs `filter` on the calling thread (and sets no_new_privs first, as
/// an unprivileged seccomp filter requires).
pub fn install(filter: &Filter) -> Result<(), SeccompError> {
    if cfg!(not(target_arch = "x86_64")) {
        return Err(SeccompError::Arch(std::env::consts::ARCH));
    }
    seccompiler::apply_filter(filter).map_err(SeccompError::Install)
}

fn filter_for(
    role: Role,
    arch: TargetArch,
    mismatch: SeccompAction,
) -> Result<Filter, SeccompError> {
    let rules = match role {
        Role::Vcpu => vcpu::rules(false),
        Role::TemplateVcpu => vcpu::rules(true),
        Role::Worker(device_type) => worker::rules(device_type),
        Role::Signals => signals::rules(),
        Role::Main => main_thread::rules(false),
        Role::TemplateMain => main_thread::rules(true),
    };
    let filter = SeccompFilter::new(rules.syscalls, mismatch, SeccompAction::Allow, arch).map_err(
        |source| SeccompError::Build {
            role: role.to_string(),
            source,
        },
    )?;
    let program = BpfProgram::try_from(filter).map_err(|source| SeccompError::Compile {
        role: role.to_string(),
        source,
    })?;
    Ok(Arc::new(program))
}

// What a forbidden syscall does: kill the VMM. A debug build can be told to
// log it and let it through instead, to find what a change needs.
fn default_action() -> SeccompAction {
    #[cfg(debug_assertions)]
    if std::env::var_os("COCOON_VMM_SECCOMP").is_some_and(|v| v == "log") {
        return SeccompAction::Log;
    }
    SeccompAction::KillProcess
}

/// The syscalls (and argument values) one role may use.
#[derive(Default)]
struct Rules {
    // An empty rule list matches on the syscall number alone.
    syscalls: BTreeMap<i64, Vec<SeccompRule>>,
    unconditional: BTreeSet<i64>,
}

impl Rules {
    /// Allows `syscalls` whatever their arguments.
    fn allow(&mut self, syscalls: &[libc::c_long]) -> &mut Self {
        for &syscall in syscalls {
            self.unconditional.insert(syscall);
            self.syscalls.insert(syscall, Vec::new());
        }
        self
    }

    /// Allows `syscall` when its argument `arg` (a 32-bit int, as the kernel
    /// reads ioctl numbers, flags and advice values) is one of `values`.
    fn allow_arg(&mut self, syscall: libc::c_long, arg: u8, values: &[u64]) -> &mut Self {
        self.allow_masked(syscall, arg, u64::from(u32::MAX), values)
    }

    /// Allows `syscall` when `arg & mask` is one of `values`.
    fn allow_masked(
        &mut self,
        syscall: libc::c_long,
        arg: u8,
        mask: u64,
        values: &[u64],
    ) -> &mut Self {
        if self.unconditional.contains(&syscall) {
            return self;
        }
        let entry = self.syscalls.entry(syscall).or_default();
        for &value in values {
            let condition = SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(mask),
                value,
            );
            // Only an argument index above 5 fails, and ours are constants.
            if let Ok(rule) = condition.and_then(|c| SeccompRule::new(vec![c])) {
                entry.push(rule);
            }
        }
        self
    }
}

// Every thread: what the Rust runtime, glibc and the allocator do on their own.
fn runtime(rules: &mut Rules) {
    rules
        // Memory: the allocator and thread stacks; never executable memory.
        .allow(&[libc::SYS_brk, libc::SYS_munmap, libc::SYS_mremap])
        .allow_masked(libc::SYS_mmap, 2, libc::PROT_EXEC as u64, &[0])
        .allow_masked(libc::SYS_mprotect, 2, libc::PROT_EXEC as u64, &[0])
        // glibc's free returns memory with MADV_DONTNEED.
        .allow_arg(libc::SYS_madvise, 2, &[libc::MADV_DONTNEED as u64])
        // Locks, condition variables, channels: plain wait/wake, no PI futexes.
        .allow_masked(
            libc::SYS_futex,
            1,
            FUTEX_CMD_MASK,
            &[
                libc::FUTEX_WAIT as u64,
                libc::FUTEX_WAKE as u64,
                libc::FUTEX_WAIT_BITSET as u64,
                libc::FUTEX_WAKE_BITSET as u64,
            ],
        )
        .allow(&[
            // Time (the vDSO's fallback), yields and sleeps.
            libc::SYS_clock_gettime,
            libc::SYS_sched_yield,
            libc::SYS_nanosleep,
            libc::SYS_clock_nanosleep,
            // HashMap seeds, fetched once per thread.
            libc::SYS_getrandom,
            // Signals: returning from a handler, masks, the alternate stack.
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            // Logs and the console (stderr, stdout, files opened before).
            libc::SYS_write,
            libc::SYS_writev,
            // Dropping file descriptors.
            libc::SYS_close,
            // Ending a thread, or the VMM.
            libc::SYS_exit,
            libc::SYS_exit_group,
        ]);
}

// The futex command bits, without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME.
const FUTEX_CMD_MASK: u64 = 0x7f;

/// KVM_RUN: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// KVM_IRQ_LINE: `_IOW(KVMIO, 0x61, struct kvm_irq_level)`.
const KVM_IRQ_LINE: u64 = 0x4008_ae61;

// `_IOR(KVMIO, nr, T)` and `_IOWR(KVMIO, nr, T)`.
const fn kvm_ior<T>(nr: u64) -> u64 {
    (2 << 30) | ((std::mem::size_of::<T>() as u64) << 16) | (0xae << 8) | nr
}
const fn kvm_iowr<T>(nr: u64) -> u64 {
    (3 << 30) | ((std::mem::size_of::<T>() as u64) << 16) | (0xae << 8) | nr
}

/// The ioctls that read a vCPU's state (`snapshot::vcpu_state`).
const KVM_GET_VCPU_STATE: [u64; 9] = [
    kvm_ior::<kvm_bindings::kvm_regs>(0x81),
    kvm_ior::<kvm_bindings::kvm_sregs>(0x83),
    kvm_iowr::<kvm_bindings::kvm_msrs>(0x88),
    kvm_ior::<kvm_bindings::kvm_lapic_state>(0x8e),
    kvm_ior::<kvm_bindings::kvm_mp_state>(0x98),
    kvm_ior::<kvm_bindings::kvm_vcpu_events>(0x9f),
    kvm_ior::<kvm_bindings::kvm_debugregs>(0xa1),
    kvm_ior::<kvm_bindings::kvm_xsave>(0xa4),
    kvm_ior::<kvm_bindings::kvm_xcrs>(0xa6),
];

/// The ioctls that read the VM's state (`snapshot::vm_state`).
const KVM_GET_VM_STATE: [u64; 3] = [
    kvm_iowr::<kvm_bindings::kvm_irqchip>(0x62),
    kvm_ior::<kvm_bindings::kvm_pit_state2>(0x9f),
    kvm_ior::<kvm_bindings::kvm_clock_data>(0x7c),
];

#[cfg(test)]
mod tests;
