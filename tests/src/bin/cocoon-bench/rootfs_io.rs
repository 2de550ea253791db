//! File work inside a container's root file system, Cocoon (from a
//! template) against runc, interleaved in one containerd on the overlayfs
//! snapshotter (containerd's default, on a tmpfs: the host VM's root is an
//! overlay itself): 1000 small-file creates, stats and removes, a 256 MiB
//! sequential write (fsync'd) and read, and `tar -x` of a 20 MiB tree of
//! small files. The container times its own phases (busybox `date +%s%N`
//! around each), so start-up is not in any figure. Reported as throughput,
//! so the ratio cocoon/runc reads as "fraction of runc's speed".

use cocoon_tests::containerd::{ok, Containerd, Extra, Version, RUNTIME};

use crate::summary::Summary;
use crate::LocalRuntime;

const RUNC: &str = "io.containerd.runc.v2";
const SMALL_FILES: u32 = 1000;
const BIG_MIB: u32 = 256;
/// The tar tree: TREE_FILES files of TREE_FILE_KIB, 20 MiB in all.
const TREE_FILES: u32 = 1280;
const TREE_FILE_KIB: u32 = 16;

/// The workload, for busybox's sh: every phase ends with a line
/// `phase NAME NANOSECONDS`. Files go to /bench, a new directory of the
/// container's root file system (its writable layer).
fn script() -> String {
    format!(
        r#"set -e
t() {{ date +%s%N; }}
phase() {{ now=$(t); echo "phase $1 $((now - start))"; }}
mkdir /bench /bench/small /bench/tree /bench/out
cd /bench/small
start=$(t); i=0; while [ $i -lt {SMALL_FILES} ]; do echo x > f$i; i=$((i + 1)); done; phase create
start=$(t); i=0; while [ $i -lt {SMALL_FILES} ]; do [ -f f$i ]; i=$((i + 1)); done; phase stat
cd /bench
start=$(t); rm -r /bench/small; phase remove
start=$(t); dd if=/dev/zero of=/bench/big bs=1M count={BIG_MIB} conv=fsync 2>/dev/null; phase write
start=$(t); dd if=/bench/big of=/dev/null bs=1M 2>/dev/null; phase read
rm /bench/big
s=x; n=0; while [ $n -lt {kib_doublings} ]; do s="$s$s"; n=$((n + 1)); done
i=0; while [ $i -lt {TREE_FILES} ]; do d=/bench/tree/d$((i % 32)); [ -d $d ] || mkdir $d; printf %s "$s" > $d/f$i; i=$((i + 1)); done
tar -cf /bench/tree.tar -C /bench tree
rm -r /bench/tree
sync
start=$(t); tar -xf /bench/tree.tar -C /bench/out; phase untar
"#,
        // 2^(10 + log2 KiB) bytes: 16 KiB is 14 doublings of one byte.
        kib_doublings = 10 + TREE_FILE_KIB.trailing_zeros(),
    )
}

/// One run's phase times, in seconds.
#[derive(Default, Clone, Copy)]
struct Phases {
    create: f64,
    stat: f64,
    remove: f64,
    write: f64,
    read: f64,
    untar: f64,
}

impl Phases {
    fn parse(output: &str) -> Phases {
        let mut phases = Phases::default();
        for line in output.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("phase") {
                continue;
            }
            let (Some(name), Some(nanos)) = (words.next(), words.next()) else {
                continue;
            };
            let seconds = nanos.parse::<f64>().expect("nanoseconds") / 1e9;
            let slot = match name {
                "create" => &mut phases.create,
                "stat" => &mut phases.stat,
                "remove" => &mut phases.remove,
                "write" => &mut phases.write,
                "read" => &mut phases.read,
                "untar" => &mut phases.untar,
                other => panic!("unknown phase {other}"),
            };
            *slot = seconds;
        }
        assert!(phases.untar > 0.0, "the workload did not finish:\n{output}");
        phases
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn measure(runtime: &LocalRuntime, runs: usize, summary: &mut Summary) {
    let templates = tempfile::tempdir().expect("temporary directory");
    let containerd =
        Containerd::start_with(&runtime.bin, &runtime.kernel, &runtime.initramfs, |_| {
            Extra {
                version: Version::V1_6,
                tmpfs: true,
                cocoon_config: format!("template_dir = {:?}\n", templates.path().join("templates")),
                ..Extra::default()
            }
        });
    containerd.import_busybox();
    let script = script();
    let run = |runtime: &str, id: &str| {
        let out = containerd.run_on_snapshotter(
            "overlayfs",
            runtime,
            &["--rm"],
            id,
            &["sh", "-c", &script],
        );
        Phases::parse(&ok(out, &format!("the rootfs workload on {runtime}")))
    };
    let mut cocoon = Vec::new();
    let mut runc = Vec::new();
    for i in 0..runs {
        cocoon.push(run(RUNTIME, &format!("rootfs-cocoon{i}")));
        runc.push(run(RUNC, &format!("rootfs-runc{i}")));
    }

    println!("file work in the container's root file system (overlayfs snapshotter), median of {runs} interleaved:");
    let mut report = |what: &str,
                      unit: &str,
                      amount: f64,
                      target: &str,
                      phase: fn(&Phases) -> f64| {
        let cocoon_rate = amount / median(cocoon.iter().map(phase).collect());
        let runc_rate = amount / median(runc.iter().map(phase).collect());
        println!(
            "  {what:<36} cocoon {cocoon_rate:10.1} {unit}  runc {runc_rate:10.1} {unit}  ratio {:.2} (target {target})",
            cocoon_rate / runc_rate
        );
        summary.compare(
            &format!("rootfs: {what} (vs runc)"),
            cocoon_rate,
            runc_rate,
            unit,
            target,
        );
    };
    let files = f64::from(SMALL_FILES);
    let big = f64::from(BIG_MIB);
    let tree = f64::from(TREE_FILES * TREE_FILE_KIB) / 1024.0;
    report(
        "1000 small-file creates",
        "files/s",
        files,
        "≥ 0.3",
        |p| p.create,
    );
    report("1000 small-file stats", "files/s", files, "≥ 0.3", |p| {
        p.stat
    });
    report(
        "1000 small-file removes",
        "files/s",
        files,
        "≥ 0.3",
        |p| p.remove,
    );
    report(
        "256 MiB sequential write + fsync",
        "MiB/s",
        big,
        "≥ 0.5",
        |p| p.write,
    );
    report("256 MiB sequential read", "MiB/s", big, "≥ 0.5", |p| {
        p.read
    });
    report(
        "tar -x of 20 MiB in 1280 files",
        "MiB/s",
        tree,
        "≥ 0.3",
        |p| p.untar,
    );
}
