//! HTTP download from a pod, Cocoon against runc: busybox `httpd` in a pod
//! of each handler serves a file of zeros written in the pod, before httpd
//! starts, into a memory-backed emptyDir (in a Cocoon pod a guest tmpfs, in
//! a runc pod the host's tmpfs), so the network is measured and not the
//! root file system. The client is this bench on the host: a plain
//! HTTP/1.0 GET to the pod's IP over the CNI bridge, timed from connect to
//! EOF, the bytes counted. Median of [`RUNS`], interleaved.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_tests::cri::{busybox_container, Cri, BUSYBOX, COCOON_HANDLER};

use crate::kvm_stats::KvmStats;
use crate::median_ms;
use crate::pod_start::RUNC_HANDLER;
use crate::summary::Summary;

/// The file's size in MiB, as issue 13 asks. Cocoon's download takes
/// ~30 s at the guest → host speed of virtio-net in the emulated host VM
/// (3-4 MB/s); at the slowest rate seen there (0.3 MB/s) three would not fit
/// `make bench`'s time: `--http-mib` takes a smaller size.
pub const FILE_MIB: u64 = 100;
const RUNS: usize = 3;
const PORT: u16 = 8080;
/// The KVM counters that explain a frame's cost (docs/performance.md).
const KVM_COUNTERS: &[&str] = &[
    "exits",
    "mmio_exits",
    "io_exits",
    "irq_exits",
    "halt_exits",
    "halt_wakeup",
    "irq_injections",
    "request_irq_exits",
];

pub fn measure(cri: &Cri, file_mib: u64, summary: &mut Summary) {
    let bytes = file_mib << 20;
    println!(
        "HTTP GET of a {file_mib} MiB file from a pod's busybox httpd (file on a memory-backed emptyDir) to the host, median of {RUNS}:"
    );
    cri.crictl_ok(&["pull", BUSYBOX]);
    let cocoon = Server::start(cri, COCOON_HANDLER, file_mib);
    let runc = Server::start(cri, RUNC_HANDLER, file_mib);
    let mut cocoon_times = Vec::new();
    let mut runc_times = Vec::new();
    let kvm_before = KvmStats::read();
    for _ in 0..RUNS {
        cocoon_times.push(download(&cocoon.address, bytes));
        runc_times.push(download(&runc.address, bytes));
    }
    // Only the Cocoon pod's VM runs meanwhile: what its downloads cost KVM.
    match (kvm_before, KvmStats::read()) {
        (Some(before), Some(after)) => println!(
            "  KVM events per MiB sent by the Cocoon pod: {}",
            after.per_unit_since(&before, KVM_COUNTERS, (RUNS as u64 * file_mib) as f64)
        ),
        _ => println!("  (no KVM counters: debugfs cannot be mounted)"),
    }
    for server in [cocoon, runc] {
        server.remove(cri);
    }
    let megabytes_per_second = |ms: f64| bytes as f64 / 1e6 / (ms / 1000.0);
    let cocoon_rate = megabytes_per_second(median_ms(&mut cocoon_times));
    let runc_rate = megabytes_per_second(median_ms(&mut runc_times));
    println!("  cocoon                 {cocoon_rate:8.1} MB/s");
    println!("  runc                   {runc_rate:8.1} MB/s");
    println!(
        "  ratio cocoon/runc      {:8.2}   (target ≥ 0.5)",
        cocoon_rate / runc_rate
    );
    summary.compare(
        &format!("HTTP GET {file_mib} MiB from a pod (vs runc)"),
        cocoon_rate,
        runc_rate,
        "MB/s",
        "≥ 0.5",
    );
}

/// A pod serving `/file` on [`PORT`].
struct Server {
    pod: String,
    address: SocketAddr,
    volume: MemoryVolume,
}

impl Server {
    fn start(cri: &Cri, handler: &str, file_mib: u64) -> Self {
        let name = format!("http-{handler}");
        let mut pod = cri.pod_config(&name);
        // Room for the file in the guest: an emptyDir tmpfs may fill half
        // the guest's memory, which is the configured base plus the pod's
        // limit (no effect on a runc pod: containerd 1.6 only passes it on).
        pod["linux"]["resources"]["memory_limit_in_bytes"] =
            serde_json::json!((2 * file_mib + 64) << 20);
        let uid = pod["metadata"]["uid"]
            .as_str()
            .expect("a pod uid")
            .to_owned();
        let volume = MemoryVolume::mount(cri.dir(), &uid, "www", file_mib + 16);
        let script = format!(
            "dd if=/dev/zero of=/www/file bs=1048576 count={file_mib} && exec httpd -f -p {PORT} -h /www"
        );
        let mounts = serde_json::json!([{
            "container_path": "/www",
            "host_path": volume.path,
        }]);
        let started = cri.start_pod(handler, &pod, &busybox_container("httpd", &script, mounts));
        let address = SocketAddr::new(
            cri.pod_ip(&started.pod)
                .parse()
                .expect("an IP address from CNI"),
            PORT,
        );
        wait_until_listening(&address, Duration::from_secs(300), &name);
        // What the file sits on, and the memory the pod's kernel has.
        let seen = cri.crictl_ok(&[
            "exec",
            &started.container,
            "sh",
            "-c",
            // One line, one write: runc's exec output lost all but the
            // first line of several.
            "echo $(grep -m1 MemTotal /proc/meminfo) / $(grep ' /www ' /proc/mounts) / $(ls -l /www/file)",
        ]);
        println!("  {name}: {seen}");
        Server {
            pod: started.pod,
            address,
            volume,
        }
    }

    fn remove(self, cri: &Cri) {
        cri.remove_pod(&self.pod);
        drop(self.volume);
    }
}

/// Waits until the server takes connections: httpd starts after the file
/// is whole.
fn wait_until_listening(address: &SocketAddr, limit: Duration, name: &str) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect_timeout(address, Duration::from_secs(5)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{name}: nothing listens on {address} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `GET /file` from `address`, which must answer 200 with exactly `bytes`
/// of body; the time from connect to EOF.
fn download(address: &SocketAddr, bytes: u64) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(address, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    // A stalled transfer fails instead of hanging the bench.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("socket read timeout");
    stream
        .write_all(format!("GET /file HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .unwrap_or_else(|e| panic!("sending the request to {address}: {e}"));
    let mut head = Vec::new();
    let mut body: u64 = 0;
    let mut buffer = vec![0u8; 256 << 10];
    loop {
        let read = stream
            .read(&mut buffer)
            .unwrap_or_else(|e| panic!("reading from {address} after {body} bytes: {e}"));
        if read == 0 {
            break;
        }
        if body == 0 && !head.ends_with(b"\r\n\r\n") {
            // Still in the header: split it off at its blank line.
            head.extend_from_slice(&buffer[..read]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                body = (head.len() - end - 4) as u64;
                head.truncate(end + 4);
            }
            assert!(head.len() < 64 << 10, "no end of the HTTP header");
        } else {
            body += read as u64;
        }
    }
    let elapsed = started.elapsed();
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET /file from {address}: {head}"
    );
    assert_eq!(body, bytes, "body bytes from {address} ({head})");
    elapsed
}

/// A kubelet emptyDir with `medium: Memory`: a tmpfs at
/// `<pod dir>/volumes/kubernetes.io~empty-dir/<name>`, the path from which
/// the shim knows to make it a guest tmpfs instead. Unmounted when dropped.
struct MemoryVolume {
    path: PathBuf,
}

impl MemoryVolume {
    fn mount(dir: &Path, pod_uid: &str, name: &str, size_mib: u64) -> Self {
        let path = dir
            .join("pods")
            .join(pod_uid)
            .join("volumes/kubernetes.io~empty-dir")
            .join(name);
        std::fs::create_dir_all(&path).expect("emptyDir directory");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs");
        assert!(mounted.success(), "mounting a tmpfs on {}", path.display());
        MemoryVolume { path }
    }
}

impl Drop for MemoryVolume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}
