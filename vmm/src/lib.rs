//! cocoon-vmm: the KVM microVM monitor that runs one Cocoon sandbox.
//!
//! The machine model, boot path and virtio devices land with the cocoon-vmm
//! issue; until then the library only carries what the binary reports.

/// Version of this VMM, as reported by `cocoon-vmm --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
