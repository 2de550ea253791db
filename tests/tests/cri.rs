//! Kubernetes' side of Cocoon: containerd's CRI plugin with the `cocoon`
//! runtime handler, driven by crictl and by critest (cri-tools' validation
//! suite), against a private containerd, registry and CNI bridge
//! (`cocoon_tests::cri`). The same scenarios with runc, containerd's default
//! handler, prove the harness itself. Each scenario runs on Debian's
//! containerd 1.6 and, in the test named `..._containerd2`, on containerd 2.x;
//! `..._containerd17` ones run it on containerd 1.7 (all but one in
//! `make conformance`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cocoon_tests::containerd::{text, Version};
use cocoon_tests::cri::{busybox_container, Cri, Registry, BUSYBOX, COCOON_HANDLER};
use cocoon_tests::{poll_until, repo_root, require_hardware_kvm, wait_or_kill};

/// A pod with one busybox container, through every crictl verb a kubelet
/// uses: run the pod, pull, create, start, logs, exec, stop, remove; then
/// nothing of it may be left. `handler` is the RuntimeClass handler (None:
/// containerd's default, runc).
fn pod_lifecycle(version: Version, handler: Option<&str>) {
    require_hardware_kvm();
    let cri = Cri::start_version(version);
    let name = format!("pod-{}", handler.unwrap_or("default"));
    let pod_config = cri.write_json(&name, &cri.pod_config(&name));
    let mut runp = vec!["runp"];
    if let Some(handler) = handler {
        runp.extend(["--runtime", handler]);
    }
    runp.push(&pod_config);
    let started = Instant::now();
    let pod = cri.crictl_ok(&runp);
    eprintln!("runp: {:.1?}", started.elapsed());
    print_mounts("pod sandbox", &cri.crictl_ok(&["inspectp", &pod]));

    cri.crictl_ok(&["pull", BUSYBOX]);
    let container_config = cri.write_json(
        "hello",
        &serde_json::json!({
            "metadata": { "name": "hello" },
            "image": { "image": BUSYBOX },
            "command": ["sh", "-c", "echo hello from cri; exec sleep 600"],
            "log_path": "hello.log",
            "linux": {}
        }),
    );
    let container = cri.crictl_ok(&["create", &pod, &container_config, &pod_config]);
    cri.crictl_ok(&["start", &container]);
    eprintln!("runp + pull + create + start: {:.1?}", started.elapsed());
    print_mounts("container", &cri.crictl_ok(&["inspect", &container]));

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = cri.crictl(&["logs", &container]);
        if text(&logs.stdout).contains("hello from cri") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "crictl logs never showed the greeting: {}{}",
            text(&logs.stdout),
            text(&logs.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let exec = cri.crictl_ok(&["exec", &container, "sh", "-c", "echo exec $((6 * 7))"]);
    assert_eq!(exec, "exec 42");
    let hostname = cri.crictl_ok(&["exec", &container, "hostname"]);
    assert_eq!(hostname, name, "the pod's hostname");

    cri.crictl_ok(&["stop", "--timeout", "5", &container]);
    cri.crictl_ok(&["rm", &container]);
    cri.crictl_ok(&["stopp", &pod]);
    cri.crictl_ok(&["rmp", &pod]);
    let left = cri.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    drop(cri);
    assert_no_bridge_left();
}

/// The mounts of the OCI spec containerd made (`crictl inspect[p]`'s
/// `info.runtimeSpec`): what a runtime is asked to bind into a pod.
fn print_mounts(what: &str, inspect: &str) {
    let Ok(info) = serde_json::from_str::<serde_json::Value>(inspect) else {
        return;
    };
    let mounts = info["info"]["runtimeSpec"]["mounts"].as_array().cloned();
    for mount in mounts.unwrap_or_default() {
        eprintln!(
            "{what} mount: {} <- {} ({}) {}",
            mount["destination"].as_str().unwrap_or("?"),
            mount["source"].as_str().unwrap_or("?"),
            mount["type"].as_str().unwrap_or("?"),
            mount["options"]
        );
    }
}

#[test]
#[ignore = "needs real KVM: the CRI node runs in tests/kvm-host (make kvm-test)"]
fn crictl_pod_with_runc() {
    pod_lifecycle(Version::V1_6, None);
}

/// The harness's proof on 2.x: not a Cocoon check, so not every CI run.
#[test]
#[ignore = "needs real KVM: the CRI node runs in tests/kvm-host (make conformance)"]
fn conformance_crictl_pod_with_runc_containerd2() {
    pod_lifecycle(Version::V2, None);
}

#[test]
#[ignore = "needs real KVM: a Cocoon pod is a microVM (make kvm-test)"]
fn crictl_pod_with_cocoon() {
    pod_lifecycle(Version::V1_6, Some(COCOON_HANDLER));
}

#[test]
#[ignore = "needs real KVM: a Cocoon pod is a microVM (make kvm-test)"]
fn crictl_pod_with_cocoon_containerd2() {
    pod_lifecycle(Version::V2, Some(COCOON_HANDLER));
}

/// containerd 1.7's one scenario in every CI run: its CRI with 1.6's
/// config (docs/kubernetes.md's `version = 2` snippet), short.
#[test]
#[ignore = "needs real KVM: a Cocoon pod is a microVM (make kvm-test)"]
fn crictl_pod_with_cocoon_containerd17() {
    pod_lifecycle(Version::V1_7, Some(COCOON_HANDLER));
}

#[test]
#[ignore = "needs real KVM: the CRI node runs in tests/kvm-host (make conformance)"]
fn conformance_crictl_pod_with_runc_containerd17() {
    pod_lifecycle(Version::V1_7, None);
}

/// Runs `crictl exec` until its output contains `wanted` (or 60 s pass);
/// returns the last output.
fn exec_until(cri: &Cri, container: &str, script: &str, wanted: &str) -> String {
    poll_until(Duration::from_secs(60), wanted, || {
        let out = cri.crictl(&["exec", container, "sh", "-c", script]);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    })
}

/// Two Cocoon pods as a kubelet runs them: in the first, a writer and a
/// reader share a directory volume (as an emptyDir) and the reader sees a
/// configMap-style update; the writer serves HTTP, which the second pod
/// fetches by pod IP; DNS config and hostname reach the containers;
/// `exec -it`, `logs` and `stats` work; `stopp`/`rmp` leave nothing.
#[test]
#[ignore = "needs real KVM: Cocoon pods are microVMs (make kvm-test)"]
fn crictl_pods_share_volumes_serve_http_and_leave_nothing_with_cocoon() {
    pods_share_volumes_serve_http_and_leave_nothing(Version::V1_6);
}

#[test]
#[ignore = "needs real KVM: Cocoon pods are microVMs (make kvm-test)"]
fn crictl_pods_share_volumes_serve_http_and_leave_nothing_with_cocoon_containerd2() {
    pods_share_volumes_serve_http_and_leave_nothing(Version::V2);
}

#[test]
#[ignore = "needs real KVM: Cocoon pods are microVMs (make conformance)"]
fn conformance_crictl_pods_share_volumes_serve_http_and_leave_nothing_with_cocoon_containerd17() {
    pods_share_volumes_serve_http_and_leave_nothing(Version::V1_7);
}

fn pods_share_volumes_serve_http_and_leave_nothing(version: Version) {
    require_hardware_kvm();
    let cri = Cri::start_version(version);
    cri.crictl_ok(&["pull", BUSYBOX]);
    let shared = cri.dir().join("empty-dir");
    let config = cri.dir().join("config-map");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::create_dir_all(&config).unwrap();
    write_config_map(&config, "1", "colour=blue");

    let mut web_pod = cri.pod_config("web");
    web_pod["dns_config"] = serde_json::json!({
        "servers": ["10.96.0.10"], "searches": ["cocoon.test"], "options": ["ndots:2"]
    });
    let web_pod = cri.write_json("web", &web_pod);
    let web = cri.crictl_ok(&["runp", "--runtime", COCOON_HANDLER, &web_pod]);
    let writer = cri.write_json(
        "writer",
        &busybox_container(
            "writer",
            "echo from-the-writer > /shared/note; mkdir -p /www; \
             echo hello-over-the-pod-network > /www/index.html; \
             echo serving; exec httpd -f -p 8080 -h /www",
            serde_json::json!([{ "container_path": "/shared", "host_path": shared }]),
        ),
    );
    let writer = cri.crictl_ok(&["create", &web, &writer, &web_pod]);
    cri.crictl_ok(&["start", &writer]);
    let reader = cri.write_json(
        "reader",
        &busybox_container(
            "reader",
            // 8 MiB in its root file system, which containerd would count
            // in the writable layer under runc.
            "dd if=/dev/zero of=/written bs=1M count=8 2>/dev/null; exec sleep 600",
            serde_json::json!([
                { "container_path": "/shared", "host_path": shared },
                { "container_path": "/config", "host_path": config, "readonly": true }
            ]),
        ),
    );
    let reader = cri.crictl_ok(&["create", &web, &reader, &web_pod]);
    cri.crictl_ok(&["start", &reader]);

    let said = exec_until(&cri, &reader, "cat /shared/note", "from-the-writer");
    assert!(
        said.contains("from-the-writer"),
        "the shared volume: {said}"
    );
    let said = cri.crictl_ok(&[
        "exec",
        &reader,
        "sh",
        "-c",
        "hostname; cat /etc/resolv.conf",
    ]);
    assert!(said.starts_with("web"), "the pod's hostname: {said}");
    assert!(
        said.contains("nameserver 10.96.0.10") && said.contains("search cocoon.test"),
        "the pod's DNS config: {said}"
    );
    let said = cri.crictl_ok(&["exec", &reader, "cat", "/config/settings"]);
    assert_eq!(said, "colour=blue");
    write_config_map(&config, "2", "colour=green");
    let said = exec_until(&cri, &reader, "cat /config/settings", "colour=green");
    assert!(
        said.contains("colour=green"),
        "the configMap update: {said}"
    );

    // A second pod, with limits as a kubelet gives them (the pod's, the sum
    // of its containers', and each container's), fetches the first one's
    // page by pod IP.
    let ip = cri.pod_ip(&web);
    let mut client_pod = cri.pod_config("client");
    client_pod["linux"]["resources"] = limits(1, FETCHER_MIB + HOG_MIB);
    let client_pod = cri.write_json("client", &client_pod);
    let client = cri.crictl_ok(&["runp", "--runtime", COCOON_HANDLER, &client_pod]);
    let mut fetcher = busybox_container("fetcher", "exec sleep 600", serde_json::json!([]));
    fetcher["linux"]["resources"] = limits(1, FETCHER_MIB);
    let fetcher = cri.write_json("fetcher", &fetcher);
    let fetcher = cri.crictl_ok(&["create", &client, &fetcher, &client_pod]);
    cri.crictl_ok(&["start", &fetcher]);
    let mut hog = busybox_container("hog", "exec tail /dev/zero", serde_json::json!([]));
    hog["linux"]["resources"] = limits(1, HOG_MIB);
    let hog = cri.write_json("hog", &hog);
    let hog = cri.crictl_ok(&["create", &client, &hog, &client_pod]);
    cri.crictl_ok(&["start", &hog]);
    let said = exec_until(
        &cri,
        &fetcher,
        // An HTTP GET with nc: Debian's static busybox wget segfaults (even
        // on the build machine, against a local httpd).
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} 8080"),
        "hello-over-the-pod-network",
    );
    assert!(
        said.contains("hello-over-the-pod-network"),
        "pod to pod over HTTP ({ip}): {said}"
    );

    pod_limits_size_the_vm_and_apply_in_the_guest(&cri, &reader, &fetcher, &hog);

    // exec -it, logs and stats, as kubectl uses them.
    let command = format!(
        "{} --runtime-endpoint {} --config /dev/null exec -it {reader} sh -c 'tty; echo in-a-terminal'",
        cri.crictl_path().display(),
        cri.socket()
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    let said = text(&out.stdout);
    assert!(
        said.contains("/dev/pts/") && said.contains("in-a-terminal"),
        "crictl exec -it: {said}{}",
        text(&out.stderr)
    );
    let logs = cri.crictl_ok(&["logs", &writer]);
    assert!(logs.contains("serving"), "crictl logs: {logs}");
    let stats = cri.crictl_ok(&["stats", "-o", "json", &reader]);
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
    let memory = stat(&stats["stats"][0]["memory"]["workingSetBytes"]["value"]);
    assert!(
        memory > 0,
        "crictl stats gives the container's memory: {stats}"
    );
    // The writable layer is on the VM's scratch disk: the file is there for
    // the container, and containerd (which has collected the snapshot's
    // usage several times since, every 10 s) counts none of it, as
    // docs/architecture.md says.
    let written = cri.crictl_ok(&["exec", &reader, "sh", "-c", "wc -c < /written"]);
    assert_eq!(written.trim(), "8388608");
    let layer = &stats["stats"][0]["writableLayer"]["usedBytes"]["value"];
    assert!(
        !layer.is_null() && stat(layer) < 1 << 20,
        "crictl stats' writable layer holds nothing the guest wrote: {stats}"
    );

    for pod in [&web, &client] {
        cri.crictl_ok(&["stopp", pod]);
        cri.crictl_ok(&["rmp", pod]);
    }
    let left = cri.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    cri.containerd.assert_nothing_left();
    assert_eq!(
        std::fs::read_to_string(shared.join("note")).unwrap(),
        "from-the-writer\n",
        "the volume's data stays on the host"
    );
    // Both pods' VMs, network device included, started from a template.
    assert_eq!(
        cri.containerd.sandboxes_from_templates(),
        2,
        "{}",
        cri.containerd.log()
    );
}

/// The client pod's containers' memory limits (MiB): `tail /dev/zero`
/// fills the hog's in a moment.
const FETCHER_MIB: u64 = 160;
const HOG_MIB: u64 = 32;
/// The shim's defaults (`memory_mib`, `pod_headroom_mib`; shim/src/config.rs).
const DEFAULT_MEMORY_MIB: u64 = 512;
const DEFAULT_POD_HEADROOM_MIB: u64 = 128;

/// CRI's `LinuxContainerResources` (a pod's or a container's) for `cpus`
/// CPUs and `mib` MiB.
fn limits(cpus: u64, mib: u64) -> serde_json::Value {
    serde_json::json!({
        "cpu_period": 100_000,
        "cpu_quota": cpus * 100_000,
        "memory_limit_in_bytes": mib << 20
    })
}

/// A number in `crictl stats -o json` (protobuf JSON gives uint64 as a string).
fn stat(value: &serde_json::Value) -> u64 {
    value
        .as_str()
        .and_then(|v| v.parse().ok())
        .or_else(|| value.as_u64())
        .unwrap_or(0)
}

/// The client pod (limits: 1 CPU, FETCHER_MIB + HOG_MIB) against the web pod
/// (none), seen from inside: the unlimited pod's VM has the configured size
/// (1 vCPU, `memory_mib` 512), the limited one the configured headroom
/// (`vcpus` 1, `pod_headroom_mib` 128) plus its limits (docs/kubernetes.md,
/// Sizing; vCPUs at most the host's); `crictl stats` gives its CPU and memory; `crictl update` sets the
/// container's cgroup in the guest; the hog, over its limit, is `OOMKilled`.
fn pod_limits_size_the_vm_and_apply_in_the_guest(
    cri: &Cri,
    unlimited: &str,
    fetcher: &str,
    hog: &str,
) {
    let started = Instant::now();
    let mem_total_kib = |container: &str| -> u64 {
        let said = cri.crictl_ok(&["exec", container, "grep", "MemTotal", "/proc/meminfo"]);
        said.split_whitespace()
            .nth(1)
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("MemTotal in /proc/meminfo: {said}"))
    };
    let nproc = |container: &str| -> u64 {
        let said = cri.crictl_ok(&["exec", container, "nproc"]);
        said.parse()
            .unwrap_or_else(|_| panic!("nproc in {container}: {said}"))
    };
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    assert_eq!(
        nproc(unlimited),
        1,
        "a pod without limits: the base's 1 vCPU"
    );
    assert_eq!(
        nproc(fetcher),
        2.min(host_cpus),
        "a pod with a 1-CPU limit: 1 + 1 vCPUs, at most the host's {host_cpus}"
    );
    // MemTotal is the VM's memory less what the guest kernel reserves
    // (its image, the page structs: about 1.6 %), so the difference of
    // the two pods is that of their VMs, less that share of it.
    let unsized_kib = mem_total_kib(unlimited);
    let limited_kib = mem_total_kib(fetcher);
    let limit_mib = FETCHER_MIB + HOG_MIB;
    let expected_mib = DEFAULT_MEMORY_MIB - (DEFAULT_POD_HEADROOM_MIB + limit_mib);
    let smaller_mib = unsized_kib.saturating_sub(limited_kib) >> 10;
    eprintln!(
        "MemTotal: {unsized_kib} kiB without limits, {limited_kib} kiB with {limit_mib} MiB \
         of limits ({smaller_mib} MiB less)"
    );
    assert!(
        (expected_mib * 90 / 100..=expected_mib).contains(&smaller_mib),
        "the limited pod's VM ({limited_kib} kiB) is {smaller_mib} MiB smaller than the \
         unsized one ({unsized_kib} kiB); {DEFAULT_POD_HEADROOM_MIB} MiB of headroom plus \
         {limit_mib} MiB of limits should be {expected_mib} MiB less than {DEFAULT_MEMORY_MIB}"
    );

    let memory_max =
        |container: &str| cri.crictl_ok(&["exec", container, "cat", "/sys/fs/cgroup/memory.max"]);
    assert_eq!(
        memory_max(fetcher),
        (FETCHER_MIB << 20).to_string(),
        "the container's memory limit in its cgroup in the guest"
    );
    let updated = (FETCHER_MIB - 32) << 20;
    cri.crictl_ok(&["update", "--memory", &updated.to_string(), fetcher]);
    assert_eq!(
        memory_max(fetcher),
        updated.to_string(),
        "crictl update (UpdateContainerResources) in the guest"
    );

    let stats = cri.crictl_ok(&["stats", "-o", "json", fetcher]);
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
    let cpu = stat(&stats["stats"][0]["cpu"]["usageCoreNanoSeconds"]["value"]);
    let memory = stat(&stats["stats"][0]["memory"]["workingSetBytes"]["value"]);
    assert!(
        cpu > 0 && memory > 0,
        "crictl stats gives the container's CPU and memory: {stats}"
    );

    let said = poll_until(Duration::from_secs(60), "CONTAINER_EXITED", || {
        cri.crictl_ok(&["inspect", "-o", "json", hog])
    });
    let status: serde_json::Value = serde_json::from_str(&said).expect("inspect JSON");
    assert_eq!(
        status["status"]["reason"], "OOMKilled",
        "a container over its memory limit: {}",
        status["status"]
    );
    eprintln!(
        "limits, stats, update and OOM checked in {:.1?}",
        started.elapsed()
    );
}

/// Writes a configMap volume as kubelet does: the data in `..<generation>`,
/// `..data` swapped to it by a rename, the key a symlink through `..data`.
fn write_config_map(dir: &Path, generation: &str, settings: &str) {
    let data = format!("..{generation}");
    std::fs::create_dir(dir.join(&data)).unwrap();
    std::fs::write(dir.join(&data).join("settings"), settings).unwrap();
    if dir.join("settings").symlink_metadata().is_err() {
        std::os::unix::fs::symlink("..data/settings", dir.join("settings")).unwrap();
    }
    std::os::unix::fs::symlink(&data, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
}

/// tests/cri/critest-skip.txt as one `--ginkgo.skip` regex. Each line is
/// `REGEX # reason`; a skip without its reason is refused.
fn skip_regex() -> String {
    let path = repo_root().join("tests/cri/critest-skip.txt");
    let list = std::fs::read_to_string(&path).expect("tests/cri/critest-skip.txt");
    let mut regexes = Vec::new();
    for line in list.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (regex, reason) = line
            .split_once(" # ")
            .unwrap_or_else(|| panic!("skip without a `# reason`: {line}"));
        assert!(!reason.trim().is_empty(), "skip without a reason: {line}");
        regexes.push(format!("({})", regex.trim()));
    }
    regexes.join("|")
}

/// The registry half of the harness, without KVM: an image built offline,
/// pushed with skopeo, tagged under a name of another repository.
#[test]
fn registry_serves_pushed_and_tagged_images() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let registry = Registry::start(&dir.path().join("registry"));
    let archive = dir.path().join("busybox.tar");
    let built = Command::new(repo_root().join("tests/images/oci-image.sh"))
        .arg(&archive)
        .arg(BUSYBOX)
        .status()
        .expect("oci-image.sh runs");
    assert!(built.success());
    registry.push(&archive, BUSYBOX);
    let other = "gcr.io/k8s-staging-cri-tools/test-image-tags:2";
    assert!(registry.manifest(other).is_none(), "{other} before tagging");
    registry.tag(BUSYBOX, other);
    let pushed = registry.manifest(BUSYBOX).expect("the pushed image");
    assert_eq!(registry.manifest(other), Some(pushed.clone()));
    assert_eq!(pushed["layers"].as_array().map(Vec::len), Some(1));
}

#[test]
fn critest_skip_list_is_well_formed() {
    let regex = skip_regex();
    assert!(regex.contains("HostNetwork"), "{regex}");
}

/// ginkgo's closing count, e.g. `FAIL! -- 80 Passed | 3 Failed | 0 Pending | 40 Skipped`.
fn summary(output: &str) -> Option<(u32, u32, u32)> {
    let line = output
        .lines()
        .rev()
        .find(|line| line.contains(" Passed | ") && line.contains(" Failed | "))?;
    let count = |word: &str| -> Option<u32> {
        let before = line.split(&format!(" {word}")).next()?;
        before
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((count("Passed")?, count("Failed")?, count("Skipped")?))
}

/// Runs critest against a fresh CRI node with `handler`, the committed skip
/// list, and `focus` (a ginkgo regex; empty: every spec). Prints critest's
/// output and its counts; fails if any spec that ran failed.
fn critest(version: Version, handler: &str, focus: &str) {
    require_hardware_kvm();
    let cri = Cri::start_version(version);
    let report = cri.dir().join("critest-report");
    std::fs::create_dir_all(&report).expect("report dir");
    let log_path = cri.dir().join("critest.log");
    let mut command = Command::new(cri.critest_path());
    command
        .arg(format!("--runtime-endpoint={}", cri.socket()))
        .arg(format!("--image-endpoint={}", cri.socket()))
        .arg(format!("--runtime-handler={handler}"))
        .arg(format!("--ginkgo.skip={}", skip_regex()))
        .arg("--ginkgo.no-color")
        .arg("--ginkgo.timeout=4h")
        .arg(format!("--report-dir={}", report.display()));
    if !focus.is_empty() {
        command.arg(format!("--ginkgo.focus={focus}"));
    }
    let log = std::fs::File::create(&log_path).expect("critest log");
    let started = Instant::now();
    let mut child = command
        .current_dir(cri.dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("critest runs");
    let status = wait_or_kill(&mut child, Duration::from_secs(4 * 3600));
    let elapsed = started.elapsed();
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!("{output}");
    let counts = summary(&output);
    println!(
        "critest --runtime-handler={handler} on containerd {version:?}: {} in {:.0?} ({status:?})",
        counts.map_or(
            "no summary".to_string(),
            |(passed, failed, skipped)| format!(
                "{passed} passed, {failed} failed, {skipped} skipped"
            )
        ),
        elapsed
    );
    let (_, failed, _) = counts.unwrap_or_else(|| {
        panic!(
            "critest printed no summary ({status:?}); containerd log:\n{}",
            cri.containerd.log()
        )
    });
    assert_eq!(failed, 0, "critest: {failed} specs failed (see above)");
    assert!(
        matches!(status, Ok(s) if s.success()),
        "critest: {status:?}"
    );
    let left = cri.leftovers();
    assert!(left.is_empty(), "critest left behind: {left:?}");
    drop(cri);
    assert_no_bridge_left();
}

/// What every CI run checks (`make kvm-test`): the specs of one pod and its
/// containers' basic life, images, runtime info and idempotence, exec and
/// logs; the whole suite is `make conformance`.
const CI_SUBSET: &str = "Runtime info|PodSandbox runtime should support basic|\
Container runtime should support basic operations|Image Manager|Idempotence|\
Streaming runtime should support streaming interfaces runtime should support exec|\
Container runtime should support log";

#[test]
#[ignore = "needs real KVM: critest's pods are Cocoon microVMs (make kvm-test)"]
fn critest_subset_cocoon() {
    critest(Version::V1_6, COCOON_HANDLER, CI_SUBSET);
}

#[test]
#[ignore = "needs real KVM: critest's pods are Cocoon microVMs (make kvm-test)"]
fn critest_subset_cocoon_containerd2() {
    critest(Version::V2, COCOON_HANDLER, CI_SUBSET);
}

#[test]
#[ignore = "needs real KVM: critest's pods are Cocoon microVMs (make conformance)"]
fn conformance_critest_subset_cocoon_containerd17() {
    critest(Version::V1_7, COCOON_HANDLER, CI_SUBSET);
}

/// The whole suite, or the specs `COCOON_CRITEST_FOCUS` (a ginkgo regex)
/// names: a partial run while working on a few.
fn conformance_focus() -> String {
    std::env::var("COCOON_CRITEST_FOCUS").unwrap_or_default()
}

#[test]
#[ignore = "needs real KVM: the CRI node runs in tests/kvm-host (make conformance)"]
fn conformance_critest_runc() {
    critest(Version::V1_6, "runc", &conformance_focus());
}

#[test]
#[ignore = "needs real KVM: critest's pods are Cocoon microVMs (make conformance)"]
fn conformance_critest_cocoon() {
    critest(Version::V1_6, COCOON_HANDLER, &conformance_focus());
}

#[test]
#[ignore = "needs real KVM: critest's pods are Cocoon microVMs (make conformance)"]
fn conformance_critest_cocoon_containerd2() {
    critest(Version::V2, COCOON_HANDLER, &conformance_focus());
}

/// No `cocoon-cri*` bridge outlives its node.
fn assert_no_bridge_left() {
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip (iproute2)");
    let left: Vec<String> = text(&links.stdout)
        .lines()
        .filter(|line| line.contains(": cocoon-cri"))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "bridges left: {left:?}");
    assert!(!Path::new("/var/run/netns").join("cocoon-cri").exists());
}
