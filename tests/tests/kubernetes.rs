//! Cocoon on a Kubernetes node: a one-node cluster (etcd, kube-apiserver, a
//! kubelet on containerd 2.x's CRI; `cocoon_tests::kubernetes`) runs a pod
//! with `runtimeClassName: cocoon` beside a runc pod, as a user would write
//! them, and everything is checked through kubectl.

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

/// The Cocoon pod: a writer and a reader sharing an emptyDir; the writer
/// also reads a configMap and its own name, node and IP from the downward
/// API, and is Ready once it wrote the shared file (an exec probe).
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
