//! The agent's cgroup statistics as containerd's cgroup v2 `Metrics`, the
//! type `ctr task metrics` and the CRI stats expect from a Linux shim.

use cocoon_protocol::api::agent::StatsResponse;
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};

/// How containerd names the type in an Any.
pub const TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

pub fn to_containerd(stats: &StatsResponse) -> Metrics {
    let mut metrics = Metrics::new();

    let pids = stats.pids.get_or_default();
    metrics.pids = Some(PidsStat {
        current: pids.current,
        limit: pids.limit,
        ..Default::default()
    })
    .into();

    let cpu = stats.cpu.get_or_default();
    metrics.cpu = Some(CPUStat {
        usage_usec: cpu.usage_usec,
        user_usec: cpu.user_usec,
        system_usec: cpu.system_usec,
        nr_periods: cpu.nr_periods,
        nr_throttled: cpu.nr_throttled,
        throttled_usec: cpu.throttled_usec,
        ..Default::default()
    })
    .into();

    let memory = stats.memory.get_or_default();
    let stat = |key: &str| memory.stat.get(key).copied().unwrap_or(0);
    metrics.memory = Some(MemoryStat {
        anon: stat("anon"),
        file: stat("file"),
        kernel_stack: stat("kernel_stack"),
        slab: stat("slab"),
        sock: stat("sock"),
        shmem: stat("shmem"),
        file_mapped: stat("file_mapped"),
        file_dirty: stat("file_dirty"),
        file_writeback: stat("file_writeback"),
        anon_thp: stat("anon_thp"),
        inactive_anon: stat("inactive_anon"),
        active_anon: stat("active_anon"),
        inactive_file: stat("inactive_file"),
        active_file: stat("active_file"),
        unevictable: stat("unevictable"),
        slab_reclaimable: stat("slab_reclaimable"),
        slab_unreclaimable: stat("slab_unreclaimable"),
        pgfault: stat("pgfault"),
        pgmajfault: stat("pgmajfault"),
        workingset_refault: stat("workingset_refault_anon") + stat("workingset_refault_file"),
        workingset_activate: stat("workingset_activate_anon") + stat("workingset_activate_file"),
        workingset_nodereclaim: stat("workingset_nodereclaim"),
        pgrefill: stat("pgrefill"),
        pgscan: stat("pgscan"),
        pgsteal: stat("pgsteal"),
        pgactivate: stat("pgactivate"),
        pgdeactivate: stat("pgdeactivate"),
        pglazyfree: stat("pglazyfree"),
        pglazyfreed: stat("pglazyfreed"),
        thp_fault_alloc: stat("thp_fault_alloc"),
        thp_collapse_alloc: stat("thp_collapse_alloc"),
        usage: memory.usage,
        usage_limit: memory.limit,
        swap_usage: memory.swap_usage,
        swap_limit: memory.swap_limit,
        ..Default::default()
    })
    .into();
    metrics.memory_events = Some(MemoryEvents {
        low: memory.events_low,
        high: memory.events_high,
        max: memory.events_max,
        oom: memory.events_oom,
        oom_kill: memory.events_oom_kill,
        ..Default::default()
    })
    .into();

    metrics.io = Some(IOStat {
        usage: stats
            .io
            .iter()
            .map(|entry| IOEntry {
                major: entry.major,
                minor: entry.minor,
                rbytes: entry.rbytes,
                wbytes: entry.wbytes,
                rios: entry.rios,
                wios: entry.wios,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
    .into();
    metrics
}
