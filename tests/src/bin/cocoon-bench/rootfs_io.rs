//! File work inside a container's root file system, Cocoon (from a
//! template) against runc and against Cocoon writing through the share (the
//! state before the scratch disk), interleaved, on containerd's overlayfs
//! snapshotter (its default) with containerd's root and Cocoon's scratch
//! files on a disk, as on a node ([`DATA_DIR`]): 1000 small-file creates,
//! stats and removes, a 256 MiB
//! sequential write (fsync'd) and read, and `tar -x` of a 20 MiB tree of
//! small files. The container times its own phases (GNU `date +%s%N`
//! around each), so start-up is not in any figure. Reported as throughput,
//! so the ratio cocoon/runc reads as "fraction of runc's speed".

use cocoon_tests::containerd::{ok, Containerd, Extra, Version, RUNTIME};

use crate::summary::Summary;
use crate::LocalRuntime;

const RUNC: &str = "io.containerd.runc.v2";
/// busybox with GNU date as `date-ns`: busybox's date has no `%N`.
const IMAGE: &str = "docker.io/cocoon/rootfs-bench:latest";
const SMALL_FILES: u32 = 1000;
const BIG_MIB: u32 = 256;
/// The tar tree: TREE_FILES files of TREE_FILE_KIB, 20 MiB in all.
const TREE_FILES: u32 = 1280;
const TREE_FILE_KIB: u32 = 16;
/// Where containerd keeps its root and Cocoon its scratch disks' files: a
/// node keeps them on a disk, and so does the host VM (`tests/kvm-host
/// --disk`, which `make bench` asks for). Without one the host VM's
/// /var/tmp is in its root, an overlay on a tmpfs, which holds no overlayfs
/// snapshots (nor O_TMPFILE files, in Linux 6.1): containerd's data and the
/// scratch files then go on tmpfs, where runc's fsync costs nothing.
const DATA_DIR: &str = "/var/tmp";

/// The workload, for busybox's sh: every phase ends with a line
/// `phase NAME NANOSECONDS`. Files go to /bench, a new directory of the
/// container's root file system (its writable layer).
fn script() -> String {
    format!(
        r#"set -e
t() {{ date-ns +%s%N; }}
phase() {{ now=$(t); echo "phase $1 $((now - start))"; }}
mkdir /bench /bench/small /bench/tree /bench/out
cd /bench/small
start=$(t); i=0; while [ $i -lt {SMALL_FILES} ]; do i=$((i + 1)); done; phase loop
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
    /// The shell loop alone, no file work: what the machine's speed for
    /// the guest's own work is, next to runc's.
    loop_only: f64,
    create: f64,
    stat: f64,
    remove: f64,
    write: f64,
    read: f64,
    untar: f64,
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loop {:.2} s, create {:.2} s, stat {:.2} s, remove {:.2} s, write {:.2} s, read {:.2} s, untar {:.2} s",
            self.loop_only,
            self.create, self.stat, self.remove, self.write, self.read, self.untar
        )
    }
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
                "loop" => &mut phases.loop_only,
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

/// The type of the file system `path` is on, as `stat -f` names it.
fn file_system_type(path: &std::path::Path) -> String {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .expect("stat runs");
    ok(out, &format!("stat -f {}", path.display()))
        .trim()
        .to_string()
}

fn containerd(runtime: &LocalRuntime, on_tmpfs: bool, cocoon_config: String) -> Containerd {
    let containerd =
        Containerd::start_with(&runtime.bin, &runtime.kernel, &runtime.initramfs, |_| {
            Extra {
                version: Version::V1_6,
                tmpfs: on_tmpfs,
                cocoon_config,
                ..Extra::default()
            }
        });
    containerd.import_image(IMAGE, &["--host-tool", "/bin/date:/usr/bin/date-ns"]);
    containerd
}

/// `with_share` adds Cocoon writing through the share (the state before the
/// scratch disk): one run of it takes over 11 minutes under emulation.
pub fn measure(runtime: &LocalRuntime, runs: usize, with_share: bool, summary: &mut Summary) {
    // Without a disk, everything goes where it went before there was one.
    let file_system = file_system_type(std::path::Path::new(DATA_DIR));
    let on_tmpfs = file_system == "overlayfs";
    let (dir, data) = if on_tmpfs {
        let dir = tempfile::tempdir().expect("temporary directory");
        (dir, format!("tmpfs ({DATA_DIR} is on {file_system})"))
    } else {
        let dir = tempfile::tempdir_in(DATA_DIR).expect("temporary directory");
        (dir, format!("{file_system} ({DATA_DIR})"))
    };
    let config = |name: &str, more: &str| {
        format!(
            "template_dir = {:?}\nscratch_dir = {:?}\n{more}",
            dir.path().join(name).join("templates"),
            dir.path().join(name).join("scratch"),
        )
    };
    // Writable layers on the scratch disk (the default), and through the
    // share as before it (scratch_disk_gib = 0); runc through the first.
    let layered = containerd(
        runtime,
        on_tmpfs,
        config("layered", "scratch_disk_gib = 10\n"),
    );
    let shared = with_share.then(|| {
        containerd(
            runtime,
            on_tmpfs,
            config("shared", "scratch_disk_gib = 0\n"),
        )
    });
    let script = script();
    let run = |containerd: &Containerd, runtime: &str, id: &str| {
        let out = containerd.run_image(
            "overlayfs",
            IMAGE,
            runtime,
            &["--rm"],
            id,
            &["sh", "-c", &script],
        );
        let phases = Phases::parse(&ok(out, &format!("the rootfs workload on {runtime}")));
        println!("  {id}: {phases}");
        phases
    };
    let mut cocoon = Vec::new();
    let mut through_share = Vec::new();
    let mut runc = Vec::new();
    for i in 0..runs {
        cocoon.push(run(&layered, RUNTIME, &format!("rootfs-cocoon{i}")));
        if let Some(shared) = &shared {
            through_share.push(run(shared, RUNTIME, &format!("rootfs-share{i}")));
        }
        runc.push(run(&layered, RUNC, &format!("rootfs-runc{i}")));
    }

    println!(
        "file work in the container's root file system (overlayfs snapshotter; containerd's root and \
         the scratch disks' files on {data}), median of {runs} interleaved \
         (cocoon: writable layer on the scratch disk{}):",
        if with_share { "; through the share: scratch_disk_gib = 0, as before" } else { "" }
    );
    let mut report = |what: &str,
                      unit: &str,
                      amount: f64,
                      target: &str,
                      phase: fn(&Phases) -> f64| {
        let rate = |runs: &[Phases]| amount / median(runs.iter().map(phase).collect());
        let (cocoon_rate, runc_rate) = (rate(&cocoon), rate(&runc));
        let ratio = cocoon_rate / runc_rate;
        print!("  {what:<36} cocoon {cocoon_rate:9.1}  runc {runc_rate:9.1} {unit}  ratio {ratio:.2} (target {target})");
        summary.compare(
            &format!("rootfs: {what} (vs runc)"),
            cocoon_rate,
            runc_rate,
            unit,
            target,
        );
        if with_share {
            let share_rate = rate(&through_share);
            print!(
                "; through the share {share_rate:.1} {unit}, ratio {:.2}",
                share_rate / runc_rate
            );
            summary.compare(
                &format!("rootfs: {what}, through the share (vs runc)"),
                share_rate,
                runc_rate,
                unit,
                "-",
            );
        }
        println!();
    };
    let files = f64::from(SMALL_FILES);
    let big = f64::from(BIG_MIB);
    let tree = f64::from(TREE_FILES * TREE_FILE_KIB) / 1024.0;
    report(
        "1000 shell loop turns, no file work",
        "turns/s",
        files,
        "-",
        |p| p.loop_only,
    );
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
