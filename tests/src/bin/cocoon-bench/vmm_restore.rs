//! cocoon-vmm started from a template (`--restore-from`) against a fresh
//! boot of the same VM: spawn → the agent answers a health call over vsock,
//! median of N interleaved runs each (after one warm-up each). Both VMs are
//! the shim's sandbox command line (`VmmCommand::sandbox`: 512 MiB, 1 vCPU,
//! share, vsock, balloon, jail), the template made once from it with
//! `--snapshot-to`; a restored VM also gets its identity (SetIdentity), as
//! the shim gives it before anything else, timed separately.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cocoon_protocol::client::{host_identity, Agent};
use cocoon_tests::{run_vmm, tail, wait_or_kill};
use cocoon_vmm_command::{SandboxVm, VmmCommand};

use crate::median_ms;
use crate::summary::Summary;

const MEMORY_MIB: u64 = 512;
const VCPUS: u32 = 1;
/// How long a guest may take to answer in the emulated host VM.
const READY_DEADLINE: Duration = Duration::from_secs(120);

pub fn measure(vmm: &Path, kernel: &Path, initramfs: &Path, runs: usize, summary: &mut Summary) {
    let scratch = tempfile::tempdir().expect("temporary directory");
    let template = scratch.path().join("template");
    std::fs::create_dir(&template).expect("template directory");
    let maker = VmDir::new(scratch.path(), "maker");
    let made = run_vmm(
        vmm,
        maker.command(kernel, initramfs).snapshot_to(&template),
        Duration::from_secs(300),
    );
    assert!(
        matches!(made.status, Ok(s) if s.success()),
        "template boot: {:?}\nstderr:\n{}\nconsole:\n{}",
        made.status,
        tail(&made.stderr, 20),
        tail(&made.console, 20)
    );
    let memory = std::fs::metadata(template.join("memory")).expect("the template's memory file");
    let allocated_mib = (memory.blocks() * 512) as f64 / (1 << 20) as f64;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut booted = Vec::new();
    let mut restored = Vec::new();
    let mut identified = Vec::new();
    // Run 0 warms up each (page cache, TCG's translations of cocoon-vmm).
    for run in 0..=runs {
        let dir = VmDir::new(scratch.path(), &format!("boot{run}"));
        let (boot_ready, _) =
            dir.time_to_ready(&runtime, vmm, dir.command(kernel, initramfs), false);
        let dir = VmDir::new(scratch.path(), &format!("restore{run}"));
        let (restore_ready, restore_identified) = dir.time_to_ready(
            &runtime,
            vmm,
            dir.command(Path::new("/nonexistent"), Path::new("/nonexistent"))
                .restore_from(&template),
            true,
        );
        if run > 0 {
            booted.push(boot_ready);
            restored.push(restore_ready);
            identified.push(restore_identified);
        }
    }
    let booted_ms = median_ms(&mut booted);
    let restored_ms = median_ms(&mut restored);
    let identified_ms = median_ms(&mut identified);
    println!(
        "cocoon-vmm spawn → agent answers (health over vsock), median of {runs} interleaved \
         (the sandbox VM: {MEMORY_MIB} MiB, {VCPUS} vCPU, inputs on tmpfs):"
    );
    println!(
        "  template boot and save (once)     {:8.1} ms   (memory file: {allocated_mib:.1} MiB allocated of {MEMORY_MIB})",
        made.elapsed.as_secs_f64() * 1000.0
    );
    println!("  fresh boot → agent ready          {booted_ms:8.1} ms");
    println!("  restore → agent ready             {restored_ms:8.1} ms");
    println!("  restore → SetIdentity done        {identified_ms:8.1} ms");
    println!(
        "  ratio restore/boot                {:8.2}",
        restored_ms / booted_ms
    );
    summary.compare(
        "cocoon-vmm → agent ready: restore (vs boot)",
        restored_ms,
        booted_ms,
        "ms",
        "-",
    );
}

/// One VM's files: shares, jail, vsock socket, console, stderr.
struct VmDir {
    share: PathBuf,
    images: PathBuf,
    jail: PathBuf,
    vsock: PathBuf,
    console: PathBuf,
    stderr: PathBuf,
}

impl VmDir {
    fn new(scratch: &Path, name: &str) -> Self {
        let dir = scratch.join(name);
        let vm = VmDir {
            share: dir.join("share"),
            images: dir.join("images"),
            jail: dir.join("jail"),
            vsock: dir.join("vsock.sock"),
            console: dir.join("console.log"),
            stderr: dir.join("stderr.log"),
        };
        for path in [&vm.share, &vm.images, &vm.jail] {
            std::fs::create_dir_all(path).expect("VM directory");
        }
        vm
    }

    /// The shim's command line for a sandbox without a network.
    fn command(&self, kernel: &Path, initramfs: &Path) -> VmmCommand {
        self.command_with(kernel, initramfs, false)
    }

    fn command_with(&self, kernel: &Path, initramfs: &Path, guest_debug: bool) -> VmmCommand {
        VmmCommand::sandbox(&SandboxVm {
            kernel,
            initramfs,
            vcpus: VCPUS,
            memory_mib: MEMORY_MIB,
            share: &self.share,
            images: &self.images,
            vsock_uds: &self.vsock,
            console: &self.console,
            guest_debug,
            console_limit_bytes: 1 << 20,
            jail: &self.jail,
            cgroup: None,
            net: None,
            disk_fd: None,
        })
    }

    /// Spawns the VMM, times until its agent answers a health call (and,
    /// with `identify`, until SetIdentity is done), then kills it.
    fn time_to_ready(
        &self,
        runtime: &tokio::runtime::Runtime,
        vmm: &Path,
        command: VmmCommand,
        identify: bool,
    ) -> (Duration, Duration) {
        let started = Instant::now();
        let mut child = command
            .command(vmm)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.stderr).expect("stderr file"))
            .spawn()
            .expect("cocoon-vmm starts");
        let timed = runtime.block_on(async {
            let agent = Agent::connect(&self.vsock, READY_DEADLINE)
                .await
                .map_err(|e| e.to_string())?;
            let ready = started.elapsed();
            if identify {
                let identity = host_identity().map_err(|e| e.to_string())?;
                agent
                    .set_identity(&identity)
                    .await
                    .map_err(|e| format!("SetIdentity: {e}"))?;
            }
            Ok::<_, String>((ready, started.elapsed()))
        });
        let _ = child.kill();
        self.reap(&mut child);
        timed.unwrap_or_else(|error| {
            panic!(
                "agent not ready: {error}\nstderr:\n{}\nconsole:\n{}",
                tail(
                    &std::fs::read_to_string(&self.stderr).unwrap_or_default(),
                    20
                ),
                tail(
                    &std::fs::read_to_string(&self.console).unwrap_or_default(),
                    20
                )
            )
        })
    }

    fn reap(&self, child: &mut Child) {
        if let Err(error) = wait_or_kill(child, Duration::from_secs(60)) {
            panic!("cocoon-vmm did not exit: {error}");
        }
    }
}

/// `--restore-trace`: where a restore's time to agent ready goes. A template
/// with the debug console, then six restores one after the other, each with
/// every vsock handshake attempt to the agent's port timed, and the VMM's
/// debug log and the guest's console.
pub fn trace(vmm: &Path, kernel: &Path, initramfs: &Path) {
    let scratch = tempfile::tempdir().expect("temporary directory");
    let template = scratch.path().join("template");
    std::fs::create_dir(&template).expect("template directory");
    let maker = VmDir::new(scratch.path(), "maker");
    let made = run_vmm(
        vmm,
        maker
            .command_with(kernel, initramfs, true)
            .snapshot_to(&template),
        Duration::from_secs(300),
    );
    println!(
        "template boot: {:?} in {:?}\n--- its console (tail) ---\n{}",
        made.status,
        made.elapsed,
        tail(&made.console, 15)
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    for run in 0..6 {
        let name = format!("restore{run}");
        let dir = VmDir::new(scratch.path(), &name);
        let started = Instant::now();
        let mut child = dir
            .command_with(Path::new("/nonexistent"), Path::new("/nonexistent"), true)
            .restore_from(&template)
            .command(vmm)
            .env("COCOON_VMM_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&dir.stderr).expect("stderr file"))
            .spawn()
            .expect("cocoon-vmm starts");
        println!("{name}:");
        runtime.block_on(async {
            while started.elapsed() < Duration::from_secs(30) {
                let attempt = Instant::now();
                let result = cocoon_protocol::hybrid_vsock::connect(
                    &dir.vsock,
                    cocoon_protocol::AGENT_RPC_PORT,
                    Duration::from_secs(5),
                )
                .await;
                println!(
                    "  {:7.1} ms: handshake {} after {:.1} ms",
                    started.elapsed().as_secs_f64() * 1000.0,
                    match &result {
                        Ok(_) => "OK".to_string(),
                        Err(e) => e.to_string(),
                    },
                    attempt.elapsed().as_secs_f64() * 1000.0
                );
                if result.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let agent = Agent::connect(&dir.vsock, Duration::from_secs(30)).await;
            println!(
                "  {:7.1} ms: Agent::connect (handshake + health) {}",
                started.elapsed().as_secs_f64() * 1000.0,
                if agent.is_ok() { "OK" } else { "failed" }
            );
        });
        let _ = child.kill();
        dir.reap(&mut child);
        println!(
            "--- stderr ---\n{}\n--- console ---\n{}",
            tail(
                &std::fs::read_to_string(&dir.stderr).unwrap_or_default(),
                15
            ),
            tail(
                &std::fs::read_to_string(&dir.console).unwrap_or_default(),
                30
            )
        );
    }
}
