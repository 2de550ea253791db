//! Which network the sandbox gets: the network namespace in its first
//! (sandbox) container's spec.

use std::path::PathBuf;

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
}
