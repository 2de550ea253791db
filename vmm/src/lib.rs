//! cocoon-vmm: the KVM microVM monitor that runs one Cocoon sandbox.
//!
//! A VM is built from a [`vm::VmConfig`]: guest RAM ([`memory`], laid out as
//! in [`layout`]), the kernel and initramfs ([`boot`]), legacy devices
//! ([`devices`]) on the port and MMIO [`bus`]es, and one thread per vCPU
//! ([`vcpu`]).

pub mod attach;
pub mod boot;
pub mod bus;
pub mod cli;
pub mod devices;
pub mod inherited_fd;
pub mod jail;
pub mod layout;
pub mod memory;
pub mod seccomp;
pub mod snapshot;
pub mod thread;
pub mod vcpu;
pub mod virtio;
pub mod vm;
pub mod vm_event;

/// Version of this VMM, as reported by `cocoon-vmm --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
