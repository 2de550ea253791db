//! A container's cgroup (v2) in the guest: statistics, limits, processes and
//! the OOM-kill count, through libcgroups where it covers the need.

use std::path::{Path, PathBuf};

use cocoon_protocol::api::agent::{CpuStats, IoEntry, MemoryStats, PidsStats, StatsResponse};
use libcgroups::common::{CgroupManager, ControllerOpt};
use libcgroups::v2::manager::Manager;
use oci_spec::runtime::LinuxResources;

use crate::spec::cgroup_path;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup of {container}: {message}")]
    Manager { container: String, message: String },
    #[error("invalid resources: {0}")]
    InvalidResources(String),
}

pub struct ContainerCgroup {
    container_id: String,
    manager: Manager,
}

impl ContainerCgroup {
    pub fn of(container_id: &str) -> Result<Self, CgroupError> {
        let manager = Manager::new(CGROUP_ROOT.into(), PathBuf::from(cgroup_path(container_id)))
            .map_err(|e| CgroupError::Manager {
                container: container_id.into(),
                message: e.to_string(),
            })?;
        Ok(ContainerCgroup {
            container_id: container_id.into(),
            manager,
        })
    }

    fn error(&self, error: impl std::fmt::Display) -> CgroupError {
        CgroupError::Manager {
            container: self.container_id.clone(),
            message: error.to_string(),
        }
    }

    fn dir(&self) -> PathBuf {
        Path::new(CGROUP_ROOT).join(cgroup_path(&self.container_id).trim_start_matches('/'))
    }

    /// Reads the cgroup's statistics files. Read directly rather than through
    /// libcgroups, whose v2 stats insist on hugetlb and PSI support that a
    /// microVM kernel need not have.
    pub fn stats(&self) -> Result<StatsResponse, CgroupError> {
        let dir = self.dir();
        if !dir.is_dir() {
            return Err(self.error(format!("{} does not exist", dir.display())));
        }
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let mut response = StatsResponse::new();

        let cpu_stat = KeyValues(read("cpu.stat"));
        let mut cpu = CpuStats::new();
        cpu.usage_usec = cpu_stat.get("usage_usec");
        cpu.user_usec = cpu_stat.get("user_usec");
        cpu.system_usec = cpu_stat.get("system_usec");
        cpu.nr_periods = cpu_stat.get("nr_periods");
        cpu.nr_throttled = cpu_stat.get("nr_throttled");
        cpu.throttled_usec = cpu_stat.get("throttled_usec");
        response.cpu = Some(cpu).into();

        let mut memory = MemoryStats::new();
        memory.usage = single_value(&read("memory.current"));
        memory.limit = single_value(&read("memory.max"));
        memory.swap_usage = single_value(&read("memory.swap.current"));
        memory.swap_limit = single_value(&read("memory.swap.max"));
        memory.stat = KeyValues(read("memory.stat")).all();
        let events = self.memory_events();
        memory.events_low = events.get("low");
        memory.events_high = events.get("high");
        memory.events_max = events.get("max");
        memory.events_oom = events.get("oom");
        memory.events_oom_kill = events.get("oom_kill");
        response.memory = Some(memory).into();

        let mut pids = PidsStats::new();
        pids.current = single_value(&read("pids.current"));
        pids.limit = single_value(&read("pids.max"));
        response.pids = Some(pids).into();

        response.io = io_entries(&read("io.stat"));
        Ok(response)
    }

    /// How many processes the OOM killer has killed in this cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        self.memory_events().get("oom_kill")
    }

    fn memory_events(&self) -> KeyValues {
        KeyValues(std::fs::read_to_string(self.dir().join("memory.events")).unwrap_or_default())
    }

    pub fn update(&self, resources_json: &[u8]) -> Result<(), CgroupError> {
        let resources: LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| CgroupError::InvalidResources(e.to_string()))?;
        self.manager
            .apply(&ControllerOpt {
                resources: &resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| self.error(e))
    }

    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let pids = self.manager.get_all_pids().map_err(|e| self.error(e))?;
        Ok(pids.into_iter().map(|pid| pid.as_raw()).collect())
    }

    /// Kills every process in the cgroup (cgroup.kill, Linux 5.14+).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        std::fs::write(self.dir().join("cgroup.kill"), "1").map_err(|e| self.error(e))
    }
}

/// A one-value cgroup file ("123\n"); "max" (no limit) and absent files
/// are 0, as the API says.
fn single_value(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

/// A flat-keyed cgroup file ("key value" per line).
struct KeyValues(String);

impl KeyValues {
    fn all(&self) -> std::collections::HashMap<String, u64> {
        self.0
            .lines()
            .filter_map(|line| line.split_once(' '))
            .filter_map(|(name, value)| Some((name.to_owned(), value.trim().parse().ok()?)))
            .collect()
    }

    fn get(&self, key: &str) -> u64 {
        self.0
            .lines()
            .filter_map(|line| line.split_once(' '))
            .find(|(name, _)| *name == key)
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// io.stat: "MAJ:MIN rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0" per line.
fn io_entries(io_stat: &str) -> Vec<IoEntry> {
    io_stat
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (major, minor) = words.next()?.split_once(':')?;
            let mut entry = IoEntry::new();
            entry.major = major.parse().ok()?;
            entry.minor = minor.parse().ok()?;
            for word in words {
                let Some((key, value)) = word.split_once('=') else {
                    continue;
                };
                let value = value.parse().unwrap_or(0);
                match key {
                    "rbytes" => entry.rbytes = value,
                    "wbytes" => entry.wbytes = value,
                    "rios" => entry.rios = value,
                    "wios" => entry.wios = value,
                    _ => {}
                }
            }
            Some(entry)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_events_are_read_by_key() {
        let events =
            KeyValues("low 0\nhigh 3\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n".into());
        assert_eq!(events.get("oom_kill"), 1);
        assert_eq!(events.get("max"), 7);
        assert_eq!(events.get("missing"), 0);
    }

    #[test]
    fn io_stat_lines_become_entries() {
        let entries =
            io_entries("254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\nbogus\n");
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].major, entries[0].minor), (254, 0));
        assert_eq!((entries[0].rbytes, entries[0].wbytes), (4096, 8192));
        assert_eq!((entries[0].rios, entries[0].wios), (1, 2));
    }

    #[test]
    fn max_means_no_limit() {
        assert_eq!(single_value("max\n"), 0);
        assert_eq!(single_value("33554432\n"), 32 << 20);
        assert_eq!(single_value(""), 0);
    }

    #[test]
    fn memory_stat_keys_are_all_kept() {
        let stat = KeyValues("anon 4096\nfile 8192\nbroken\n".into()).all();
        assert_eq!(stat.len(), 2);
        assert_eq!(stat["file"], 8192);
    }
}
