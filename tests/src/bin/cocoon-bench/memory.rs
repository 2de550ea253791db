//! The memory of idle Cocoon sandboxes (a `ctr run` container's or a pod's):
//! each one's shim plus its cocoon-vmm, guest pages the guest touched
//! included, as `Pss` and `Rss` from smaps_rollup.

use std::time::{Duration, Instant};

/// KiB.
#[derive(Default, Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub pss: u64,
    /// `pss` and `rss` of a VMM's guest RAM alone (anonymous, and a
    /// template's memory file mapped privately): see [`guest_ram`].
    pub guest_ram_pss: u64,
    pub guest_ram_rss: u64,
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
            "  cocoon-vmm's guest RAM: Pss {:.1} MiB, Rss {:.1} MiB (the rest of the VMM: Pss {:.1} MiB)",
            mib(self.vmm.guest_ram_pss),
            mib(self.vmm.guest_ram_rss),
            mib(self.vmm.pss - self.vmm.guest_ram_pss)
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
            guest_ram_pss: self.shim.guest_ram_pss + self.vmm.guest_ram_pss,
            guest_ram_rss: self.shim.guest_ram_rss + self.vmm.guest_ram_rss,
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
            sum.guest_ram_pss += one.guest_ram_pss;
            sum.guest_ram_rss += one.guest_ram_rss;
        }
    }
    let count = vmm_pids.len() as u64;
    let mean = |sum: Memory| Memory {
        rss: sum.rss / count,
        pss: sum.pss / count,
        guest_ram_pss: sum.guest_ram_pss / count,
        guest_ram_rss: sum.guest_ram_rss / count,
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

/// `Rss` and `Pss` of a process's smaps_rollup, in KiB, and of its guest
/// RAM (from smaps).
fn memory(pid: u32) -> Memory {
    let rollup =
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let (guest_ram_rss, guest_ram_pss) = guest_ram(&smaps);
    Memory {
        rss: number_after(&rollup, "Rss:"),
        pss: number_after(&rollup, "Pss:"),
        guest_ram_pss,
        guest_ram_rss,
    }
}

/// `Rss` and `Pss` (KiB) of guest RAM in `smaps`: the mappings cocoon-vmm
/// advises for huge or small pages (VmFlags `hg`, `nh`: its guest RAM, in
/// 2 MiB chunks of either kind once the guest has booted) and those of a
/// template's memory file.
fn guest_ram(smaps: &str) -> (u64, u64) {
    let (mut rss, mut pss) = (0, 0);
    let mut current = (false, 0, 0); // guest RAM, rss, pss
    let value = |rest: &str| {
        rest.split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: "start-end perms offset dev inode [path]".
            current = (line.ends_with("/memory"), 0, 0);
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            current.1 = value(rest);
        } else if let Some(rest) = line.strip_prefix("Pss:") {
            current.2 = value(rest);
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            let advised = flags.split_whitespace().any(|f| f == "hg" || f == "nh");
            if current.0 || advised {
                rss += current.1;
                pss += current.2;
            }
        }
    }
    (rss, pss)
}

/// The number after `name` on its line.
fn number_after(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}
