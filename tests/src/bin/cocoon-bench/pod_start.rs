//! A pod as a kubelet starts it, through one private CRI node: `crictl
//! runp`, then `create` and `start` of a busybox `sleep` container (image
//! already pulled), handler cocoon against runc, interleaved, one warm-up
//! each, median of N per step and of the total. Each pod is removed
//! (untimed) before the next starts.

use std::time::Duration;

use cocoon_tests::cri::{busybox_container, Cri, BUSYBOX, COCOON_HANDLER};

use crate::median_ms;
use crate::summary::Summary;

/// containerd's default handler, runc.
pub const RUNC_HANDLER: &str = "runc";

/// A pod start takes 10-20 s per handler in the emulated host VM: more runs
/// would not fit `make bench`'s time in the host VM.
pub const MAX_RUNS: usize = 5;

#[derive(Default)]
struct Steps {
    runp: Vec<Duration>,
    create: Vec<Duration>,
    start: Vec<Duration>,
    total: Vec<Duration>,
}

impl Steps {
    /// Medians in ms: runp, create, start, total.
    fn medians(&mut self) -> [f64; 4] {
        [
            median_ms(&mut self.runp),
            median_ms(&mut self.create),
            median_ms(&mut self.start),
            median_ms(&mut self.total),
        ]
    }
}

pub fn measure(cri: &Cri, runs: usize, summary: &mut Summary) {
    cri.crictl_ok(&["pull", BUSYBOX]);
    let mut cocoon = Steps::default();
    let mut runc = Steps::default();
    // Run 0 warms up: the first container of an image unpacks it.
    for run in 0..=runs {
        for (handler, steps) in [(COCOON_HANDLER, &mut cocoon), (RUNC_HANDLER, &mut runc)] {
            let name = format!("start-{handler}-{run}");
            let started = cri.start_pod(
                handler,
                &cri.pod_config(&name),
                &busybox_container("sleep", "exec sleep 3600", serde_json::json!([])),
            );
            cri.remove_pod(&started.pod);
            if run > 0 {
                steps.runp.push(started.runp);
                steps.create.push(started.create);
                steps.start.push(started.start);
                steps
                    .total
                    .push(started.runp + started.create + started.start);
            }
        }
    }
    let cocoon = cocoon.medians();
    let runc = runc.medians();
    println!(
        "pod start: crictl runp + create + start of a busybox container, median of {runs} (one private CRI containerd, CNI bridge, image pulled):"
    );
    println!("  step      cocoon       runc    ratio");
    for (index, step) in ["runp", "create", "start", "total"].iter().enumerate() {
        println!(
            "  {step:<6} {:8.1} ms {:8.1} ms {:8.2}",
            cocoon[index],
            runc[index],
            cocoon[index] / runc[index]
        );
        summary.compare(
            &format!("pod start: {step} (vs runc)"),
            cocoon[index],
            runc[index],
            "ms",
            "-",
        );
    }
}
