//! `cocoon-vmm`: boot a Linux guest in a KVM microVM.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use cocoon_vmm::cli::Args;
use cocoon_vmm::devices::console_cap::CappedSink;
use cocoon_vmm::jail::{self, Jail};
use cocoon_vmm::seccomp;
use cocoon_vmm::virtio::block::DiskFile;
use cocoon_vmm::virtio::fs::Caching;
use cocoon_vmm::virtio::net::Tap;
use cocoon_vmm::vm::{Boot, KernelBoot, NetConfig, SharedDir, Vm, VmConfig, VmEvent, VsockConfig};

/// Kernel arguments every Cocoon guest needs: the console on COM1, a restart
/// through the i8042 (which ends the VM), and an immediate restart on panic
/// (which the VMM recognises on the console and reports as a failure).
const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

type Sink = Box<dyn std::io::Write + Send>;

/// Where the guest console goes; with `limit`, at most that many bytes of it
/// (then a note saying the rest was dropped).
fn console_sink(target: &str, limit: Option<u64>) -> anyhow::Result<Option<Sink>> {
    let sink: Sink = match target {
        "none" => return Ok(None),
        "-" => Box::new(std::io::stdout()),
        path => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create console file {path}"))?,
        ),
    };
    Ok(Some(match limit {
        Some(limit) => Box::new(CappedSink::new(sink, limit)),
        None => sink,
    }))
}

// Signals the signal thread handles; blocked on every other thread, so that
// signal-hook's handler (and its syscalls) only ever run there.
fn handled_signals() -> Vec<libc::c_int> {
    let mut signals = vec![libc::SIGTERM, libc::SIGINT];
    // Debug builds: SIGUSR1 makes vCPU 0 call a forbidden syscall (test hook).
    if cfg!(debug_assertions) {
        signals.push(libc::SIGUSR1);
    }
    signals
}

fn signal_mask(how: libc::c_int, signals: &[libc::c_int]) -> std::io::Result<()> {
    // SAFETY: sigemptyset/sigaddset fill the set we own; pthread_sigmask only
    // changes the calling thread's mask.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut())
    };
    match rc {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

// The signal thread: SIGTERM/SIGINT ask the VM to stop. Started after the
// vCPUs (the test hook needs vCPU 0), with the handled signals blocked
// everywhere else.
fn start_signal_thread(vm: &Vm) -> anyhow::Result<()> {
    let handled = handled_signals();
    let mut signals =
        signal_hook::iterator::Signals::new(&handled).context("cannot install signal handlers")?;
    let filter = seccomp::filter(seccomp::Role::Signals)?;
    let stopper = vm.stopper();
    #[cfg(debug_assertions)]
    let trigger = vm.forbidden_syscall_trigger();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    cocoon_vmm::thread::builder("signals")
        .spawn(move || {
            let installed = seccomp::install(&filter);
            let ok = installed.is_ok();
            let _ = ready_tx.send(installed);
            if !ok || signal_mask(libc::SIG_UNBLOCK, &handled).is_err() {
                return;
            }
            for signal in signals.forever() {
                #[cfg(debug_assertions)]
                if signal == libc::SIGUSR1 {
                    if let Some(trigger) = &trigger {
                        trigger();
                    }
                    continue;
                }
                let _ = signal;
                let _ = stopper.send(VmEvent::Stop);
            }
        })
        .context("cannot start the signal thread")?;
    ready
        .recv()
        .context("the signal thread died")?
        .context("the signal thread")?;
    Ok(())
}

// A template boot whose agent is ready: save the VM and end.
fn save_template(vm: &mut Vm, launched: std::time::Instant) -> anyhow::Result<ExitCode> {
    let result = vm.save_snapshot();
    let code = match result {
        Ok(saved) => {
            tracing::info!(
                after_ms = launched.elapsed().as_millis() as u64,
                memory_bytes = saved.memory_bytes,
                "VM saved"
            );
            0
        }
        Err(error) => {
            eprintln!(
                "cocoon-vmm: cannot save the VM: {error}; last console lines:\n{}",
                vm.console().tail(30)
            );
            1
        }
    };
    // The paused vCPU threads never return: end the process with the VM alive.
    std::process::exit(code);
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
    // First: an inherited fd is only ours while nothing else has opened one.
    let net = match (args.net_fd, args.net_mac) {
        (Some(fd), Some(mac)) => Some(NetConfig {
            tap: Tap::from_inherited_fd(fd)?,
            mac,
        }),
        _ => None,
    };
    let disk = args.disk_fd.map(DiskFile::from_inherited_fd).transpose()?;
    if let Some(disk) = &disk {
        tracing::info!(
            direct = disk.is_direct(),
            "scratch disk of {} MiB",
            disk.sectors() >> 11
        );
    }
    // Before guest memory exists, so that all of it is charged there.
    if let Some(cgroup) = &args.cgroup {
        jail::cgroup::join(cgroup)?;
    }
    let mut shares: Vec<SharedDir> = (args.shares.into_iter())
        .map(|(tag, dir)| SharedDir::new(tag, dir, Caching::Coherent))
        .chain(
            (args.immutable_shares.into_iter())
                .map(|(tag, dir)| SharedDir::new(tag, dir, Caching::Immutable)),
        )
        .collect();
    // Still single-threaded here (no thread may start before Jail::enter).
    let jail = match &args.jail {
        Some(dir) => {
            let dirs: Vec<_> = shares.iter().map(|share| share.dir.clone()).collect();
            let jail = Jail::prepare(dir, &dirs)
                .with_context(|| format!("cannot prepare the jail in {}", dir.display()))?;
            // The file server opens each share through its bind in the jail.
            for (share, bound) in shares.iter_mut().zip(jail.shares()) {
                share.dir = bound.clone();
            }
            Some(jail)
        }
        None => None,
    };
    let cmdline = [BASE_CMDLINE, args.cmdline.trim()]
        .join(" ")
        .trim()
        .to_string();
    let template = args.snapshot_to.is_some();
    let boot = match (args.restore_from, args.kernel) {
        (Some(dir), _) => Boot::Snapshot(dir),
        (None, Some(kernel)) => Boot::Kernel(KernelBoot {
            kernel,
            initrd: args.initrd,
            cmdline,
            save_to: args.snapshot_to,
        }),
        (None, None) => anyhow::bail!("either --kernel or --restore-from is needed"),
    };
    let config = VmConfig {
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        console: console_sink(&args.console, args.console_limit)?,
        shares,
        vsock: args.vsock_uds.map(|uds_path| VsockConfig {
            guest_cid: args.vsock_cid,
            uds_path,
        }),
        balloon: args.balloon,
        net,
        disk,
    };
    let mut vm = Vm::new(config, boot)?;
    // Everything opened by host path is open now; every thread starts after
    // this and inherits the dropped capabilities and no_new_privs.
    if let Some(jail) = jail {
        jail.enter(args.memory_mib)
            .context("cannot enter the jail")?;
    }
    let console = vm.console();
    // Blocked from here on in this thread and in every thread it creates.
    signal_mask(libc::SIG_BLOCK, &handled_signals()).context("cannot block signals")?;
    vm.start_threads()?;
    start_signal_thread(&vm)?;
    // Last: the filter of the main thread, which created every other thread.
    let role = if template {
        seccomp::Role::TemplateMain
    } else {
        seccomp::Role::Main
    };
    seccomp::install(&seccomp::filter(role)?)?;
    vm.release_vcpus();
    tracing::info!(
        after_ms = launched.elapsed().as_millis() as u64,
        device_threads = vm.device_thread_count(),
        "vCPUs started"
    );
    let mut event = vm.next_event(None).unwrap_or(VmEvent::Stop);
    if matches!(event, VmEvent::SnapshotPoint) {
        return save_template(&mut vm, launched);
    }
    if matches!(event, VmEvent::Stop) {
        // Give the guest a chance to stop its workloads; a second signal or
        // the timeout ends the VM regardless.
        let timeout = std::time::Duration::from_secs(args.shutdown_timeout);
        eprintln!("cocoon-vmm: asking the guest to shut down (at most {timeout:?})");
        vm.request_guest_shutdown();
        event = match vm.next_event(Some(timeout)) {
            Some(VmEvent::Stop | VmEvent::SnapshotPoint) | None => {
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
        VmEvent::GuestReset | VmEvent::Stop | VmEvent::SnapshotPoint => ExitCode::SUCCESS,
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
