//! cocoon-agent end to end: a host client (the one the shim uses) drives real
//! containers in a real guest (cocoon-vmm, the built kernel and initramfs)
//! through the hybrid vsock socket, with busybox root file systems on the
//! virtio-fs share.

use std::time::{Duration, Instant};

use cocoon_protocol::api::agent::*;
use cocoon_protocol::client::{Agent, AgentCalls, CallError};
use cocoon_protocol::stream::{StreamHeader, StreamKind};
use cocoon_tests::oci;
use cocoon_tests::pattern::{checksum_stream, pattern_checksum};
use cocoon_tests::require_hardware_kvm;
use cocoon_tests::sandbox::Sandbox;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const MEMORY_MIB: u32 = 512;

fn stdio(stdin: bool, terminal: bool) -> Stdio {
    let mut stdio = Stdio::new();
    stdio.stdin = stdin && !terminal;
    stdio.stdout = !terminal;
    stdio.stderr = !terminal;
    stdio.terminal = terminal;
    stdio
}

fn header(container: &str, exec: &str, kind: StreamKind) -> StreamHeader {
    StreamHeader {
        container_id: container.into(),
        exec_id: exec.into(),
        kind,
    }
}

async fn create(
    agent: &Agent,
    sandbox: &Sandbox,
    id: &str,
    spec: &Value,
    stdio: Stdio,
) -> Result<u32, CallError> {
    let spec = serde_json::to_vec(spec).unwrap();
    let rootfs = sandbox.busybox_rootfs(id);
    agent.create_container(id, spec, &rootfs, stdio).await
}

async fn read_all(mut stream: UnixStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.unwrap();
    bytes
}

struct Finished {
    stdout: String,
    stderr: String,
    exit: ProcessExit,
}

/// Creates, starts and waits for a container; returns its output and exit.
async fn run_to_end(agent: &Agent, sandbox: &Sandbox, id: &str, spec: &Value) -> Finished {
    create(agent, sandbox, id, spec, stdio(false, false))
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e}\n{}", sandbox.diagnostics()));
    let stdout = agent
        .open_stream(&header(id, "", StreamKind::Stdout))
        .await
        .unwrap();
    let stderr = agent
        .open_stream(&header(id, "", StreamKind::Stderr))
        .await
        .unwrap();
    let stdout = tokio::spawn(read_all(stdout));
    let stderr = tokio::spawn(read_all(stderr));
    agent.start(id).await.unwrap();
    let exit = agent.wait(id, "").await.unwrap();
    let finished = Finished {
        stdout: String::from_utf8_lossy(&stdout.await.unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.await.unwrap()).into_owned(),
        exit,
    };
    remove(agent, id).await;
    finished
}

async fn remove(agent: &Agent, id: &str) {
    agent.remove_container(id, true).await.unwrap();
}

/// Creates and starts container `id` running `sleep 600`.
async fn start_sleeper(agent: &Agent, sandbox: &Sandbox, id: &str) {
    create(
        agent,
        sandbox,
        id,
        &oci::spec(&["sleep", "600"]),
        stdio(false, false),
    )
    .await
    .unwrap();
    agent.start(id).await.unwrap();
}

fn sh(script: &str) -> Value {
    oci::spec(&["/bin/sh", "-c", script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
async fn containers_run_with_their_output_exit_codes_and_settings() {
    require_hardware_kvm();
    let sandbox = Sandbox::boot(MEMORY_MIB);
    let agent = sandbox.agent().await;

    let health = agent.health().await.unwrap();
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));

    for code in [0, 1, 42] {
        let run = run_to_end(
            &agent,
            &sandbox,
            &format!("exit{code}"),
            &sh(&format!("echo out; echo err >&2; exit {code}")),
        )
        .await;
        assert_eq!(
            (run.stdout.as_str(), run.stderr.as_str()),
            ("out\n", "err\n")
        );
        assert_eq!(run.exit.exit_status, code, "exit code of `exit {code}`");
        assert!(!run.exit.oom_killed);
    }

    let mut settings = sh("echo \"$GREETING|$(pwd)|$(id -u)|$(hostname)|$HOME\"");
    settings["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!("GREETING=hello"));
    settings["process"]["cwd"] = json!("/home/user");
    settings["process"]["user"] = json!({ "uid": 65534, "gid": 65534 });
    let run = run_to_end(&agent, &sandbox, "settings", &settings).await;
    assert_eq!(
        run.stdout, "hello|/home/user|65534|cocoon-test|/nonexistent\n",
        "stderr: {}",
        run.stderr
    );

    // Mounts from the share, seccomp, rlimits, masked and read-only paths,
    // no_new_privileges: what the spec asks for is enforced.
    std::fs::create_dir_all(sandbox.share.join("volume")).unwrap();
    std::fs::write(sandbox.share.join("volume/hello"), "from the share\n").unwrap();
    let mut confined = sh("cat /data/hello; mkdir /tmp/x 2>/dev/null || echo mkdir-denied; ulimit -n; \
                           wc -c < /etc/group; (echo 1 > /proc/sys/vm/drop_caches) 2>/dev/null || echo sys-ro; \
                           grep NoNewPrivs /proc/self/status");
    confined["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind",
        "source": format!("{}/volume", cocoon_tests::sandbox::GUEST_SHARE),
        "options": ["rbind", "ro"]
    }));
    confined["linux"]["maskedPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/etc/group"));
    confined["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }]
    });
    let run = run_to_end(&agent, &sandbox, "confined", &confined).await;
    assert_eq!(
        run.stdout, "from the share\nmkdir-denied\n1024\n0\nsys-ro\nNoNewPrivs:\t1\n",
        "stderr: {}",
        run.stderr
    );

    // Death by signal N is reported as 128 + N. (Without a PID namespace:
    // the init of one ignores signals it has no handler for.)
    let without_pid_namespace = |script: &str| {
        let mut spec = sh(script);
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|ns| ns["type"] != "pid");
        spec
    };
    let run = run_to_end(
        &agent,
        &sandbox,
        "sigterm",
        &without_pid_namespace("kill -TERM $$"),
    )
    .await;
    assert_eq!(run.exit.exit_status, 143, "stderr: {}", run.stderr);

    // A crashing container does not take the agent with it.
    let run = run_to_end(
        &agent,
        &sandbox,
        "crash",
        &without_pid_namespace("kill -SEGV $$"),
    )
    .await;
    assert_eq!(run.exit.exit_status, 139);

    // SIGKILL from outside ends even a namespace init.
    start_sleeper(&agent, &sandbox, "sleeper").await;
    agent.signal("sleeper", "", 9, false).await.unwrap();
    let exit = agent.wait("sleeper", "").await.unwrap();
    assert_eq!(exit.exit_status, 137);
    remove(&agent, "sleeper").await;
    agent.health().await.expect("agent alive after a crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
async fn execs_ttys_stdin_pause_and_stats() {
    require_hardware_kvm();
    let sandbox = Sandbox::boot(MEMORY_MIB);
    let agent = sandbox.agent().await;
    let id = "busy";
    // Counts in a file on the share, so the host sees progress.
    let spec = sh("i=0; while true; do i=$((i+1)); echo $i > /count; usleep 20000; done");
    create(&agent, &sandbox, id, &spec, stdio(false, false))
        .await
        .unwrap();
    agent.start(id).await.unwrap();
    let counter = sandbox.share.join(id).join("rootfs/count");
    let read_count = || {
        std::fs::read_to_string(&counter)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let progressed = |from: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if read_count() > from {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(
        progressed(0).await,
        "the container runs\n{}",
        sandbox.diagnostics()
    );

    let exec = |exec_id: &'static str, args: &[&str], stdin: bool, terminal: bool| {
        let mut process = oci::process(args);
        process["terminal"] = json!(terminal);
        let process = serde_json::to_vec(&process).unwrap();
        agent.exec(id, exec_id, process, stdio(stdin, terminal))
    };

    // Pause stops progress; resume continues it.
    agent.pause(id).await.unwrap();
    let paused_at = read_count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(read_count(), paused_at, "no progress while paused");
    agent.resume(id).await.unwrap();
    assert!(progressed(paused_at).await, "progress after resume");

    let stats = agent.stats(id).await.unwrap();
    assert!(stats.memory.usage > 0, "memory usage: {:?}", stats.memory);
    assert!(stats.cpu.usage_usec > 0, "cpu usage: {:?}", stats.cpu);
    assert!(stats.pids.current >= 1, "pids: {:?}", stats.pids);

    // Exec without a tty.
    exec("hello", &["echo", "hello from exec"], false, false)
        .await
        .unwrap();
    let out = agent
        .open_stream(&header(id, "hello", StreamKind::Stdout))
        .await
        .unwrap();
    assert_eq!(read_all(out).await, b"hello from exec\n");
    let exit = agent.wait(id, "hello").await.unwrap();
    assert_eq!(exit.exit_status, 0);

    // stdin piped to cat; closing it ends cat.
    exec("cat", &["cat"], true, false).await.unwrap();
    let mut input = agent
        .open_stream(&header(id, "cat", StreamKind::Stdin))
        .await
        .unwrap();
    let output = agent
        .open_stream(&header(id, "cat", StreamKind::Stdout))
        .await
        .unwrap();
    let output = tokio::spawn(read_all(output));
    input.write_all(b"through stdin\n").await.unwrap();
    input.shutdown().await.unwrap();
    let exit = agent.wait(id, "cat").await.unwrap();
    assert_eq!(exit.exit_status, 0);
    assert_eq!(output.await.unwrap(), b"through stdin\n");

    // CloseStdin ends a cat whose stream stays open.
    exec("cat2", &["cat"], true, false).await.unwrap();
    let mut input = agent
        .open_stream(&header(id, "cat2", StreamKind::Stdin))
        .await
        .unwrap();
    let output = tokio::spawn(read_all(
        agent
            .open_stream(&header(id, "cat2", StreamKind::Stdout))
            .await
            .unwrap(),
    ));
    input.write_all(b"then close\n").await.unwrap();
    input.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.close_stdin(id, "cat2").await.unwrap();
    let exit = agent.wait(id, "cat2").await.unwrap();
    assert_eq!(exit.exit_status, 0);
    assert_eq!(output.await.unwrap(), b"then close\n");

    // Exec with a tty; a resize is seen by `stty size`.
    exec(
        "tty",
        &["sh", "-c", "read line; stty size; tty"],
        false,
        true,
    )
    .await
    .unwrap();
    agent.resize_tty(id, "tty", 33, 111).await.unwrap();
    let mut tty = agent
        .open_stream(&header(id, "tty", StreamKind::Tty))
        .await
        .unwrap();
    tty.write_all(b"go\n").await.unwrap();
    let exit = agent.wait(id, "tty").await.unwrap();
    assert_eq!(exit.exit_status, 0);
    let text = String::from_utf8_lossy(&read_all(tty).await).into_owned();
    assert!(
        text.contains("33 111"),
        "stty size through the tty: {text:?}"
    );
    assert!(text.contains("/dev/pts/"), "tty name: {text:?}");

    // Processes of the container are listed, the execs by id.
    let listed = agent.list_processes(id).await.unwrap();
    assert!(!listed.is_empty());

    // A missing binary fails at once, with a message that says so.
    let started = Instant::now();
    let error = exec("missing", &["/no/such/binary"], false, false)
        .await
        .expect_err("exec of a missing binary must fail");
    let elapsed = started.elapsed();
    let message = error.to_string();
    assert!(message.contains("/no/such/binary"), "{message}");
    assert!(
        message.contains("not found") || message.contains("No such file"),
        "{message}"
    );
    assert!(elapsed < Duration::from_secs(2), "failing took {elapsed:?}");

    // A malformed request does not hurt the agent.
    let mut raw = cocoon_protocol::hybrid_vsock::connect(
        &sandbox.vsock,
        cocoon_protocol::AGENT_RPC_PORT,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    raw.write_all(b"\x00\x00\x00\x10garbage-garbage-garbage-garbage")
        .await
        .unwrap();
    drop(raw);
    agent.health().await.expect("agent alive after garbage");

    remove(&agent, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
async fn oom_kills_and_large_output_are_reported() {
    require_hardware_kvm();
    let sandbox = Sandbox::boot(MEMORY_MIB);
    let agent = sandbox.agent().await;

    let mut hungry = oci::spec(&["/bin/probe", "alloc", "64"]);
    hungry["linux"]["resources"]["memory"] = json!({ "limit": 32 << 20, "swap": 32 << 20 });
    let run = run_to_end(&agent, &sandbox, "hungry", &hungry).await;
    assert!(
        run.exit.oom_killed,
        "exit {:?}, stdout {:?}",
        run.exit, run.stdout
    );
    assert_eq!(run.exit.exit_status, 137);

    let bytes: u64 = 100 << 20;
    let id = "big";
    create(
        &agent,
        &sandbox,
        id,
        &oci::spec(&["/bin/probe", "pattern", &bytes.to_string()]),
        stdio(false, false),
    )
    .await
    .unwrap();
    let stdout = agent
        .open_stream(&header(id, "", StreamKind::Stdout))
        .await
        .unwrap();
    agent.start(id).await.unwrap();
    let stdout = stdout.into_std().unwrap();
    stdout.set_nonblocking(false).unwrap();
    let (len, checksum) =
        tokio::task::spawn_blocking(move || checksum_stream(&mut &stdout).unwrap())
            .await
            .unwrap();
    assert_eq!(
        (len, checksum),
        (bytes, pattern_checksum(bytes)),
        "100 MiB through stdout"
    );
    let exit = agent.wait(id, "").await.unwrap();
    assert_eq!(exit.exit_status, 0);
    remove(&agent, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
async fn bad_requests_get_clear_errors() {
    require_hardware_kvm();
    let sandbox = Sandbox::boot(MEMORY_MIB);
    let agent = sandbox.agent().await;

    let error = create(
        &agent,
        &sandbox,
        "broken",
        &json!({ "process": "nope" }),
        stdio(false, false),
    )
    .await
    .expect_err("a broken spec is refused");
    assert!(error.to_string().contains("invalid OCI spec"), "{error}");

    let error = agent.start("ghost").await.expect_err("no such container");
    assert!(error.to_string().contains("ghost not found"), "{error}");

    let refused = agent
        .open_stream(&header("ghost", "", StreamKind::Stdout))
        .await;
    assert!(refused.is_err(), "a stream of no process is refused");

    // Nothing of the failed container is left: its id can be used again.
    let run = run_to_end(&agent, &sandbox, "broken", &sh("echo again")).await;
    assert_eq!(run.stdout, "again\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
async fn the_guest_shuts_down_on_request_with_containers_running() {
    require_hardware_kvm();
    // Through the API, and through SIGTERM to the VMM, which the agent hears
    // on its console; both must end the VM well before the VMM's own forced
    // stop.
    for through_api in [true, false] {
        let sandbox = Sandbox::boot(MEMORY_MIB);
        let agent = sandbox.agent().await;
        start_sleeper(&agent, &sandbox, "left").await;
        let asked = Instant::now();
        if through_api {
            agent.shutdown().await.unwrap();
        } else {
            sandbox.terminate();
        }
        let status = sandbox.wait_exit(Duration::from_secs(20)).await;
        let how = if through_api { "Shutdown" } else { "SIGTERM" };
        let diagnostics = sandbox.diagnostics();
        assert!(
            status.is_some_and(|s| s.success()),
            "VMM after {how}: {status:?}\n{diagnostics}"
        );
        assert!(
            !diagnostics.contains("did not shut down"),
            "the guest did not stop by itself:\n{diagnostics}"
        );
        eprintln!("{how} to VMM exit: {:?}", asked.elapsed());
    }
}
