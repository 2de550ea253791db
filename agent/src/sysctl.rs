//! Kernel parameters of the pod's network, which is the guest's own network
//! namespace: set by the agent for the containers in it (see `spec.rs`).

use std::path::PathBuf;

use crate::error::{AgentError, Result};

/// Sets each `net.*` parameter under /proc/sys.
pub fn set_network(sysctls: &[(String, String)]) -> Result<()> {
    for (key, value) in sysctls {
        let path = proc_path(key).ok_or_else(|| {
            AgentError::InvalidArgument(format!("sysctl {key:?} is not a network parameter"))
        })?;
        std::fs::write(&path, value).map_err(|e| {
            AgentError::InvalidArgument(format!("setting sysctl {key}={value:?}: {e}"))
        })?;
    }
    Ok(())
}

/// `/proc/sys/net/...` of a dotted `net.` key made of plain names.
fn proc_path(key: &str) -> Option<PathBuf> {
    let mut parts = key.split('.');
    if parts.next() != Some("net") {
        return None;
    }
    let mut path = PathBuf::from("/proc/sys/net");
    let mut named = false;
    for part in parts {
        named = true;
        let plain = !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !plain {
            return None;
        }
        path.push(part);
    }
    named.then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_network_keys_name_a_file() {
        assert_eq!(
            proc_path("net.ipv4.ip_unprivileged_port_start"),
            Some(PathBuf::from(
                "/proc/sys/net/ipv4/ip_unprivileged_port_start"
            ))
        );
        assert_eq!(
            proc_path("net.ipv4.conf.eth-0.forwarding"),
            Some(PathBuf::from("/proc/sys/net/ipv4/conf/eth-0/forwarding"))
        );
        for bad in [
            "kernel.hostname",
            "net",
            "net..x",
            "net.ipv4./x",
            "net.a/../b",
        ] {
            assert_eq!(proc_path(bad), None, "{bad}");
        }
    }
}
