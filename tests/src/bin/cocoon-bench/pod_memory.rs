//! The memory of idle Cocoon pods: a few pods (pause and one `sleep`
//! container each) run together; once their VMMs' sizes hold still, each
//! pod's shim plus cocoon-vmm, guest pages the guest touched included, as
//! the idle `ctr` sandbox is measured (`memory.rs`). Then as many pods
//! again without a scratch disk (`scratch_disk_gib = 0`), in the same host
//! VM: the difference is what the scratch disk costs an idle pod.

use cocoon_tests::cri::{
    busybox_container, Cri, BUSYBOX, COCOON_HANDLER, COCOON_WITHOUT_SCRATCH_DISK_HANDLER,
};

use crate::memory::{self, mib, SandboxMemory};
use crate::summary::Summary;

/// Pods measured together: the shims and VMMs of one host share their
/// binaries' pages, which Pss divides among them.
const IDLE_PODS: usize = 3;

pub fn measure(cri: &Cri, summary: &mut Summary) {
    // Pulled already when pod starts were measured first.
    cri.crictl_ok(&["pull", BUSYBOX]);
    let with_disk = idle_pods(cri, COCOON_HANDLER, "idle");
    let without_disk = idle_pods(cri, COCOON_WITHOUT_SCRATCH_DISK_HANDLER, "idle-no-disk");
    println!(
        "memory of an idle Cocoon pod (pause + `sleep`; shim + VMM, guest pages touched included), {IDLE_PODS} running:"
    );
    with_disk.print("a sandbox's goal: ≤ 32 MiB");
    println!("the same without a scratch disk (scratch_disk_gib = 0), {IDLE_PODS} running:");
    without_disk.print("a sandbox's goal: ≤ 32 MiB");
    let added = |with: u64, without: u64| mib(with) - mib(without);
    let (with, without) = (with_disk.total(), without_disk.total());
    let pss_added = added(with.pss, without.pss);
    println!(
        "  what the scratch disk adds: Pss {pss_added:+.1} MiB (Rss {:+.1}; guest RAM Pss {:+.1}, shim Pss {:+.1})   (goal: ≤ +2 MiB)",
        added(with.rss, without.rss),
        added(with_disk.vmm.guest_ram_pss, without_disk.vmm.guest_ram_pss),
        added(with_disk.shim.pss, without_disk.shim.pss),
    );
    summary.value(
        "idle cocoon pod, shim + VMM Pss (Rss)",
        with_disk.summary_text(),
        "-",
    );
    summary.value(
        "idle cocoon pod without a scratch disk, Pss (Rss)",
        without_disk.summary_text(),
        "-",
    );
    summary.value(
        "idle cocoon pod: what the scratch disk adds, Pss",
        format!("{pss_added:+.1} MiB"),
        "≤ +2 MiB",
    );
}

/// Starts [`IDLE_PODS`] pods on `handler`, measures them once idle and
/// removes them.
fn idle_pods(cri: &Cri, handler: &str, name: &str) -> SandboxMemory {
    let pods: Vec<String> = (0..IDLE_PODS)
        .map(|index| {
            cri.start_pod(
                handler,
                &cri.pod_config(&format!("{name}-{index}")),
                &busybox_container("sleep", "exec sleep 3600", serde_json::json!([])),
            )
            .pod
        })
        .collect();
    let vmm_pids: Vec<u32> = pods.iter().map(|pod| cri.vmm_pid(pod)).collect();
    let idle = memory::idle_sandboxes(&vmm_pids);
    for pod in &pods {
        cri.remove_pod(pod);
    }
    idle
}
