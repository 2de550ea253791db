//! containerd-shim-cocoon-v1: the containerd shim v2 runtime
//! `io.containerd.cocoon.v1`. Every sandbox is a cocoon-vmm microVM whose
//! agent runs the containers (see docs/architecture.md).

mod cgroup;
mod config;
mod container;
mod error;
mod events;
mod exits;
mod guest;
mod hooks;
mod host_namespaces;
mod host_program;
mod io;
mod launch;
mod log_driver;
mod metrics;
mod network;
mod process;
mod rootfs;
mod runtime_info;
mod runtime_options;
mod sandbox;
mod scratch_disk;
mod service;
mod share;
mod task;
mod template;
mod vm_shape;
mod vmm_process;
mod volumes;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[tokio::main]
async fn main() {
    // containerd probes shims with `-v`.
    if std::env::args()
        .skip(1)
        .any(|arg| arg == "-v" || arg == "--version")
    {
        println!("containerd-shim-cocoon-v1:\n  Version: {VERSION}");
        return;
    }
    // containerd 2.x asks for the runtime info with `-info` (Go's flag
    // package takes `--info` too); containerd-shim's `run` parses the flag
    // but would start a shim.
    if std::env::args()
        .skip(1)
        .any(|arg| arg == "-info" || arg == "--info")
    {
        if let Err(e) = runtime_info::answer(std::io::stdin().lock(), std::io::stdout().lock()) {
            eprintln!("{}: {e}", runtime_info::RUNTIME_NAME);
            std::process::exit(1);
        }
        return;
    }
    // Our logs go through `tracing`, which hands them to containerd-shim's
    // logger (the shim log FIFO containerd reads; `-debug` raises the level).
    // The level is the default config's until a Create names another config.
    let log_level = config::Config::resolve(None)
        .map(|config| config.log_level)
        .unwrap_or_else(|_| "info".into());
    let shim_config = containerd_shim::Config {
        default_log_level: log_level,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<service::CocoonShim>(
        runtime_info::RUNTIME_NAME,
        Some(shim_config),
    )
    .await;
}
