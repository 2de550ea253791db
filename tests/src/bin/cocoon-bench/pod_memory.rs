//! The memory of idle Cocoon pods: a few pods (pause and one `sleep`
//! container each) run together; once their VMMs' sizes hold still, each
//! pod's shim plus cocoon-vmm, guest pages the guest touched included, as
//! the idle `ctr` sandbox is measured (`memory.rs`).

use cocoon_tests::cri::{busybox_container, Cri, BUSYBOX, COCOON_HANDLER};

use crate::memory;
use crate::summary::Summary;

/// Pods measured together: the shims and VMMs of one host share their
/// binaries' pages, which Pss divides among them.
const IDLE_PODS: usize = 3;

pub fn measure(cri: &Cri, summary: &mut Summary) {
    // Pulled already when pod starts were measured first.
    cri.crictl_ok(&["pull", BUSYBOX]);
    let pods: Vec<String> = (0..IDLE_PODS)
        .map(|index| {
            let name = format!("idle-{index}");
            cri.start_pod(
                COCOON_HANDLER,
                &cri.pod_config(&name),
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
    println!(
        "memory of an idle Cocoon pod (pause + `sleep`; shim + VMM, guest pages touched included), {IDLE_PODS} running:"
    );
    idle.print("a sandbox's goal: ≤ 32 MiB");
    summary.value(
        "idle cocoon pod, shim + VMM Pss (Rss)",
        idle.summary_text(),
        "-",
    );
}
