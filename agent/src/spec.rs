//! Turns the OCI spec the host's bundle has into the one the guest runs.
//!
//! The spec arrives as the host wrote it; a few things in it only mean
//! something on the host: the root path, the cgroup path, namespace paths
//! (e.g. the host's network namespace), hooks (host binaries), and LSM labels
//! (the guest kernel has no AppArmor or SELinux). The translation works on the
//! JSON itself so every field we do not touch passes through unchanged.
//!
//! Namespaces: the VM is the pod. Every container shares the guest's network
//! (the pod's interface is the guest's), so a network namespace the host
//! named by path is no namespace at all in the guest; one without a path (a
//! container of its own, `ctr run`) is still a new, empty one. The other
//! namespaces a CRI container names by path are its pod's (IPC, UTS, and PID
//! when the pod shares it): in the guest they are the namespaces of the
//! pod's sandbox container, joined through its init process.

use std::path::Path;

use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid OCI spec: {0}")]
    Invalid(String),
    #[error("invalid OCI process: {0}")]
    InvalidProcess(String),
}

/// Where the container lives in the guest.
pub struct Placement<'a> {
    pub container_id: &'a str,
    /// Absolute guest path of the root file system.
    pub rootfs: &'a Path,
    /// Whether the shim attaches a terminal.
    pub terminal: bool,
    /// The guest pid of the init process of the pod's sandbox container,
    /// when this container joins a pod that runs in this guest.
    pub pod_sandbox_pid: Option<i32>,
}

/// The annotation containerd's CRI puts on every container of a pod.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The id of the pod's sandbox container, if the spec names one other than
/// `container_id` itself.
pub fn pod_sandbox_id(spec_json: &[u8], container_id: &str) -> Option<String> {
    let spec: Value = serde_json::from_slice(spec_json).ok()?;
    let sandbox = spec["annotations"][SANDBOX_ID_ANNOTATION].as_str()?;
    (sandbox != container_id).then(|| sandbox.to_owned())
}

/// The guest's cgroup of a container.
pub fn cgroup_path(container_id: &str) -> String {
    format!("/cocoon/{container_id}")
}

/// A container's spec for the guest, and what the agent sets up for it.
#[derive(Debug)]
pub struct GuestSpec {
    pub json: Vec<u8>,
    /// `net.*` sysctls of a container in the pod's network, which is the
    /// guest's own: the agent sets them there (libcontainer refuses them for
    /// a container without a network namespace of its own).
    pub pod_network_sysctls: Vec<(String, String)>,
}

/// Translates a container's config.json for the guest.
pub fn translate_spec(spec_json: &[u8], placement: &Placement) -> Result<GuestSpec, SpecError> {
    let mut spec: Value =
        serde_json::from_slice(spec_json).map_err(|e| SpecError::Invalid(e.to_string()))?;
    let object = spec
        .as_object_mut()
        .ok_or_else(|| SpecError::Invalid("the spec is not a JSON object".into()))?;

    let readonly = object
        .get("root")
        .and_then(|root| root.get("readonly"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    object.insert(
        "root".into(),
        json!({ "path": placement.rootfs, "readonly": readonly }),
    );
    if object.remove("hooks").is_some() {
        tracing::info!(
            "{}: hooks name host binaries; not run in the guest",
            placement.container_id
        );
    }

    let linux = object
        .entry("linux")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| SpecError::Invalid("\"linux\" is not an object".into()))?;
    linux.insert(
        "cgroupsPath".into(),
        json!(cgroup_path(placement.container_id)),
    );
    linux.remove("mountLabel");
    let mut pod_network_sysctls = Vec::new();
    if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
        if place_namespaces(namespaces, placement.pod_sandbox_pid) {
            pod_network_sysctls = take_network_sysctls(linux);
        }
    }

    let process = object
        .get_mut("process")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| SpecError::Invalid("the spec has no \"process\" to run".into()))?;
    fix_process(process, placement);

    // Refuse what libcontainer would refuse, with serde's words for where.
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone())
        .map_err(|e| SpecError::Invalid(e.to_string()))?;
    let json = serde_json::to_vec(&spec).map_err(|e| SpecError::Invalid(e.to_string()))?;
    Ok(GuestSpec {
        json,
        pod_network_sysctls,
    })
}

/// Removes the `net.*` sysctls (either spelling, `net.x` or `net/x`) from
/// `linux.sysctl` and returns them, dotted.
fn take_network_sysctls(linux: &mut Map<String, Value>) -> Vec<(String, String)> {
    let Some(sysctls) = linux.get_mut("sysctl").and_then(Value::as_object_mut) else {
        return Vec::new();
    };
    let network: Vec<String> = sysctls
        .keys()
        .filter(|key| key.replace('/', ".").starts_with("net."))
        .cloned()
        .collect();
    network
        .into_iter()
        .filter_map(|key| {
            let value = sysctls.remove(&key)?;
            Some((key.replace('/', "."), value.as_str()?.to_owned()))
        })
        .collect()
}

/// Translates the process of an exec into a running container.
pub fn translate_process(process_json: &[u8], placement: &Placement) -> Result<Vec<u8>, SpecError> {
    let mut process: Value = serde_json::from_slice(process_json)
        .map_err(|e| SpecError::InvalidProcess(e.to_string()))?;
    let object = process
        .as_object_mut()
        .ok_or_else(|| SpecError::InvalidProcess("the process is not a JSON object".into()))?;
    fix_process(object, placement);
    serde_json::from_value::<oci_spec::runtime::Process>(process.clone())
        .map_err(|e| SpecError::InvalidProcess(e.to_string()))?;
    serde_json::to_vec(&process).map_err(|e| SpecError::InvalidProcess(e.to_string()))
}

/// A host namespace path cannot be joined from inside the VM: a network
/// namespace named by path is the guest's own (the pod's network), other
/// types join the pod's sandbox container, else get a new namespace.
/// Returns whether the container is in the pod's network.
fn place_namespaces(namespaces: &mut Vec<Value>, pod_sandbox_pid: Option<i32>) -> bool {
    let before = namespaces.len();
    namespaces
        .retain(|namespace| !(namespace["type"] == "network" && namespace.get("path").is_some()));
    let in_pod_network = namespaces.len() != before;
    for namespace in namespaces.iter_mut().filter_map(Value::as_object_mut) {
        let had_path = namespace.remove("path").is_some();
        let proc_name = match namespace.get("type").and_then(Value::as_str) {
            Some("ipc") => "ipc",
            Some("uts") => "uts",
            Some("pid") => "pid",
            _ => continue,
        };
        if let (true, Some(pid)) = (had_path, pod_sandbox_pid) {
            namespace.insert("path".into(), json!(format!("/proc/{pid}/ns/{proc_name}")));
        }
    }
    in_pod_network
}

fn fix_process(process: &mut Map<String, Value>, placement: &Placement) {
    process.insert("terminal".into(), json!(placement.terminal));
    process.remove("apparmorProfile");
    process.remove("selinuxLabel");
    // Without HOME, libcontainer looks the user up through NSS, which a
    // static agent must never do; give it what runc would have found.
    let uid = process
        .get("user")
        .and_then(|user| user.get("uid"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let env = process.entry("env").or_insert_with(|| json!([]));
    if let Some(env) = env.as_array_mut() {
        let has_home = env
            .iter()
            .any(|var| var.as_str().is_some_and(|var| var.starts_with("HOME=")));
        if !has_home {
            let home = home_in_rootfs(placement.rootfs, uid).unwrap_or_else(|| "/".into());
            env.push(json!(format!("HOME={home}")));
        }
    }
}

/// The home directory of `uid` from the image's /etc/passwd, if it says.
fn home_in_rootfs(rootfs: &Path, uid: u64) -> Option<String> {
    let passwd = rootfs.join("etc/passwd");
    // The image is not ours: never follow a symlink out of it.
    if !std::fs::symlink_metadata(&passwd).ok()?.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(passwd).ok()?;
    home_in_passwd(&text, uid)
}

fn home_in_passwd(passwd: &str, uid: u64) -> Option<String> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [_, _, entry_uid, _, _, home, ..]
                if entry_uid.parse() == Ok(uid) && !home.is_empty() =>
            {
                Some((*home).to_owned())
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn placement(rootfs: &Path) -> Placement<'_> {
        Placement {
            container_id: "c1",
            rootfs,
            terminal: false,
            pod_sandbox_pid: None,
        }
    }

    fn host_spec() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "root": { "path": "rootfs", "readonly": true },
            "process": {
                "terminal": true,
                "user": { "uid": 0, "gid": 0 },
                "args": ["/bin/sh"],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "apparmorProfile": "cri-containerd.apparmor.d"
            },
            "hooks": { "prestart": [ { "path": "/usr/bin/host-hook" } ] },
            "linux": {
                "cgroupsPath": "/default/c1",
                "mountLabel": "system_u:object_r:container_file_t",
                "namespaces": [
                    { "type": "pid" },
                    { "type": "network", "path": "/var/run/netns/cni-1234" }
                ]
            }
        })
    }

    fn translate(spec: &Value, rootfs: &Path) -> Value {
        let guest = translate_spec(&serde_json::to_vec(spec).unwrap(), &placement(rootfs)).unwrap();
        serde_json::from_slice(&guest.json).unwrap()
    }

    #[test]
    fn root_and_cgroup_point_into_the_guest() {
        let spec = translate(&host_spec(), Path::new("/run/cocoon/share/c1/rootfs"));
        assert_eq!(
            spec["root"],
            json!({ "path": "/run/cocoon/share/c1/rootfs", "readonly": true })
        );
        assert_eq!(spec["linux"]["cgroupsPath"], "/cocoon/c1");
    }

    #[test]
    fn host_only_fields_are_dropped() {
        let spec = translate(&host_spec(), Path::new("/r"));
        assert!(spec.get("hooks").is_none());
        assert!(spec["linux"].get("mountLabel").is_none());
        assert!(spec["process"].get("apparmorProfile").is_none());
        assert_eq!(spec["linux"]["namespaces"], json!([{ "type": "pid" }]));
    }

    #[test]
    fn pod_containers_join_the_sandbox_and_share_the_guest_network() {
        let mut spec = host_spec();
        spec["annotations"] = json!({ "io.kubernetes.cri.sandbox-id": "pod1" });
        spec["linux"]["namespaces"] = json!([
            { "type": "pid" },
            { "type": "ipc", "path": "/proc/4242/ns/ipc" },
            { "type": "uts", "path": "/proc/4242/ns/uts" },
            { "type": "mount" },
            { "type": "network", "path": "/proc/4242/ns/net" },
        ]);
        let bytes = serde_json::to_vec(&spec).unwrap();
        assert_eq!(pod_sandbox_id(&bytes, "app").as_deref(), Some("pod1"));
        assert_eq!(pod_sandbox_id(&bytes, "pod1"), None);
        let mut place = placement(Path::new("/r"));
        place.pod_sandbox_pid = Some(7);
        let translated: Value =
            serde_json::from_slice(&translate_spec(&bytes, &place).unwrap().json).unwrap();
        assert_eq!(
            translated["linux"]["namespaces"],
            json!([
                { "type": "pid" },
                { "type": "ipc", "path": "/proc/7/ns/ipc" },
                { "type": "uts", "path": "/proc/7/ns/uts" },
                { "type": "mount" },
            ])
        );
        // Without the sandbox in this guest: new namespaces.
        let translated = translate(&spec, Path::new("/r"));
        assert_eq!(
            translated["linux"]["namespaces"],
            json!([{ "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }])
        );
    }

    #[test]
    fn the_pods_network_sysctls_are_set_by_the_agent() {
        let mut spec = host_spec();
        spec["linux"]["sysctl"] = json!({
            "net.ipv4.ip_unprivileged_port_start": "0",
            "net/ipv4/ping_group_range": "0 2147483647",
            "kernel.shm_rmid_forced": "1",
        });
        let bytes = serde_json::to_vec(&spec).unwrap();
        let guest = translate_spec(&bytes, &placement(Path::new("/r"))).unwrap();
        let mut sysctls = guest.pod_network_sysctls.clone();
        sysctls.sort();
        assert_eq!(
            sysctls,
            [
                ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
                ("net.ipv4.ping_group_range".into(), "0 2147483647".into()),
            ]
        );
        let translated: Value = serde_json::from_slice(&guest.json).unwrap();
        assert_eq!(
            translated["linux"]["sysctl"],
            json!({ "kernel.shm_rmid_forced": "1" })
        );
        // A container with a network namespace of its own keeps them.
        spec["linux"]["namespaces"] = json!([{ "type": "network" }]);
        let bytes = serde_json::to_vec(&spec).unwrap();
        let guest = translate_spec(&bytes, &placement(Path::new("/r"))).unwrap();
        assert!(guest.pod_network_sysctls.is_empty());
    }

    #[test]
    fn terminal_follows_what_the_shim_attaches() {
        let spec = translate(&host_spec(), Path::new("/r"));
        assert_eq!(spec["process"]["terminal"], false);
    }

    #[test]
    fn home_comes_from_the_image_passwd_or_defaults_to_root_dir() {
        let dir = std::env::temp_dir().join(format!("cocoon-spec-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .unwrap();
        let spec = translate(&host_spec(), &dir);
        assert_eq!(spec["process"]["env"], json!(["PATH=/bin", "HOME=/root"]));

        let mut nobody = host_spec();
        nobody["process"]["user"]["uid"] = json!(65534);
        let spec = translate(&nobody, &dir);
        assert_eq!(
            spec["process"]["env"],
            json!(["PATH=/bin", "HOME=/nonexistent"])
        );

        let spec = translate(&host_spec(), &PathBuf::from("/no/such/rootfs"));
        assert_eq!(spec["process"]["env"], json!(["PATH=/bin", "HOME=/"]));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_existing_home_is_kept() {
        let mut spec = host_spec();
        spec["process"]["env"] = json!(["HOME=/home/me"]);
        let spec = translate(&spec, Path::new("/r"));
        assert_eq!(spec["process"]["env"], json!(["HOME=/home/me"]));
    }

    #[test]
    fn broken_specs_are_refused_with_the_reason() {
        let error = translate_spec(b"{", &placement(Path::new("/r"))).unwrap_err();
        assert!(
            error.to_string().starts_with("invalid OCI spec: "),
            "{error}"
        );
        let error = translate_spec(b"[]", &placement(Path::new("/r"))).unwrap_err();
        assert!(error.to_string().contains("not a JSON object"), "{error}");
        let mut no_process = host_spec();
        no_process.as_object_mut().unwrap().remove("process");
        let bytes = serde_json::to_vec(&no_process).unwrap();
        let error = translate_spec(&bytes, &placement(Path::new("/r"))).unwrap_err();
        assert!(error.to_string().contains("no \"process\""), "{error}");
        let mut bad_args = host_spec();
        bad_args["process"]["args"] = json!("not-a-list");
        let bytes = serde_json::to_vec(&bad_args).unwrap();
        assert!(translate_spec(&bytes, &placement(Path::new("/r"))).is_err());
    }

    #[test]
    fn exec_processes_get_the_same_fixes() {
        let process = json!({ "args": ["sh"], "cwd": "/", "user": { "uid": 0, "gid": 0 }, "terminal": false });
        let mut place = placement(Path::new("/nowhere"));
        place.terminal = true;
        let bytes = translate_process(&serde_json::to_vec(&process).unwrap(), &place).unwrap();
        let process: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(process["terminal"], true);
        assert_eq!(process["env"], json!(["HOME=/"]));
    }

    #[test]
    fn passwd_lines_that_do_not_parse_are_skipped() {
        let passwd = "garbage\n::\nuser:x:abc:0::/x:\nme:x:1000:1000::/home/me:/bin/sh\n";
        assert_eq!(home_in_passwd(passwd, 1000).as_deref(), Some("/home/me"));
        assert_eq!(home_in_passwd(passwd, 5), None);
    }
}
