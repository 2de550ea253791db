//! `cocoon-vmm`: boot a Linux guest in a KVM microVM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use cocoon_vmm::vm::{Vm, VmConfig, VmEvent, VsockConfig};

/// Kernel arguments every Cocoon guest needs: the console on COM1, a restart
/// through the i8042 (which ends the VM), and an immediate restart on panic
/// (which the VMM recognises on the console and reports as a failure).
const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

#[derive(Parser, Debug)]
#[command(name = "cocoon-vmm", version, about = "Boot a Linux guest in a KVM microVM", long_about = None)]
struct Args {
    /// Guest kernel: an ELF vmlinux or a bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs (cpio, optionally compressed).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Extra kernel arguments, appended to "console=ttyS0 reboot=k panic=-1".
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 128)]
    memory_mib: u64,
    /// Where the guest console goes: a file path, "-" for stdout, or "none".
    #[arg(long, default_value = "-")]
    console: String,
    /// Share a host directory with the guest over virtio-fs
    /// (guest: mount -t virtiofs TAG /mnt). Repeatable.
    #[arg(long = "share", value_name = "TAG=DIR", value_parser = parse_share)]
    shares: Vec<(String, PathBuf)>,
    /// Unix socket of the hybrid vsock device: connect and write
    /// "CONNECT <port>\n" to reach a guest port; guest connections to host
    /// port P go to "<PATH>_P".
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// Seconds the guest gets to shut down after SIGTERM/SIGINT before the
    /// VM is stopped anyway.
    #[arg(long, default_value_t = 5)]
    shutdown_timeout: u64,
    /// The guest's vsock CID (with --vsock-uds).
    #[arg(long, default_value_t = 3, requires = "vsock_uds")]
    vsock_cid: u64,
    /// Attach a virtio-balloon device offering only free page reporting:
    /// memory the guest frees is dropped from the VMM's resident memory
    /// (the guest kernel needs CONFIG_VIRTIO_BALLOON).
    #[arg(long)]
    balloon: bool,
}

fn parse_share(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((tag, dir)) if !tag.is_empty() && !dir.is_empty() => Ok((tag.to_string(), dir.into())),
        _ => Err(format!("expected TAG=DIR, got {value:?}")),
    }
}

fn console_sink(target: &str) -> anyhow::Result<Option<Box<dyn std::io::Write + Send>>> {
    Ok(match target {
        "none" => None,
        "-" => Some(Box::new(std::io::stdout())),
        path => Some(Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create console file {path}"))?,
        )),
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("COCOON_VMM_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cocoon-vmm: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let launched = std::time::Instant::now();
    let cmdline = [BASE_CMDLINE, args.cmdline.trim()]
        .join(" ")
        .trim()
        .to_string();
    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline,
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        console: console_sink(&args.console)?,
        shares: args.shares,
        vsock: args.vsock_uds.map(|uds_path| VsockConfig {
            guest_cid: args.vsock_cid,
            uds_path,
        }),
        balloon: args.balloon,
    };
    let mut vm = Vm::new(config)?;
    let console = vm.console();
    let stopper = vm.stopper();
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
        .context("cannot install signal handlers")?;
    cocoon_vmm::thread::builder("signals")
        .spawn(move || {
            for _ in signals.forever() {
                let _ = stopper.send(VmEvent::Stop);
            }
        })
        .context("cannot start the signal thread")?;

    vm.start()?;
    tracing::info!(
        after_ms = launched.elapsed().as_millis() as u64,
        "vCPUs started"
    );
    let mut event = vm.next_event(None).unwrap_or(VmEvent::Stop);
    if matches!(event, VmEvent::Stop) {
        // Give the guest a chance to stop its workloads; a second signal or
        // the timeout ends the VM regardless.
        let timeout = std::time::Duration::from_secs(args.shutdown_timeout);
        eprintln!("cocoon-vmm: asking the guest to shut down (at most {timeout:?})");
        vm.request_guest_shutdown();
        event = match vm.next_event(Some(timeout)) {
            Some(VmEvent::Stop) | None => {
                eprintln!("cocoon-vmm: the guest did not shut down; stopping it");
                VmEvent::Stop
            }
            Some(other) => other,
        };
    }
    let code = match event {
        VmEvent::GuestReset if console.panicked() => {
            eprintln!(
                "cocoon-vmm: the guest kernel panicked; last console lines:\n{}",
                console.tail(30)
            );
            ExitCode::FAILURE
        }
        VmEvent::GuestReset | VmEvent::Stop => ExitCode::SUCCESS,
        VmEvent::VcpuFailed { vcpu, reason } => {
            eprintln!(
                "cocoon-vmm: vCPU {vcpu} stopped: {reason}; last console lines:\n{}",
                console.tail(30)
            );
            ExitCode::FAILURE
        }
    };
    // vCPU threads may still be in KVM_RUN: end the process with the VM alive.
    std::io::Write::flush(&mut std::io::stdout()).ok();
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
}
