//! What the shim added to the pod's network namespace, recorded in the
//! sandbox's state directory before it is added, so that a `shim delete`
//! after a crash removes exactly that.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const RECORD: &str = "network.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The namespace (containerd's; never removed by the shim).
    pub netns: PathBuf,
    /// The veth whose ingress qdisc the shim added.
    pub veth: String,
    pub veth_index: u32,
    /// The tap the shim created.
    pub tap: String,
}

impl NetworkRecord {
    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(state_dir.join(RECORD), text)
    }

    pub fn read(state_dir: &Path) -> Option<NetworkRecord> {
        let text = std::fs::read(state_dir.join(RECORD)).ok()?;
        match serde_json::from_slice(&text) {
            Ok(record) => Some(record),
            Err(error) => {
                tracing::warn!("ignoring {}: {error}", state_dir.join(RECORD).display());
                None
            }
        }
    }

    pub fn remove(state_dir: &Path) {
        let _ = std::fs::remove_file(state_dir.join(RECORD));
    }
}
