//! virtio-net under real KVM, as a pod uses it: a tap made here (root, in the
//! host VM) with 10.0.99.1/24 on the host side is handed to cocoon-vmm
//! (`--net-fd`, `--net-mac`), the real guest boots with the agent, and a
//! busybox container in the guest's root network namespace (with
//! CAP_NET_ADMIN) brings eth0 up as 10.0.99.2, checks its MAC, pings the
//! host and moves 20 MiB each way over TCP with checksums, which exercises
//! the checksum and TSO offloads and merged rx buffers. The throughput of
//! each direction is printed (`--nocapture`).

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cocoon_protocol::api::agent::{ProcessExit, Stdio as AgentStdio};
use cocoon_protocol::client::{Agent, AgentCalls};
use cocoon_protocol::stream::{StreamHeader, StreamKind};
use cocoon_tests::oci;
use cocoon_tests::pattern::{checksum_stream, pattern_checksum, PatternReader};
use cocoon_tests::sandbox::Sandbox;
use cocoon_tests::{readable_within, require_hardware_kvm};
use cocoon_vmm_command::NetDevice;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

const MEMORY_MIB: u32 = 512;
const HOST_IP: &str = "10.0.99.1";
const GUEST_IP: &str = "10.0.99.2";
const MAC: [u8; 6] = [0x02, 0xc0, 0xc0, 0x00, 0x99, 0x02];
const BULK: u64 = 20 << 20;
/// Guest to host: the guest sends, we answer "<bytes> <checksum>".
const PORT_UPLOAD: u16 = 5001;
/// Host to guest: we send; the guest connects to PORT_RECEIVED once it has
/// it all, then sends its md5sum on PORT_SUM.
const PORT_DOWNLOAD: u16 = 5002;
const PORT_SUM: u16 = 5003;
const PORT_RECEIVED: u16 = 5004;
const TRANSFER_LIMIT: Duration = Duration::from_secs(300);

/// A tap opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, without CLOEXEC
/// (cocoon-vmm inherits it), and its name.
fn open_tap() -> (OwnedFd, String) {
    if !std::path::Path::new("/dev/net/tun").exists() {
        let status = Command::new("modprobe").arg("tun").status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "/dev/net/tun is missing and `modprobe tun` failed: {status:?}"
        );
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun (as root)");
    let mut ifr = [0u8; 40];
    ifr[..10].copy_from_slice(b"cocoonnet%");
    ifr[10] = b'd';
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    ifr[16..18].copy_from_slice(&(flags as libc::c_short).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq (40 bytes).
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, ifr.as_mut_ptr()) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    let name_len = ifr[..16].iter().position(|&b| b == 0).unwrap_or(16);
    let name = String::from_utf8_lossy(&ifr[..name_len]).into_owned();
    // SAFETY: F_SETFD with 0 clears FD_CLOEXEC on an fd we own.
    let rc = unsafe { libc::fcntl(tun.as_raw_fd(), libc::F_SETFD, 0) };
    assert_eq!(rc, 0, "clearing CLOEXEC");
    (tun.into(), name)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn md5_of_pattern(len: u64) -> String {
    let mut md5 = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    let mut stdin = md5.stdin.take().expect("stdin");
    std::io::copy(&mut PatternReader::new(len), &mut stdin).expect("pattern into md5sum");
    drop(stdin);
    let out = md5.wait_with_output().expect("md5sum output");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn accept(listener: &TcpListener) -> TcpStream {
    assert!(
        readable_within(listener, TRANSFER_LIMIT),
        "the guest never connected"
    );
    let (stream, _) = listener.accept().expect("accept");
    stream
        .set_read_timeout(Some(TRANSFER_LIMIT))
        .expect("timeout");
    stream
        .set_write_timeout(Some(TRANSFER_LIMIT))
        .expect("timeout");
    stream
}

/// What the host side measured: (bytes, checksum, seconds) of the upload,
/// (md5 the guest reported, seconds) of the download.
struct HostSide {
    upload: (u64, u64, f64),
    download: (String, f64),
}

fn serve(
    upload: TcpListener,
    download: TcpListener,
    received: TcpListener,
    sums: TcpListener,
) -> HostSide {
    let mut stream = accept(&upload);
    let started = Instant::now();
    let (bytes, sum) = checksum_stream(&mut stream).expect("read the guest's upload");
    let upload_secs = started.elapsed().as_secs_f64();
    let _ = stream.write_all(format!("{bytes} {sum:016x}\n").as_bytes());
    drop(stream);

    let mut stream = accept(&download);
    let started = Instant::now();
    std::io::copy(&mut PatternReader::new(BULK), &mut stream).expect("send to the guest");
    stream.shutdown(Shutdown::Write).expect("shutdown");
    drop(accept(&received));
    let download_secs = started.elapsed().as_secs_f64();
    let mut reply = String::new();
    BufReader::new(accept(&sums))
        .read_line(&mut reply)
        .expect("the guest's md5sum");
    HostSide {
        upload: (bytes, sum, upload_secs),
        download: (
            reply
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
            download_secs,
        ),
    }
}

/// The container: the guest's root network namespace (no "network" entry)
/// and CAP_NET_ADMIN to configure eth0.
fn spec(script: &str) -> Value {
    let mut spec = oci::spec(&["/bin/sh", "-c", script]);
    spec["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .retain(|ns| ns["type"] != "network");
    for set in ["bounding", "effective", "permitted"] {
        spec["process"]["capabilities"][set]
            .as_array_mut()
            .expect("capabilities")
            .push(json!("CAP_NET_ADMIN"));
    }
    spec
}

async fn run(
    agent: &Agent,
    sandbox: &Sandbox,
    id: &str,
    spec: &Value,
) -> (String, String, ProcessExit) {
    let mut stdio = AgentStdio::new();
    stdio.stdout = true;
    stdio.stderr = true;
    let rootfs = sandbox.busybox_rootfs(id);
    agent
        .create_container(id, serde_json::to_vec(spec).expect("spec"), &rootfs, stdio)
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e}\n{}", sandbox.diagnostics()));
    let open = |kind| StreamHeader {
        container_id: id.into(),
        exec_id: String::new(),
        kind,
    };
    let mut stdout = agent
        .open_stream(&open(StreamKind::Stdout))
        .await
        .expect("stdout");
    let mut stderr = agent
        .open_stream(&open(StreamKind::Stderr))
        .await
        .expect("stderr");
    let out = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes).await;
        bytes
    });
    let err = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes).await;
        bytes
    });
    agent.start(id).await.expect("start");
    let exit = agent.wait(id, "").await.expect("wait");
    let out = String::from_utf8_lossy(&out.await.expect("stdout")).into_owned();
    let err = String::from_utf8_lossy(&err.await.expect("stderr")).into_owned();
    agent.remove_container(id, true).await.expect("remove");
    (out, err, exit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs real KVM and root: runs inside tests/kvm-host (make kvm-test)"]
async fn a_container_reaches_the_host_through_the_tap() {
    require_hardware_kvm();
    let (tap, name) = open_tap();
    ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", &name]);
    ip(&["link", "set", &name, "up"]);
    let listen = |port| TcpListener::bind((HOST_IP, port)).expect("listen on the tap's address");
    let (upload, download) = (listen(PORT_UPLOAD), listen(PORT_DOWNLOAD));
    let (received, sums) = (listen(PORT_RECEIVED), listen(PORT_SUM));
    let host = std::thread::spawn(move || serve(upload, download, received, sums));
    // cocoon-vmm's dropped frames are warnings; the test prints them.
    std::env::set_var("COCOON_VMM_LOG", "warn");

    let sandbox = Sandbox::boot_with_net(
        MEMORY_MIB,
        Some(NetDevice {
            tap_fd: tap.as_raw_fd(),
            mac: MAC,
        }),
    );
    let agent = sandbox.agent().await;
    let script = format!(
        "set -e; ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0; \
         echo MAC $(cat /sys/class/net/eth0/address); \
         echo NAPI_TX $(cat /sys/module/virtio_net/parameters/napi_tx); \
         ping -c 3 -W 10 {HOST_IP} >/dev/null && echo PING-OK; \
         probe pattern {BULK} > /tmp/up; \
         echo UPLOAD $(nc {HOST_IP} {PORT_UPLOAD} < /tmp/up); rm /tmp/up; \
         nc {HOST_IP} {PORT_DOWNLOAD} </dev/null > /tmp/down; nc {HOST_IP} {PORT_RECEIVED} </dev/null; \
         md5sum < /tmp/down | nc {HOST_IP} {PORT_SUM}; \
         echo DONE"
    );
    let (out, err, exit) = run(&agent, &sandbox, "net", &spec(&script)).await;
    let context = || format!("stdout:\n{out}\nstderr:\n{err}\n{}", sandbox.diagnostics());
    assert_eq!(exit.exit_status, 0, "{}", context());
    let mac = MAC.map(|b| format!("{b:02x}")).join(":");
    assert!(out.contains(&format!("MAC {mac}\n")), "{}", context());
    // cocoon-vmm put the driver's parameter on the kernel command line.
    assert!(out.contains("NAPI_TX N\n"), "{}", context());
    assert!(out.contains("PING-OK\n"), "{}", context());
    let expected = format!("UPLOAD {BULK} {:016x}\n", pattern_checksum(BULK));
    assert!(
        out.contains(&expected),
        "expected {expected:?}; {}",
        context()
    );
    assert!(out.contains("DONE\n"), "{}", context());

    let side = host.join().expect("host side");
    let counters = Command::new("ip")
        .args(["-s", "link", "show", "dev", &name])
        .output()
        .expect("ip -s link");
    println!(
        "tap counters:\n{}\ncocoon-vmm log:\n{}",
        String::from_utf8_lossy(&counters.stdout),
        sandbox
            .diagnostics()
            .split("--- cocoon-vmm ---")
            .nth(1)
            .unwrap_or("")
    );
    let (bytes, sum, upload_secs) = side.upload;
    assert_eq!((bytes, sum), (BULK, pattern_checksum(BULK)));
    let (md5, download_secs) = side.download;
    assert_eq!(
        md5,
        md5_of_pattern(BULK),
        "the guest's md5sum of what it received"
    );
    let mib = (BULK >> 20) as f64;
    println!(
        "virtio-net throughput (in this host VM): guest->host {:.1} MB/s ({mib} MiB in {upload_secs:.2} s), host->guest {:.1} MB/s ({mib} MiB in {download_secs:.2} s)",
        BULK as f64 / 1e6 / upload_secs,
        BULK as f64 / 1e6 / download_secs,
    );
    sandbox.terminate();
    assert!(sandbox.wait_exit(Duration::from_secs(30)).await.is_some());
    drop(tap);
}
