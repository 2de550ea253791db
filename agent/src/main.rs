//! cocoon-agent: PID 1 of every Cocoon guest.
//!
//! It sets the guest up (file systems, cgroups, loopback), serves the agent
//! API (ttrpc on vsock port 1024) and the process stdio streams (port 1025),
//! runs containers with libcontainer, reaps every process that ends, and
//! ends the VM when asked (Shutdown call, or the VMM's request on the
//! console). In a template boot it reports the snapshot point as soon as it
//! serves (`template.rs`). The same binary is also the libcontainer helper
//! (`helper.rs`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cocoon_protocol::{AGENT_RPC_PORT, AGENT_STDIO_PORT};
use nix::sys::reboot::{reboot, RebootMode};
use tokio::sync::Notify;

use cocoon_agent::containers::Containers;
use cocoon_agent::events::Events;
use cocoon_agent::host_only::HostOnlyListener;
use cocoon_agent::identity::IdentityGate;
use cocoon_agent::reaper::Reaper;
use cocoon_agent::service::AgentService;
use cocoon_agent::stdio::StreamBroker;
use cocoon_agent::{console, helper, init, template, VERSION};

/// How long containers get to stop when the guest shuts down.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--version") => {
            println!("cocoon-agent {VERSION}");
            return;
        }
        Some(helper::HELPER_ARG) => std::process::exit(helper::main(&args[2..])),
        _ => {}
    }
    if std::process::id() != 1 {
        eprintln!(
            "cocoon-agent: refusing to run as PID {}: it is the init of a Cocoon guest \
             and shuts the machine down when it is done (try --version)",
            std::process::id()
        );
        std::process::exit(2);
    }
    if let Err(error) = run() {
        eprintln!("cocoon-agent: {error:#}");
    }
    shut_down();
}

fn run() -> anyhow::Result<()> {
    init::leave_initramfs()?;
    init::mount_file_systems()?;
    init::start_logging();
    println!("{}", cocoon_protocol::version_banner(VERSION));
    println!(
        "cocoon-agent: guest kernel reached /init after {:.3} s",
        init::uptime_ms() as f64 / 1000.0
    );
    if let Err(error) = init::enable_cgroup_controllers() {
        tracing::warn!("{error:#}");
    }
    if let Err(error) = init::report_smaller_free_blocks() {
        tracing::warn!("{error:#}");
    }
    init::set_hostname("cocoon")?;
    init::bring_up_loopback()?;
    quiet_console_echo();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(256 * 1024)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let reaper = Reaper::start().context("watching SIGCHLD")?;
    let broker = StreamBroker::default();
    let events = Events::default();
    let containers = Containers::new(reaper, broker.clone(), events.clone());
    let shutdown = Arc::new(Notify::new());
    console::watch_for_shutdown_request(shutdown.clone());

    // Both ports are bound before the snapshot point of a template boot, so
    // every restored VM has them.
    let stdio_listener =
        HostOnlyListener::bind(AGENT_STDIO_PORT).context("listening on the stdio stream port")?;
    tokio::spawn(async move {
        if let Err(error) = broker.serve(stdio_listener).await {
            tracing::error!("stdio stream port {AGENT_STDIO_PORT}: {error}");
        }
    });
    let template_boot = template::is_template_boot();
    let service = AgentService {
        containers: containers.clone(),
        events,
        shutdown: shutdown.clone(),
        identity: IdentityGate::new(template_boot),
    };
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(ttrpc::r#async::transport::Listener::new(
            HostOnlyListener::bind(AGENT_RPC_PORT)
                .context("listening on the agent port")?
                .into_stream(),
        ))
        .register_service(cocoon_protocol::api::agent_ttrpc::create_agent(Arc::new(
            service,
        )));
    server.start().await.context("starting the ttrpc server")?;
    if template_boot {
        // Nothing else before this point: what runs after it runs once in
        // every VM restored from the template (template.rs, also for what
        // must never happen before it).
        match template::report_snapshot_point() {
            Ok(()) => tracing::info!("template: past the snapshot point, waiting for SetIdentity"),
            Err(error) => tracing::error!(
                "template boot: cannot report the snapshot point ({error}); \
                 the VM will not be snapshotted"
            ),
        }
    }
    tracing::info!("serving the agent API on vsock port {AGENT_RPC_PORT}");

    shutdown.notified().await;
    tracing::info!("shutting down");
    let stopping = async {
        for id in containers.ids() {
            if let Err(error) = containers.remove(&id, true).await {
                tracing::warn!("stopping {id}: {error}");
            }
        }
    };
    if tokio::time::timeout(STOP_TIMEOUT, stopping).await.is_err() {
        tracing::warn!("containers did not stop within {STOP_TIMEOUT:?}");
    }
    // Let the Shutdown call's reply leave before the VM goes away.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// The console echoes input by default, which would print the VMM's
/// shutdown request back on the console.
fn quiet_console_echo() {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    if let Ok(mut settings) = tcgetattr(&stdin) {
        settings.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &settings);
    }
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
