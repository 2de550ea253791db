//! Which network the sandbox gets: the network namespace in its first
//! (sandbox) container's spec.

use std::path::{Path, PathBuf};

use super::NetworkError;

/// The pod's network, as the spec asks for it.
#[derive(Debug, PartialEq, Eq)]
pub enum PodNetns {
    /// A network namespace entry without a path: a new, empty namespace
    /// (ctr's default). The guest gets only `lo`, as runc's container would,
    /// unless the spec's hooks wire it (nerdctl's bridge network).
    Empty,
    /// An existing namespace to take the network from (containerd's CRI
    /// gives `/var/run/netns/cni-…`, made and wired by CNI).
    Path(PathBuf),
}

/// The one place that says where a sandbox's network namespace comes from.
/// (nerdctl's bridge network asks for a new namespace, `Empty`, and wires
/// it in a createRuntime hook: the shim then makes one, see
/// [`super::own_netns`] and `crate::hooks`.)
///
/// No network namespace entry at all is the host's network, which a VM
/// cannot share: refused.
pub fn pod_netns(spec: &serde_json::Value) -> Result<PodNetns, NetworkError> {
    let namespaces = spec
        .get("linux")
        .and_then(|linux| linux.get("namespaces"))
        .and_then(|namespaces| namespaces.as_array());
    let network = namespaces
        .into_iter()
        .flatten()
        .find(|namespace| namespace.get("type").and_then(|t| t.as_str()) == Some("network"));
    let Some(network) = network else {
        return Err(NetworkError::HostNetwork);
    };
    match network.get("path").and_then(|path| path.as_str()) {
        None | Some("") => Ok(PodNetns::Empty),
        Some(path) if path.starts_with('/') => Ok(PodNetns::Path(path.into())),
        Some(path) => Err(NetworkError::Spec(format!(
            "the network namespace path {path:?} is not absolute"
        ))),
    }
}

/// Gives the network entry of a guest spec that asks for a new namespace
/// the path of the sandbox's own (`netns`), which the shim made for hooks
/// to wire: the agent then keeps the container in the VM's network, where
/// the wired interface is, as it does for a pod's namespace named by path.
pub fn join_own_netns(guest_spec: &mut serde_json::Value, netns: &Path) {
    let namespaces = guest_spec
        .get_mut("linux")
        .and_then(|linux| linux.get_mut("namespaces"))
        .and_then(|namespaces| namespaces.as_array_mut());
    for namespace in namespaces.into_iter().flatten() {
        let unnamed = namespace
            .get("path")
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .is_empty();
        if namespace.get("type").and_then(|t| t.as_str()) == Some("network") && unnamed {
            namespace["path"] = netns.display().to_string().into();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(namespaces: serde_json::Value) -> serde_json::Value {
        json!({ "linux": { "namespaces": namespaces } })
    }

    #[test]
    fn the_network_namespace_entry_decides() {
        assert_eq!(
            pod_netns(&spec(json!([
                { "type": "pid" },
                { "type": "network", "path": "/var/run/netns/cni-1234" }
            ])))
            .unwrap(),
            PodNetns::Path("/var/run/netns/cni-1234".into())
        );
        assert_eq!(
            pod_netns(&spec(json!([{ "type": "network" }]))).unwrap(),
            PodNetns::Empty
        );
        let host = pod_netns(&spec(json!([{ "type": "pid" }]))).unwrap_err();
        assert!(matches!(host, NetworkError::HostNetwork));
        assert!(host.to_string().contains("host network"), "{host}");
        assert!(matches!(
            pod_netns(&json!({})).unwrap_err(),
            NetworkError::HostNetwork
        ));
        assert!(matches!(
            pod_netns(&spec(json!([{ "type": "network", "path": "netns" }]))).unwrap_err(),
            NetworkError::Spec(_)
        ));
    }

    #[test]
    fn a_new_network_namespace_becomes_the_sandboxs_own() {
        let mut guest = spec(json!([{ "type": "pid" }, { "type": "network" }]));
        join_own_netns(&mut guest, Path::new("/state/netns"));
        assert_eq!(
            pod_netns(&guest).unwrap(),
            PodNetns::Path("/state/netns".into())
        );
        assert!(guest["linux"]["namespaces"][0].get("path").is_none());
        let mut named = spec(json!([{ "type": "network", "path": "/var/run/netns/cni-1" }]));
        join_own_netns(&mut named, Path::new("/state/netns"));
        assert_eq!(
            pod_netns(&named).unwrap(),
            PodNetns::Path("/var/run/netns/cni-1".into())
        );
    }
}
