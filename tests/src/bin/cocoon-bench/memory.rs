//! The memory of idle Cocoon sandboxes (a `ctr run` container's or a pod's):
//! each one's shim plus its cocoon-vmm, guest pages the guest touched
//! included, as `Pss` and `Rss` from smaps_rollup.

use std::time::{Duration, Instant};

/// KiB.
#[derive(Default, Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub pss: u64,
    /// `pss` and `rss` of the largest mapping alone: a VMM's guest RAM
    /// (anonymous, or a template's memory file mapped privately).
    pub largest_pss: u64,
    pub largest_rss: u64,
}

/// The mean per sandbox.
pub struct SandboxMemory {
    pub shim: Memory,
    pub vmm: Memory,
}

impl SandboxMemory {
    /// Two lines: Pss (what a sandbox costs a host that runs many) and Rss.
    pub fn print(&self, goal: &str) {
        println!(
            "  proportional (Pss)   shim {:.1} MiB + cocoon-vmm {:.1} MiB = {:.1} MiB   ({goal})",
            mib(self.shim.pss),
            mib(self.vmm.pss),
            mib(self.total().pss)
        );
        println!(
            "  resident (Rss)       shim {:.1} MiB + cocoon-vmm {:.1} MiB = {:.1} MiB   (binaries' pages counted whole)",
            mib(self.shim.rss),
            mib(self.vmm.rss),
            mib(self.total().rss)
        );
        println!(
            "  cocoon-vmm's guest RAM mapping: Pss {:.1} MiB, Rss {:.1} MiB (the rest of the VMM: Pss {:.1} MiB)",
            mib(self.vmm.largest_pss),
            mib(self.vmm.largest_rss),
            mib(self.vmm.pss - self.vmm.largest_pss)
        );
    }

    /// `Pss (Rss) MiB` of shim and VMM together, for the summary table.
    pub fn summary_text(&self) -> String {
        let total = self.total();
        format!("{:.1} ({:.1}) MiB", mib(total.pss), mib(total.rss))
    }

    pub fn total(&self) -> Memory {
        Memory {
            rss: self.shim.rss + self.vmm.rss,
            pss: self.shim.pss + self.vmm.pss,
            largest_pss: self.shim.largest_pss + self.vmm.largest_pss,
            largest_rss: self.shim.largest_rss + self.vmm.largest_rss,
        }
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Waits until the VMMs `vmm_pids` hold still, then reads the memory of
/// each and of its shim (the VMM's parent): the mean per sandbox.
pub fn idle_sandboxes(vmm_pids: &[u32]) -> SandboxMemory {
    // Idle means settled: a guest reports the pages it freed a couple of
    // seconds after freeing them. Sample until every VMM holds still.
    let total_rss = || vmm_pids.iter().map(|&pid| memory(pid).rss).sum::<u64>();
    let mut rss = total_rss();
    let mut still = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while still < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = total_rss();
        still = if now.abs_diff(rss) <= 64 {
            still + 1
        } else {
            0
        };
        rss = now;
    }
    let mut shim = Memory::default();
    let mut vmm = Memory::default();
    for &pid in vmm_pids {
        for (sum, one) in [
            (&mut shim, memory(parent_pid(pid))),
            (&mut vmm, memory(pid)),
        ] {
            sum.rss += one.rss;
            sum.pss += one.pss;
            sum.largest_pss += one.largest_pss;
            sum.largest_rss += one.largest_rss;
        }
    }
    let count = vmm_pids.len() as u64;
    let mean = |sum: Memory| Memory {
        rss: sum.rss / count,
        pss: sum.pss / count,
        largest_pss: sum.largest_pss / count,
        largest_rss: sum.largest_rss / count,
    };
    SandboxMemory {
        shim: mean(shim),
        vmm: mean(vmm),
    }
}

fn parent_pid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    number_after(&status, "PPid:") as u32
}

/// `Rss` and `Pss` of a process's smaps_rollup, in KiB, and of its largest
/// mapping (from smaps).
fn memory(pid: u32) -> Memory {
    let rollup =
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let (largest_rss, largest_pss) = largest_mapping(&smaps);
    Memory {
        rss: number_after(&rollup, "Rss:"),
        pss: number_after(&rollup, "Pss:"),
        largest_pss,
        largest_rss,
    }
}

/// `Rss` and `Pss` (KiB) of the largest mapping in `smaps`.
fn largest_mapping(smaps: &str) -> (u64, u64) {
    let mut largest = (0, 0, 0); // size, rss, pss
    let mut current = (0, 0, 0);
    let value = |rest: &str| {
        rest.split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    for line in smaps.lines() {
        if let Some(rest) = line.strip_prefix("Size:") {
            if current.0 > largest.0 {
                largest = current;
            }
            current = (value(rest), 0, 0);
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            current.1 = value(rest);
        } else if let Some(rest) = line.strip_prefix("Pss:") {
            current.2 = value(rest);
        }
    }
    if current.0 > largest.0 {
        largest = current;
    }
    (largest.1, largest.2)
}

/// The number after `name` on its line.
fn number_after(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}
