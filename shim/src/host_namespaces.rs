//! Host namespaces a VM cannot give: a container spec without its own PID
//! or IPC namespace asks to share the host's (Kubernetes' `hostPID` /
//! `hostIPC`, `--pid=host`, `--ipc=host`). In a VM that would silently be
//! the guest's instead, so it is refused at Create, naming the option.
//! (Host networking is refused where the pod's network is found:
//! `network/namespace.rs`.)

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error(
    "the host's {kind} namespace ({options}) is not supported: a container in a VM cannot \
     share the host's {kind} namespace"
)]
pub struct HostNamespaceError {
    kind: &'static str,
    options: &'static str,
}

/// Refuses a spec that has no PID or no IPC namespace of its own.
pub fn refuse_host_namespaces(spec: &Value) -> Result<(), HostNamespaceError> {
    let namespaces = spec["linux"]["namespaces"].as_array();
    let has = |kind: &str| {
        namespaces
            .into_iter()
            .flatten()
            .any(|namespace| namespace["type"] == kind)
    };
    for (kind, options) in [
        ("pid", "hostPID: true, --pid=host"),
        ("ipc", "hostIPC: true, --ipc=host"),
    ] {
        if !has(kind) {
            return Err(HostNamespaceError {
                kind: if kind == "pid" { "PID" } else { "IPC" },
                options,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_spec_without_its_own_pid_or_ipc_namespace_is_refused_by_name() {
        let private = json!({ "linux": { "namespaces": [
            { "type": "pid" }, { "type": "ipc", "path": "/proc/1/ns/ipc" }, { "type": "network" }
        ] } });
        assert!(refuse_host_namespaces(&private).is_ok());
        let host_pid = json!({ "linux": { "namespaces": [{ "type": "ipc" }] } });
        let said = refuse_host_namespaces(&host_pid).unwrap_err().to_string();
        assert!(said.contains("PID") && said.contains("hostPID"), "{said}");
        let host_ipc = json!({ "linux": { "namespaces": [{ "type": "pid" }] } });
        let said = refuse_host_namespaces(&host_ipc).unwrap_err().to_string();
        assert!(said.contains("IPC") && said.contains("hostIPC"), "{said}");
        assert!(refuse_host_namespaces(&json!({})).is_err());
    }
}
