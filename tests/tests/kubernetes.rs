//! Cocoon on a Kubernetes node: a one-node cluster (etcd, kube-apiserver, a
//! kubelet on containerd 2.x's CRI; `cocoon_tests::kubernetes`) runs a pod
//! with `runtimeClassName: cocoon` beside a runc pod, as a user would write
//! them, and everything is checked through kubectl.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cocoon_tests::cri::BUSYBOX;
use cocoon_tests::kubernetes::{Cluster, NODE};
use cocoon_tests::require_hardware_kvm;
use serde_json::{json, Value};

/// A pod on this node: `spec` plus the node's name, no service account
/// token (no controller manager makes one), a short grace period.
fn pod(name: &str, mut spec: Value) -> Value {
    spec["nodeName"] = json!(NODE);
    spec["automountServiceAccountToken"] = json!(false);
    spec["terminationGracePeriodSeconds"] = json!(5);
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name }, "spec": spec })
}

/// A busybox container running `script`, which ends on SIGTERM (PID 1
/// ignores it otherwise, and the pod's deletion would wait for SIGKILL).
fn busybox(name: &str, script: &str) -> Value {
    json!({
        "name": name,
        "image": BUSYBOX,
        "command": ["sh", "-c", format!("trap 'exit 0' TERM; {script} & wait")],
    })
}

/// The Cocoon pod's containers' memory limits (MiB).
const WRITER_MIB: u64 = 64;
const READER_MIB: u64 = 32;
/// What a pod's VM may use beyond its containers' limits: the RuntimeClass's
/// `overhead.podFixed.memory` (deploy/kubernetes/runtimeclass.yaml).
const OVERHEAD: &str = "160Mi";
const OVERHEAD_MIB: u64 = 160;
/// What the VMM process and the host kernel's memory for the VM take beside
/// the guest's RAM, which the overhead must leave room for.
const VMM_ALLOWANCE_MIB: u64 = 32;

/// The Cocoon pod: a writer and a reader sharing an emptyDir, both with
/// memory limits; the writer also reads a configMap and its own name, node
/// and IP from the downward API, and is Ready once it wrote the shared file
/// (an exec probe).
fn cocoon_pod() -> Value {
    let mut writer = busybox(
        "writer",
        "echo pod=$POD_NAME node=$NODE_NAME ip=$POD_IP; echo greeting=$(cat /config/greeting); \
         echo from-the-writer > /shared/note; sleep 3600",
    );
    writer["env"] = json!([
        { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
        { "name": "NODE_NAME", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
        { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }
    ]);
    writer["volumeMounts"] = json!([
        { "name": "shared", "mountPath": "/shared" },
        { "name": "config", "mountPath": "/config", "readOnly": true }
    ]);
    writer["readinessProbe"] = json!({
        "exec": { "command": ["cat", "/shared/note"] },
        "periodSeconds": 2,
        // Under emulation an exec into the VM takes seconds.
        "timeoutSeconds": 30
    });
    let mut reader = busybox(
        "reader",
        "until [ -s /shared/note ]; do sleep 0.2; done; cat /shared/note; sleep 3600",
    );
    reader["volumeMounts"] = json!([{ "name": "shared", "mountPath": "/shared" }]);
    writer["resources"] = json!({ "limits": { "memory": format!("{WRITER_MIB}Mi") } });
    reader["resources"] = json!({ "limits": { "memory": format!("{READER_MIB}Mi") } });
    pod(
        "cocoon-pod",
        json!({
            "runtimeClassName": "cocoon",
            "containers": [writer, reader],
            "volumes": [
                { "name": "shared", "emptyDir": {} },
                { "name": "config", "configMap": { "name": "cocoon-config" } }
            ]
        }),
    )
}

/// The cgroup v2 directory of the pod that host process `pid` runs in: the
/// `pod<uid>` one kubelet made (cgroupfs driver), above the VMM's own.
fn pod_cgroup(pid: u32) -> PathBuf {
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let path = membership
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 path for {pid}: {membership}"));
    Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .ancestors()
        .find(|dir| {
            dir.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("pod"))
        })
        .unwrap_or_else(|| panic!("process {pid} is in no pod's cgroup: {path}"))
        .to_path_buf()
}

/// A cgroup's `file`, trimmed.
fn cgroup_file(cgroup: &Path, file: &str) -> String {
    std::fs::read_to_string(cgroup.join(file))
        .unwrap_or_else(|e| panic!("{}/{file}: {e}", cgroup.display()))
        .trim()
        .to_string()
}

/// The guest RAM (MiB) the shim gave the VMM (`--memory-mib`).
fn vm_memory_mib(vmm: u32) -> u64 {
    let cmdline = std::fs::read(format!("/proc/{vmm}/cmdline")).expect("VMM command line");
    let args: Vec<String> = cmdline
        .split(|byte| *byte == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    args.iter()
        .position(|arg| arg == "--memory-mib")
        .and_then(|at| args.get(at + 1))
        .and_then(|mib| mib.parse().ok())
        .unwrap_or_else(|| panic!("no --memory-mib in the VMM's arguments: {args:?}"))
}

/// The pod's cgroup holds the VMM and is limited to the containers' limits
/// plus the RuntimeClass's overhead, which leaves the VMM room for its whole
/// guest: a guest using all its RAM cannot get the VMM OOM-killed on the
/// host. A container then fills most of its limit, and nothing in the pod's
/// cgroup was OOM-killed.
fn the_pods_cgroup_holds_its_vm(cluster: &Cluster, vmm: u32) {
    let overhead = cluster.kubectl_ok(&[
        "get",
        "pod",
        "cocoon-pod",
        "-o",
        "jsonpath={.spec.overhead.memory}",
    ]);
    assert_eq!(
        overhead, OVERHEAD,
        "the RuntimeClass's overhead, set on the pod at admission"
    );
    let pod = pod_cgroup(vmm);
    let memory_max: u64 = cgroup_file(&pod, "memory.max")
        .parse()
        .unwrap_or_else(|_| panic!("{}/memory.max is not a number", pod.display()));
    assert_eq!(
        memory_max,
        (WRITER_MIB + READER_MIB + OVERHEAD_MIB) << 20,
        "kubelet limits the pod's cgroup ({}) to its containers' limits plus the overhead",
        pod.display()
    );
    let vm_mib = vm_memory_mib(vmm);
    assert!(
        memory_max >= (vm_mib + VMM_ALLOWANCE_MIB) << 20,
        "the pod's cgroup ({memory_max} bytes) holds the VM's {vm_mib} MiB and \
         {VMM_ALLOWANCE_MIB} MiB for the VMM: raise the RuntimeClass's overhead"
    );
    let fill_mib = WRITER_MIB * 3 / 4;
    cluster.kubectl_ok(&[
        "exec",
        "cocoon-pod",
        "-c",
        "writer",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        &format!("bs={fill_mib}M"),
        "count=1",
    ]);
    let events = cgroup_file(&pod, "memory.events");
    assert!(
        events.lines().any(|line| line == "oom_kill 0"),
        "nothing in the pod's cgroup was OOM-killed: {events}"
    );
    let peak_mib = cgroup_file(&pod, "memory.peak").parse::<u64>().unwrap_or(0) >> 20;
    eprintln!(
        "kubernetes: the pod's cgroup: limit {} MiB, VM {vm_mib} MiB, peak {peak_mib} MiB \
         after a container touched {fill_mib} MiB",
        memory_max >> 20
    );
}

/// The host's boot id: a runc container shares the host's kernel and sees
/// it; a microVM has a kernel, and a boot id, of its own.
fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot_id")
        .trim()
        .to_string()
}

#[test]
#[ignore = "needs real KVM: Cocoon pods are microVMs (make kvm-test)"]
fn kubernetes_runs_a_cocoon_pod_beside_a_runc_pod() {
    require_hardware_kvm();
    let cluster = Cluster::start();
    let started = Instant::now();
    let config_map = json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "cocoon-config" },
        "data": { "greeting": "hello-from-a-configmap" }
    });
    let runc_pod = pod(
        "runc-pod",
        json!({ "containers": [busybox("main", "echo runc-pod; sleep 3600")] }),
    );
    // What a VM cannot give is refused, naming the option.
    let refused = [
        (
            "hostnet-pod",
            "hostNetwork",
            "host networking is not supported",
        ),
        ("hostpid-pod", "hostPID", "host's PID namespace"),
        ("hostipc-pod", "hostIPC", "host's IPC namespace"),
    ];
    let mut objects = vec![config_map, cocoon_pod(), runc_pod];
    for (name, option, _) in refused {
        let mut spec = json!({
            "runtimeClassName": "cocoon",
            "containers": [busybox("main", "sleep 3600")],
        });
        spec[option] = json!(true);
        objects.push(pod(name, spec));
    }
    cluster.apply(
        "objects",
        &json!({ "apiVersion": "v1", "kind": "List", "items": objects }),
    );

    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/cocoon-pod",
        "pod/runc-pod",
        "--timeout=600s",
    ]);
    eprintln!("kubernetes: both pods Ready in {:.1?}", started.elapsed());

    let pod_ip =
        cluster.kubectl_ok(&["get", "pod", "cocoon-pod", "-o", "jsonpath={.status.podIP}"]);
    assert!(
        pod_ip.starts_with(cluster.cri.subnet.trim_end_matches("0/24")),
        "the pod's IP {pod_ip} is in the node's pod subnet {}",
        cluster.cri.subnet
    );
    let logs = cluster.kubectl_ok(&["logs", "cocoon-pod", "-c", "writer"]);
    assert!(
        logs.contains(&format!("pod=cocoon-pod node={NODE} ip={pod_ip}"))
            && logs.contains("greeting=hello-from-a-configmap"),
        "the downward API and the configMap, in kubectl logs: {logs}"
    );
    let logs = cluster.kubectl_ok(&["logs", "cocoon-pod", "-c", "reader"]);
    assert_eq!(
        logs, "from-the-writer",
        "the emptyDir, shared by the pod's containers"
    );
    let said = cluster.kubectl_ok(&[
        "exec",
        "cocoon-pod",
        "-c",
        "reader",
        "--",
        "sh",
        "-c",
        "echo exec-in-$(hostname); cat /shared/note",
    ]);
    assert_eq!(said, "exec-in-cocoon-pod\nfrom-the-writer", "kubectl exec");
    let guest_boot = cluster.kubectl_ok(&[
        "exec",
        "cocoon-pod",
        "-c",
        "writer",
        "--",
        "cat",
        "/proc/sys/kernel/random/boot_id",
    ]);
    let runc_boot = cluster.kubectl_ok(&[
        "exec",
        "runc-pod",
        "--",
        "cat",
        "/proc/sys/kernel/random/boot_id",
    ]);
    assert_eq!(
        runc_boot,
        host_boot_id(),
        "the runc pod shares the host's kernel"
    );
    assert_ne!(
        guest_boot,
        host_boot_id(),
        "the cocoon pod runs its own kernel"
    );
    let sandbox =
        cluster
            .cri
            .crictl_ok(&["pods", "--name", "cocoon-pod", "--state", "ready", "-q"]);
    let vmm = cluster.cri.vmm_pid(&sandbox);
    eprintln!("kubernetes: cocoon-pod is sandbox {sandbox}, cocoon-vmm pid {vmm}");
    the_pods_cgroup_holds_its_vm(&cluster, vmm);
    let logs = cluster.kubectl_ok(&["logs", "runc-pod"]);
    assert_eq!(logs, "runc-pod");

    for (name, option, message) in refused {
        cluster.wait_until(
            std::time::Duration::from_secs(300),
            &format!("the refusal of {option} in {name}'s events"),
            |c| {
                let events = c.kubectl(&[
                    "get",
                    "events",
                    "--field-selector",
                    &format!("involvedObject.name={name},reason=FailedCreatePodSandBox"),
                    "-o",
                    "jsonpath={.items[*].message}",
                ]);
                let events = String::from_utf8_lossy(&events.stdout);
                events.contains(message) && events.contains(option)
            },
        );
    }

    let started = Instant::now();
    cluster.kubectl_ok(&["delete", "pods", "--all", "--timeout=300s"]);
    eprintln!("kubernetes: pods deleted in {:.1?}", started.elapsed());
    // The VMs, their network namespaces (and the taps in them) and mounts
    // go with the pods. The stopped sandboxes' records stay until the
    // kubelet's garbage collection (every minute), as with runc.
    cluster.cri.containerd.assert_nothing_left();
    let left: Vec<String> = cluster
        .cri
        .leftovers()
        .into_iter()
        .filter(|left| !left.starts_with("pods "))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
