//! `cocoon-vmm`: boot a Linux guest in a KVM microVM.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use cocoon_vmm::cli::Args;
use cocoon_vmm::vm::{Vm, VmConfig, VmEvent, VsockConfig};

/// Kernel arguments every Cocoon guest needs: the console on COM1, a restart
/// through the i8042 (which ends the VM), and an immediate restart on panic
/// (which the VMM recognises on the console and reports as a failure).
const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

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
