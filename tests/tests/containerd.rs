//! containerd-shim-cocoon-v1 end to end: a private containerd (config and
//! state of its own) runs containers with `--runtime io.containerd.cocoon.v1`,
//! each in its own cocoon-vmm microVM, from an image built offline. Every
//! scenario is one body (`<name>_on`) run by three tests: `<name>` on Debian's
//! containerd 1.6, `<name>_containerd2` on the containerd 2.x `make deps`
//! builds, `conformance_<name>_containerd17` on its 1.7. On 2.x, the
//! scenarios that check the shim more than containerd are
//! `conformance_<name>_containerd2`: `make conformance`, not every CI run;
//! 1.7, between the two, runs all of them there (docs/testing.md,
//! containerd 2.x, containerd 1.7).

use std::path::Path;
use std::time::{Duration, Instant};

use cocoon_tests::containerd::{ok, text, Containerd, Version, BUSYBOX, RUNTIME};
use cocoon_tests::require_hardware_kvm;

/// `ctr run --rm EXTRA... --runtime cocoon IMAGE ID ARGS...`.
fn run(containerd: &Containerd, id: &str, extra: &[&str], args: &[&str]) -> std::process::Output {
    let flags: Vec<&str> = ["--rm"].iter().chain(extra).copied().collect();
    containerd.run(RUNTIME, &flags, id, args)
}

/// `ctr run -d --runtime cocoon IMAGE ID ARGS...`, which must succeed.
fn run_detached(containerd: &Containerd, id: &str, args: &[&str]) {
    ok(containerd.run(RUNTIME, &["-d"], id, args), "ctr run -d");
}

/// Waits until `ctr task ls` shows task `id` as `status`.
fn wait_for_status(containerd: &Containerd, id: &str, status: &str) {
    containerd.wait_for_status(id, status);
}

/// Runs `ctr ARGS` with a terminal of its own (script(1)), as `ctr -t`
/// needs; returns what it printed.
fn ctr_in_terminal(containerd: &Containerd, args: &str) -> String {
    let command = format!(
        "{} --address {} {args}",
        containerd.ctr_path().display(),
        containerd.socket.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    let output = text(&out.stdout);
    assert!(
        out.status.success(),
        "ctr {args}: {output}{}",
        text(&out.stderr)
    );
    output
}

/// Nothing of a sandbox may outlive it.
fn assert_nothing_left(containerd: &Containerd) {
    containerd.assert_nothing_left();
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn ctr_run_gives_output_and_exit_codes_from_a_microvm() {
    ctr_run_gives_output_and_exit_codes_from_a_microvm_on(Version::V1_6);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn ctr_run_gives_output_and_exit_codes_from_a_microvm_containerd2() {
    ctr_run_gives_output_and_exit_codes_from_a_microvm_on(Version::V2);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_ctr_run_gives_output_and_exit_codes_from_a_microvm_containerd17() {
    ctr_run_gives_output_and_exit_codes_from_a_microvm_on(Version::V1_7);
}

fn ctr_run_gives_output_and_exit_codes_from_a_microvm_on(version: Version) {
    require_hardware_kvm();
    let containerd = Containerd::start_version(version);
    containerd.import_busybox();

    // containerd 2.x asks the shim for its runtime info (`shim -info`)
    // before every task it creates, and for this.
    if version == Version::V2 {
        let info = ok(
            containerd.ctr(&["plugins", "inspect-runtime", "--runtime", RUNTIME]),
            "ctr plugins inspect-runtime",
        );
        assert!(info.contains(&format!("\"Name\": \"{RUNTIME}\"")), "{info}");
    }

    let out = run(
        &containerd,
        "hello",
        &[],
        &["sh", "-c", "echo out; echo err >&2; exit 42"],
    );
    assert_eq!(
        (text(&out.stdout), text(&out.stderr), out.status.code()),
        ("out\n".into(), "err\n".into(), Some(42)),
        "containerd log:\n{}",
        containerd.log()
    );
    assert_nothing_left(&containerd);

    let host_kernel = text(
        &std::process::Command::new("uname")
            .arg("-r")
            .output()
            .unwrap()
            .stdout,
    );
    let out = run(&containerd, "uname", &[], &["uname", "-r"]);
    assert!(
        out.status.success(),
        "uname: {}\n{}",
        text(&out.stderr),
        containerd.log()
    );
    let guest_kernel = text(&out.stdout);
    assert_ne!(
        guest_kernel, host_kernel,
        "uname -r must show the guest kernel"
    );
    assert!(
        guest_kernel.starts_with("6.1."),
        "guest kernel {guest_kernel:?}"
    );

    let out = run(
        &containerd,
        "settings",
        &["--env", "GREETING=hi", "--cwd", "/home/user"],
        &["sh", "-c", "echo $GREETING $(pwd)"],
    );
    assert_eq!(
        text(&out.stdout),
        "hi /home/user\n",
        "stderr: {}",
        text(&out.stderr)
    );

    for code in [0, 1] {
        let out = run(
            &containerd,
            &format!("exit{code}"),
            &[],
            &["sh", "-c", &format!("exit {code}")],
        );
        assert_eq!(out.status.code(), Some(code));
    }
    assert_nothing_left(&containerd);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_missing_command_fails_fast_and_cleanly() {
    a_missing_command_fails_fast_and_cleanly_on(Version::V1_6);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_a_missing_command_fails_fast_and_cleanly_containerd2() {
    a_missing_command_fails_fast_and_cleanly_on(Version::V2);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_a_missing_command_fails_fast_and_cleanly_containerd17() {
    a_missing_command_fails_fast_and_cleanly_on(Version::V1_7);
}

fn a_missing_command_fails_fast_and_cleanly_on(version: Version) {
    require_hardware_kvm();
    let containerd = Containerd::start_version(version);
    containerd.import_busybox();
    let started = Instant::now();
    let out = run(&containerd, "missing", &[], &["/no/such/command"]);
    let elapsed = started.elapsed();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not found") || stderr.contains("No such file"),
        "{stderr}"
    );
    eprintln!("missing command failed after {elapsed:?}: {stderr}");
    assert_nothing_left(&containerd);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn detached_tasks_exec_pause_metrics_kill_and_leave_nothing() {
    detached_tasks_exec_pause_metrics_kill_and_leave_nothing_on(Version::V1_6, 20);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn detached_tasks_exec_pause_metrics_kill_and_leave_nothing_containerd2() {
    // The leak check's 20 cycles are the shim's, whatever the containerd:
    // 3 show kill and delete through 2.x (each cycle boots a VM).
    detached_tasks_exec_pause_metrics_kill_and_leave_nothing_on(Version::V2, 3);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_detached_tasks_exec_pause_metrics_kill_and_leave_nothing_containerd17() {
    // 3 cycles, as on 2.x: the leak check is the shim's.
    detached_tasks_exec_pause_metrics_kill_and_leave_nothing_on(Version::V1_7, 3);
}

/// `cycles`: how many start/SIGKILL/delete cycles end it.
fn detached_tasks_exec_pause_metrics_kill_and_leave_nothing_on(version: Version, cycles: usize) {
    require_hardware_kvm();
    let containerd = Containerd::start_version(version);
    containerd.import_busybox();
    let ctr = |args: &[&str]| containerd.ctr(args);

    run_detached(
        &containerd,
        "bg",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 1; done",
        ],
    );

    let exec = ok(
        ctr(&[
            "task",
            "exec",
            "--exec-id",
            "x",
            "bg",
            "sh",
            "-c",
            "echo from exec",
        ]),
        "ctr task exec",
    );
    assert_eq!(exec, "from exec\n");
    let ps = ok(ctr(&["task", "ps", "bg"]), "ctr task ps");
    assert!(ps.lines().count() >= 2, "ctr task ps: {ps}");
    ok(ctr(&["task", "pause", "bg"]), "ctr task pause");
    let listed = ok(ctr(&["task", "ls"]), "ctr task ls");
    assert!(listed.contains("PAUSED"), "{listed}");
    ok(ctr(&["task", "resume", "bg"]), "ctr task resume");
    let metrics = ok(ctr(&["task", "metrics", "bg"]), "ctr task metrics");
    assert!(
        metrics.contains("memory.usage_in_bytes") || metrics.contains("memory"),
        "{metrics}"
    );

    // SIGTERM ends it (the script traps TERM: a namespace's init ignores
    // signals it has no handler for, as with runc).
    ok(ctr(&["task", "kill", "-s", "TERM", "bg"]), "ctr task kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok(ctr(&["task", "ls"]), "ctr task ls").contains("STOPPED") {
        assert!(Instant::now() < deadline, "SIGTERM did not end the task");
        std::thread::sleep(Duration::from_millis(100));
    }
    containerd.delete("bg");
    assert_nothing_left(&containerd);

    // SIGKILL: 137; and many cycles leave nothing behind.
    for cycle in 0..cycles {
        let id = format!("cycle{cycle}");
        run_detached(&containerd, &id, &["sleep", "600"]);
        containerd.kill_and_delete(&id);
    }
    assert_nothing_left(&containerd);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_missing_kernel_is_named_in_the_error() {
    a_missing_kernel_is_named_in_the_error_on(Version::V1_6);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_a_missing_kernel_is_named_in_the_error_containerd2() {
    a_missing_kernel_is_named_in_the_error_on(Version::V2);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_a_missing_kernel_is_named_in_the_error_containerd17() {
    a_missing_kernel_is_named_in_the_error_on(Version::V1_7);
}

fn a_missing_kernel_is_named_in_the_error_on(version: Version) {
    require_hardware_kvm();
    let containerd = Containerd::start_with_kernel(version, Path::new("/no/such/vmlinux"));
    containerd.import_busybox();
    let started = Instant::now();
    let out = run(&containerd, "nokernel", &[], &["true"]);
    let elapsed = started.elapsed();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/no/such/vmlinux"),
        "{}",
        text(&out.stderr)
    );
    eprintln!("missing kernel reported after {elapsed:?}");
    assert_nothing_left(&containerd);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_dead_vmm_stops_its_tasks_and_leaves_nothing() {
    a_dead_vmm_stops_its_tasks_and_leaves_nothing_on(Version::V1_6);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_a_dead_vmm_stops_its_tasks_and_leaves_nothing_containerd2() {
    a_dead_vmm_stops_its_tasks_and_leaves_nothing_on(Version::V2);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_a_dead_vmm_stops_its_tasks_and_leaves_nothing_containerd17() {
    a_dead_vmm_stops_its_tasks_and_leaves_nothing_on(Version::V1_7);
}

fn a_dead_vmm_stops_its_tasks_and_leaves_nothing_on(version: Version) {
    require_hardware_kvm();
    let containerd = Containerd::start_version(version);
    containerd.import_busybox();
    let ctr = |args: &[&str]| containerd.ctr(args);
    run_detached(&containerd, "victim", &["sleep", "600"]);
    let pids = std::process::Command::new("pgrep")
        .args(["-f", "cocoon-vmm"])
        .output()
        .unwrap();
    let pid = text(&pids.stdout).trim().to_owned();
    assert!(
        !pid.is_empty() && !pid.contains('\n'),
        "one cocoon-vmm expected: {pid:?}"
    );
    let killed = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    while !ok(ctr(&["task", "ls"]), "ctr task ls").contains("STOPPED") {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the task outlived its VM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "task stopped {:?} after its VMM was killed",
        killed.elapsed()
    );
    let said = containerd.delete("victim");
    assert!(
        said.contains("137"),
        "a task whose VM died exits with 128 + SIGKILL: {said}"
    );
    assert_nothing_left(&containerd);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn ctr_run_with_a_tty() {
    ctr_run_with_a_tty_on(Version::V1_6);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn ctr_run_with_a_tty_containerd2() {
    ctr_run_with_a_tty_on(Version::V2);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_ctr_run_with_a_tty_containerd17() {
    ctr_run_with_a_tty_on(Version::V1_7);
}

fn ctr_run_with_a_tty_on(version: Version) {
    require_hardware_kvm();
    let containerd = Containerd::start_version(version);
    containerd.import_busybox();
    let output = ctr_in_terminal(
        &containerd,
        &format!("run --rm -t --runtime {RUNTIME} --snapshotter native {BUSYBOX} tty sh -c 'tty; stty size'"),
    );
    assert!(
        output.contains("/dev/pts/"),
        "the container has a terminal: {output:?}"
    );

    // An exec with a terminal into a running task.
    run_detached(&containerd, "host", &["sleep", "600"]);
    let output = ctr_in_terminal(&containerd, "task exec -t --exec-id t host sh -c 'tty'");
    assert!(
        output.contains("/dev/pts/"),
        "the exec has a terminal: {output:?}"
    );
    containerd.kill_and_delete("host");
    assert_nothing_left(&containerd);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn ctr_run_killed_with_sigkill_exits_137() {
    ctr_run_killed_with_sigkill_exits_137_on(Version::V1_6);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_ctr_run_killed_with_sigkill_exits_137_containerd2() {
    ctr_run_killed_with_sigkill_exits_137_on(Version::V2);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_ctr_run_killed_with_sigkill_exits_137_containerd17() {
    ctr_run_killed_with_sigkill_exits_137_on(Version::V1_7);
}

fn ctr_run_killed_with_sigkill_exits_137_on(version: Version) {
    require_hardware_kvm();
    let containerd = Containerd::start_version(version);
    containerd.import_busybox();
    let mut running = containerd
        .ctr_command()
        .args([
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--snapshotter",
            "native",
        ])
        .args([BUSYBOX, "victim", "sleep", "600"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ctr runs");
    wait_for_status(&containerd, "victim", "RUNNING");
    ok(
        containerd.ctr(&["task", "kill", "-s", "KILL", "victim"]),
        "ctr task kill -s KILL",
    );
    let status = cocoon_tests::wait_or_kill(&mut running, Duration::from_secs(60))
        .expect("ctr run ends once its task is killed");
    assert_eq!(status.code(), Some(137), "{}", containerd.log());
    assert_nothing_left(&containerd);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn ctr_run_with_a_user_log_uris_and_a_runtime_config() {
    ctr_run_with_a_user_log_uris_and_a_runtime_config_on(Version::V1_6);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn ctr_run_with_a_user_log_uris_and_a_runtime_config_containerd2() {
    ctr_run_with_a_user_log_uris_and_a_runtime_config_on(Version::V2);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_ctr_run_with_a_user_log_uris_and_a_runtime_config_containerd17() {
    ctr_run_with_a_user_log_uris_and_a_runtime_config_on(Version::V1_7);
}

fn ctr_run_with_a_user_log_uris_and_a_runtime_config_on(version: Version) {
    require_hardware_kvm();
    let containerd = Containerd::start_version(version);
    containerd.import_busybox();
    let dir = containerd.dir();

    // --user: ctr 1.6 has no flag for it, but takes a whole spec (--config)
    // whose process runs as nobody, on a root file system of its own.
    let rootfs = dir.join("user-rootfs");
    cocoon_tests::sandbox::busybox_rootfs(&rootfs);
    let mut spec = containerd.spec_on_rootfs(
        &rootfs,
        &["sh", "-c", "id -u; id -g; grep MemTotal /proc/meminfo"],
    );
    spec["process"]["user"] = serde_json::json!({ "uid": 65534, "gid": 65534 });
    let out = containerd.run_spec(&["--rm"], &spec, "user");
    let said = text(&out.stdout);
    assert!(
        said.starts_with("65534\n65534\n"),
        "uid and gid from the spec: {said}{}",
        text(&out.stderr)
    );
    let default_kib = mem_total_kib(&said);

    // file:// log: stdout and stderr both go to the file.
    let log = dir.join("file.log");
    let uri = format!("file://{}", log.display());
    let out = run(
        &containerd,
        "filelog",
        &["--log-uri", &uri],
        &["sh", "-c", "echo to-out; echo to-err >&2"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("to-out\n") && logged.contains("to-err\n"),
        "{logged:?}"
    );

    // binary:// log driver: stdout on fd 3, stderr on fd 4, kept apart.
    let driver = dir.join("log-driver");
    std::fs::write(
        &driver,
        "#!/bin/sh\nexec 5>&-\ncat <&3 >\"$1.out\" & cat <&4 >\"$1.err\"; wait\n\
         echo \"$CONTAINER_NAMESPACE $CONTAINER_ID\" >\"$1.who\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&driver, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let base = dir.join("driven");
    let uri = format!("binary://{}?{}", driver.display(), base.display());
    let out = run(
        &containerd,
        "binlog",
        &["--log-uri", &uri],
        &["sh", "-c", "echo to-out; echo to-err >&2"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let read = |suffix: &str| {
        std::fs::read_to_string(format!("{}.{suffix}", base.display())).unwrap_or_default()
    };
    // The driver finishes after the task; its files may lag ctr a little.
    let deadline = Instant::now() + Duration::from_secs(15);
    while read("who").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        (read("out"), read("err"), read("who")),
        (
            "to-out\n".into(),
            "to-err\n".into(),
            "default binlog\n".into()
        )
    );

    // --runtime-config-path: containerd hands the shim another config,
    // here one with more guest memory.
    let config = containerd.write_cocoon_config("cocoon-768", "memory_mib = 768\n");
    let out = run(
        &containerd,
        "bigger",
        &["--runtime-config-path", config.to_str().unwrap()],
        &[
            "sh",
            "-c",
            "grep MemTotal /proc/meminfo; ls /sys/bus/virtio/drivers/virtio_balloon",
        ],
    );
    let said = text(&out.stdout);
    // The guest's balloon driver took the VMM's free page reporting device.
    assert!(said.contains("virtio"), "no virtio_balloon device: {said}");
    let bigger_kib = mem_total_kib(&said);
    assert!(
        bigger_kib > default_kib + 100 * 1024,
        "memory_mib = 768 from the runtime options: MemTotal {bigger_kib} kB vs {default_kib} kB \
         by default; {}",
        text(&out.stderr)
    );
    assert_nothing_left(&containerd);
}

/// The kB figure of a `MemTotal:` line in `text`.
fn mem_total_kib(text: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {text:?}"))
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_crashed_shim_is_cleaned_up_by_shim_delete() {
    a_crashed_shim_is_cleaned_up_by_shim_delete_on(Version::V1_6);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_crashed_shim_is_cleaned_up_by_shim_delete_containerd2() {
    a_crashed_shim_is_cleaned_up_by_shim_delete_on(Version::V2);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_a_crashed_shim_is_cleaned_up_by_shim_delete_containerd17() {
    a_crashed_shim_is_cleaned_up_by_shim_delete_on(Version::V1_7);
}

fn a_crashed_shim_is_cleaned_up_by_shim_delete_on(version: Version) {
    require_hardware_kvm();
    let containerd = Containerd::start_version(version);
    containerd.import_busybox();
    run_detached(&containerd, "orphan", &["sleep", "600"]);
    // containerd sees its shim gone and runs `containerd-shim-cocoon-v1
    // delete`, which must take the VM, the mounts and the state with it.
    containerd.crash_shim_and_delete("orphan");
    assert_nothing_left(&containerd);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_vmm_killed_by_its_seccomp_filter_stops_its_tasks_and_leaves_nothing() {
    a_vmm_killed_by_its_seccomp_filter_stops_its_tasks_and_leaves_nothing_on(Version::V1_6);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_a_vmm_killed_by_its_seccomp_filter_stops_its_tasks_and_leaves_nothing_containerd2() {
    a_vmm_killed_by_its_seccomp_filter_stops_its_tasks_and_leaves_nothing_on(Version::V2);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_a_vmm_killed_by_its_seccomp_filter_stops_its_tasks_and_leaves_nothing_containerd17()
{
    a_vmm_killed_by_its_seccomp_filter_stops_its_tasks_and_leaves_nothing_on(Version::V1_7);
}

fn a_vmm_killed_by_its_seccomp_filter_stops_its_tasks_and_leaves_nothing_on(version: Version) {
    require_hardware_kvm();
    // The debug cocoon-vmm has the test hook: SIGUSR1 makes vCPU 0 call a
    // syscall its filter forbids. `cargo test --workspace` builds it.
    let debug_vmm = cocoon_tests::repo_root().join("target/debug/cocoon-vmm");
    assert!(debug_vmm.is_file(), "{} is missing", debug_vmm.display());
    let bin = tempfile::tempdir().unwrap();
    for (name, target) in [
        (
            "containerd-shim-cocoon-v1",
            cocoon_tests::release_dir().join("containerd-shim-cocoon-v1"),
        ),
        ("cocoon-vmm", debug_vmm),
    ] {
        std::os::unix::fs::symlink(target, bin.path().join(name)).unwrap();
    }
    let containerd = Containerd::start_from(
        version,
        bin.path(),
        &cocoon_tests::build_output("vmlinux"),
        &cocoon_tests::build_output("initramfs.img"),
    );
    containerd.import_busybox();
    run_detached(&containerd, "victim", &["sleep", "600"]);
    let sandbox = containerd.cocoon_state.join("default/victim");
    let pid = std::fs::read_to_string(sandbox.join("vmm.pid")).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-USR1", pid.trim()])
        .status()
        .unwrap()
        .success());
    wait_for_status(&containerd, "victim", "STOPPED");
    let vmm_log = std::fs::read_to_string(sandbox.join("vmm.log")).unwrap_or_default();
    assert!(
        vmm_log.contains("forbidden syscall"),
        "the VMM did not die of the test hook:\n{vmm_log}"
    );
    let said = containerd.delete("victim");
    assert!(
        said.contains("137"),
        "a task whose VM died exits with 128 + SIGKILL: {said}"
    );
    assert_nothing_left(&containerd);
}
