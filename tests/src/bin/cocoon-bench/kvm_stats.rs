//! KVM's own event counters (debugfs `kvm/`, summed over every VM), read
//! around a measurement to say where a guest's time goes: VM exits by
//! reason, halts, injected interrupts. Where debugfs cannot be mounted the
//! bench says so and goes on without them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const KVM_DEBUGFS: &str = "/sys/kernel/debug/kvm";

/// One reading of every top-level counter.
pub struct KvmStats(BTreeMap<String, u64>);

impl KvmStats {
    /// The counters now, mounting debugfs first if it is not; `None` where
    /// there are none to read.
    pub fn read() -> Option<Self> {
        if !Path::new(KVM_DEBUGFS).is_dir() {
            let _ = Command::new("mount")
                .args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"])
                .status();
        }
        let entries = std::fs::read_dir(KVM_DEBUGFS).ok()?;
        let counters = entries
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
            .filter_map(|entry| {
                let value = std::fs::read_to_string(entry.path()).ok()?;
                Some((
                    entry.file_name().to_string_lossy().into_owned(),
                    value.trim().parse().ok()?,
                ))
            })
            .collect();
        Some(KvmStats(counters))
    }

    /// What each of `names` grew by since `before`, per `unit` of work.
    pub fn per_unit_since(&self, before: &KvmStats, names: &[&str], unit: f64) -> String {
        names
            .iter()
            .filter_map(|name| {
                let grew = self.0.get(*name)?.saturating_sub(*before.0.get(*name)?);
                Some(format!("{name} {:.0}", grew as f64 / unit))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
