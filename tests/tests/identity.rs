//! SetIdentity and template boots end to end: a real guest (cocoon-vmm, the
//! built kernel and initramfs) given its identity through the host client.
//!
//! cocoon-vmm does not snapshot these guests (it is not asked to make a
//! template), so a template boot goes on past its snapshot point as one
//! restored VM would: the guest must refuse workloads until SetIdentity.

use std::time::{Duration, SystemTime};

use cocoon_protocol::api::agent::{IdentityRequest, SetupNetworkRequest, Stdio};
use cocoon_protocol::client::{host_identity, Agent, AgentCalls, CallError, GuestRootfs};
use cocoon_protocol::stream::{StreamHeader, StreamKind};
use cocoon_tests::oci;
use cocoon_tests::require_hardware_kvm;
use cocoon_tests::sandbox::Sandbox;
use tokio::io::AsyncReadExt;

const MEMORY_MIB: u32 = 512;

/// How far from the host's clock a test sets the guest's, so a guest clock
/// that was not set cannot pass.
const CLOCK_OFFSET: Duration = Duration::from_secs(10 * 24 * 3600);

/// How far the guest's `date` may be from what was set: a container start
/// under emulation.
const CLOCK_TOLERANCE: Duration = Duration::from_secs(120);

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
}

/// Runs `script` in a busybox container `id`; returns its stdout.
async fn run(agent: &Agent, sandbox: &Sandbox, id: &str, script: &str) -> String {
    let spec = serde_json::to_vec(&oci::spec(&["/bin/sh", "-c", script])).unwrap();
    let mut stdio = Stdio::new();
    stdio.stdout = true;
    agent
        .create_container(id, spec, &sandbox.busybox_rootfs(id), stdio)
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e}\n{}", sandbox.diagnostics()));
    let mut stdout = agent
        .open_stream(&StreamHeader {
            container_id: id.into(),
            exec_id: String::new(),
            kind: StreamKind::Stdout,
        })
        .await
        .unwrap();
    agent.start(id).await.unwrap();
    let mut output = String::new();
    stdout.read_to_string(&mut output).await.unwrap();
    let exit = agent.wait(id, "").await.unwrap();
    assert_eq!(exit.exit_status, 0, "{id}: {output}");
    agent.remove_container(id, true).await.unwrap();
    output
}

/// The guest's wall clock, read by `date` in a container.
async fn guest_clock(agent: &Agent, sandbox: &Sandbox, id: &str) -> Duration {
    let output = run(agent, sandbox, id, "date +%s").await;
    Duration::from_secs(
        output
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("date +%s printed {output:?}")),
    )
}

fn assert_near(got: Duration, wanted: Duration) {
    let distance = got.abs_diff(wanted);
    assert!(
        distance <= CLOCK_TOLERANCE,
        "guest clock {got:?}, wanted {wanted:?} (off by {distance:?})"
    );
}

fn assert_refused(result: Result<impl std::fmt::Debug, CallError>, code: ttrpc::Code, words: &str) {
    match result {
        Err(CallError::Refused { code: got, message }) => {
            assert_eq!(got, code, "{message}");
            assert!(message.contains(words), "{message:?} lacks {words:?}");
        }
        other => panic!("not refused with {code:?}: {other:?}"),
    }
}

/// A valid request that sets the guest's clock `CLOCK_OFFSET` ahead.
fn identity_ahead() -> IdentityRequest {
    let mut request = host_identity().unwrap();
    request.realtime_unix_nanos += CLOCK_OFFSET.as_nanos() as u64;
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
async fn set_identity_sets_the_clock_and_refuses_bad_requests() {
    require_hardware_kvm();
    let sandbox = Sandbox::boot(MEMORY_MIB);
    let agent = sandbox.agent().await;

    let mut short = host_identity().unwrap();
    short.entropy.truncate(8);
    assert_refused(
        agent.set_identity(&short).await,
        ttrpc::Code::INVALID_ARGUMENT,
        "8 bytes of entropy; 32 to 512 wanted",
    );
    let mut unset_clock = host_identity().unwrap();
    unset_clock.realtime_unix_nanos = 0;
    assert_refused(
        agent.set_identity(&unset_clock).await,
        ttrpc::Code::INVALID_ARGUMENT,
        "not a time between 2020 and 2200",
    );

    agent.set_identity(&identity_ahead()).await.unwrap();
    assert_near(
        guest_clock(&agent, &sandbox, "ahead").await,
        unix_now() + CLOCK_OFFSET,
    );
    agent.set_identity(&host_identity().unwrap()).await.unwrap();
    assert_near(guest_clock(&agent, &sandbox, "now").await, unix_now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
async fn a_template_boot_runs_nothing_before_set_identity() {
    require_hardware_kvm();
    let sandbox = Sandbox::boot_template(MEMORY_MIB);
    let agent = sandbox.connect().await;
    agent.health().await.unwrap();

    let not_yet = "restored from a template and not given its identity yet: call SetIdentity first";
    let precondition = ttrpc::Code::FAILED_PRECONDITION;
    assert_refused(agent.mount_share().await, precondition, not_yet);
    assert_refused(
        agent.setup_network(SetupNetworkRequest::new()).await,
        precondition,
        not_yet,
    );
    let spec = serde_json::to_vec(&oci::spec(&["true"])).unwrap();
    assert_refused(
        agent
            .create_container(
                "early",
                spec,
                &GuestRootfs::writable("/run/cocoon/share/early/rootfs"),
                Stdio::new(),
            )
            .await,
        precondition,
        not_yet,
    );
    assert_refused(agent.start("early").await, precondition, not_yet);
    let process = serde_json::to_vec(&oci::process(&["true"])).unwrap();
    assert_refused(
        agent.exec("early", "exec", process, Stdio::new()).await,
        precondition,
        not_yet,
    );

    // A refused SetIdentity does not let workloads in.
    let mut short = host_identity().unwrap();
    short.entropy.truncate(31);
    assert_refused(
        agent.set_identity(&short).await,
        ttrpc::Code::INVALID_ARGUMENT,
        "31 bytes of entropy",
    );
    assert_refused(agent.mount_share().await, precondition, not_yet);

    agent.set_identity(&identity_ahead()).await.unwrap();
    agent
        .mount_share()
        .await
        .unwrap_or_else(|e| panic!("mount after SetIdentity: {e}\n{}", sandbox.diagnostics()));
    assert_near(
        guest_clock(&agent, &sandbox, "clock").await,
        unix_now() + CLOCK_OFFSET,
    );
    // The boot id exists (made on this first read, after the reseed).
    let boot_id = run(
        &agent,
        &sandbox,
        "boot-id",
        "cat /proc/sys/kernel/random/boot_id",
    )
    .await;
    assert_eq!(boot_id.trim().len(), 36, "{boot_id:?}");

    // The snapshot point was reported (ioperm and the port write worked; this
    // VMM ignores the port) and the guest went on.
    let diagnostics = sandbox.diagnostics();
    assert!(
        !diagnostics.contains("cannot report the snapshot point"),
        "{diagnostics}"
    );
}
