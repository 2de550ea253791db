//! cocoon-agent: PID 1 of every Cocoon guest.
//!
//! At this stage the agent only proves the guest pipeline end to end: it mounts
//! /proc, announces itself on the console and restarts the machine, which every
//! Cocoon VMM treats as "the guest has shut down".

use anyhow::Context;
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() {
    if std::env::args().skip(1).any(|arg| arg == "--version") {
        println!("cocoon-agent {VERSION}");
        return;
    }
    if std::process::id() != 1 {
        eprintln!(
            "cocoon-agent: refusing to run as PID {}: it is the init of a Cocoon guest \
             and shuts the machine down when it is done (try --version)",
            std::process::id()
        );
        std::process::exit(2);
    }
    if let Err(error) = init() {
        eprintln!("cocoon-agent: {error:#}");
    }
    shut_down();
}

fn init() -> anyhow::Result<()> {
    std::fs::create_dir_all("/proc").context("creating /proc")?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context("mounting /proc")?;
    println!("{}", cocoon_protocol::version_banner(VERSION));
    // How long the kernel took to reach us: the figure boot work is judged by.
    if let Ok(uptime) = std::fs::read_to_string("/proc/uptime") {
        let seconds = uptime.split_whitespace().next().unwrap_or("?");
        println!("cocoon-agent: guest kernel reached /init after {seconds} s");
    }
    Ok(())
}

/// Ends the VM. A restart rather than a power-off: a microVM has no ACPI to
/// power off through, while a reset (keyboard controller or triple fault) ends
/// every VMM we run under (cocoon-vmm always, QEMU with -no-reboot).
/// PID 1 must never exit, so if the call fails we park forever.
fn shut_down() -> ! {
    nix::unistd::sync();
    let Err(error) = reboot(RebootMode::RB_AUTOBOOT);
    eprintln!("cocoon-agent: reboot failed: {error}");
    loop {
        std::thread::park();
    }
}
