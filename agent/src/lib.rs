//! cocoon-agent's parts, as a library so fuzz targets and tests reach the
//! parsers of host-controlled input (the binary is `main.rs`).

pub mod cgroup;
pub mod console;
pub mod containers;
pub mod error;
pub mod events;
pub mod exec_seccomp;
pub mod helper;
pub mod host_only;
pub mod identity;
pub mod init;
pub mod mounts;
pub mod network;
pub mod pod_tmpfs;
pub mod pty;
pub mod reaper;
pub mod service;
pub mod spec;
pub mod stdio;
pub mod sysctl;
pub mod template;
pub mod writable_layer;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
