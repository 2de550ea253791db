//! A pod's containers in one VM, and the host paths they mount, end to end
//! through containerd (`ctr`): bind mounts reach the guest through the
//! share, read-only where asked and live (a configMap's atomic `..data`
//! swap is seen); a pod's containers join its sandbox's IPC and UTS
//! namespaces in the guest and share its /dev/shm, a tmpfs in guest memory.
//! (The CRI suite drives the same through containerd's CRI: tests/cri.rs.)

use std::path::Path;
use std::time::Duration;

use cocoon_tests::containerd::{ok, text, Containerd};
use cocoon_tests::sandbox::busybox_rootfs;
use cocoon_tests::{poll_until, require_hardware_kvm};
use serde_json::json;

/// Writes `files` as kubelet writes a configMap volume: the data in a
/// timestamped directory, `..data` a symlink to it (swapped atomically by a
/// rename), each key a symlink through `..data`.
fn write_config_map(dir: &Path, generation: &str, files: &[(&str, &str)]) {
    let data = format!("..{generation}");
    std::fs::create_dir(dir.join(&data)).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(&data).join(name), content).unwrap();
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
        }
    }
    std::os::unix::fs::symlink(&data, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
}

/// Runs `script` in task `id` until its output contains `wanted` (the
/// guest's file cache may show the old state for a few seconds).
fn exec_until(containerd: &Containerd, id: &str, script: &str, wanted: &str) -> String {
    let mut attempt = 0;
    poll_until(Duration::from_secs(30), wanted, || {
        attempt += 1;
        containerd.exec(id, &format!("poll{attempt}"), script)
    })
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn bind_mounts_reach_the_guest_read_only_where_asked_and_live() {
    require_hardware_kvm();
    let containerd = Containerd::start();
    containerd.import_busybox();
    let config = containerd.dir().join("config");
    std::fs::create_dir(&config).unwrap();
    write_config_map(&config, "2026_11_30_1", &[("greeting", "hello v1")]);
    let out_dir = containerd.dir().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let hosts = containerd.dir().join("hosts");
    std::fs::write(&hosts, "10.1.2.3 volume-test\n").unwrap();
    let mounts = [
        format!(
            "type=bind,src={},dst=/config,options=rbind:ro",
            config.display()
        ),
        format!(
            "type=bind,src={},dst=/out,options=rbind:rw",
            out_dir.display()
        ),
        format!(
            "type=bind,src={},dst=/etc/hosts,options=rbind:ro",
            hosts.display()
        ),
    ];
    let mut flags = vec![];
    for mount in &mounts {
        flags.extend(["--mount", mount.as_str()]);
    }
    containerd.start_sleeping(&flags, "volumes");

    let said = containerd.exec(
        "volumes",
        "read",
        "cat /config/greeting; echo; cat /etc/hosts; \
         echo x > /config/new; echo config-write=$?; \
         echo from-the-guest > /out/written; echo out-write=$?",
    );
    eprintln!("the guest saw:\n{said}");
    assert!(said.contains("hello v1"), "{said}");
    assert!(said.contains("10.1.2.3 volume-test"), "{said}");
    assert!(
        said.contains("config-write=1") && said.contains("Read-only file system"),
        "a read-only volume must refuse writes:\n{said}"
    );
    assert!(said.contains("out-write=0"), "{said}");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("written")).unwrap(),
        "from-the-guest\n"
    );
    assert!(!config.join("new").exists());

    // kubelet updates a configMap by swapping `..data`.
    write_config_map(&config, "2026_11_30_2", &[("greeting", "hello v2")]);
    let said = exec_until(&containerd, "volumes", "cat /config/greeting", "hello v2");
    assert!(
        said.contains("hello v2"),
        "the guest never saw the update: {said}"
    );

    containerd.kill_and_delete("volumes");
    containerd.assert_nothing_left();
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        "10.1.2.3 volume-test\n"
    );
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_pods_containers_share_its_namespaces_and_shm_in_one_vm() {
    require_hardware_kvm();
    let containerd = Containerd::start();
    let rootfs = containerd.dir().join("pod-rootfs");
    busybox_rootfs(&rootfs);
    // containerd's CRI gives every container of the pod the sandbox's shm
    // directory at /dev/shm: <state>/sandboxes/<sandbox id>/shm.
    let shm = containerd.dir().join("sandboxes/pod/shm");
    std::fs::create_dir_all(&shm).unwrap();
    let shm_mount = json!({
        "destination": "/dev/shm", "type": "bind", "source": shm,
        "options": ["rbind", "rprivate", "rw"]
    });

    let mut sandbox = containerd.spec_on_rootfs(&rootfs, &["sleep", "600"]);
    sandbox["annotations"] = json!({
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": "pod",
    });
    sandbox["hostname"] = json!("the-pod");
    add_namespace(&mut sandbox, json!({ "type": "uts" }));
    sandbox["mounts"]
        .as_array_mut()
        .unwrap()
        .push(shm_mount.clone());
    ok(containerd.run_spec(&["-d"], &sandbox, "pod"), "the sandbox");
    containerd.wait_for_status("pod", "RUNNING");
    let pod_said = containerd.exec(
        "pod",
        "write",
        "echo from-the-pod > /dev/shm/note; readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts",
    );

    // As CRI creates an app container: the pod's namespaces by path (a host
    // path, meaningless in the guest).
    let mut app = containerd.spec_on_rootfs(
        &rootfs,
        &[
            "sh",
            "-c",
            "hostname; cat /dev/shm/note; readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts",
        ],
    );
    app["annotations"] = json!({
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "pod",
    });
    add_namespace(
        &mut app,
        json!({ "type": "uts", "path": "/proc/4242/ns/uts" }),
    );
    add_namespace(
        &mut app,
        json!({ "type": "ipc", "path": "/proc/4242/ns/ipc" }),
    );
    app["mounts"].as_array_mut().unwrap().push(shm_mount);
    let out = containerd.run_spec(&["--rm"], &app, "app");
    let app_said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    eprintln!("the pod saw:\n{pod_said}\nthe app saw:\n{app_said}");
    assert!(
        app_said.contains("the-pod"),
        "the pod's hostname: {app_said}"
    );
    assert!(
        app_said.contains("from-the-pod"),
        "the pod's /dev/shm: {app_said}"
    );
    let namespaces = |said: &str| -> Vec<String> {
        said.lines()
            .filter(|line| line.starts_with("ipc:[") || line.starts_with("uts:["))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(namespaces(&pod_said).len(), 2, "{pod_said}");
    assert_eq!(
        namespaces(&pod_said),
        namespaces(&app_said),
        "the app must be in the pod's IPC and UTS namespaces"
    );
    assert_eq!(
        std::fs::read_dir(&shm).unwrap().count(),
        0,
        "the pod's /dev/shm lives in guest memory, not in the host directory"
    );
    containerd.kill_and_delete("pod");
    containerd.assert_nothing_left();
}

/// Replaces the spec's namespace of that type (or adds it).
fn add_namespace(spec: &mut serde_json::Value, namespace: serde_json::Value) {
    let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| n["type"] != namespace["type"]);
    namespaces.push(namespace);
}
