//! nerdctl with `--runtime io.containerd.cocoon.v1` against a private
//! containerd, as a user runs it: `run` (stdout, stderr,
//! exit code, `-it`, `-e`, `-w`, `-u`, a bind mount and a named volume),
//! `run -d`, `exec`, `logs`, `stop`, `rm`; host namespaces refused by name;
//! the default `bridge` network through nerdctl's CNI hooks (run by the
//! shim on the host, the namespace passed in `nerdctl/network-namespace`)
//! with `-p`: busybox httpd in the VM fetched from the host. Nothing may be
//! left after `rm`. Each scenario is one body (`<name>_on`) run on Debian's
//! containerd 1.6 (`<name>`) and on the containerd 2.x `make deps` builds
//! (`<name>_containerd2`; the bridge one is `conformance_`, `make
//! conformance`: CI's time, docs/testing.md).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Output;
use std::time::{Duration, Instant};

use cocoon_tests::containerd::{text, Version};
use cocoon_tests::nerdctl::{Nerdctl, IMAGE};
use cocoon_tests::require_hardware_kvm;

/// `(stdout, stderr, exit code)` of a finished command.
fn said(out: &Output) -> (String, String, Option<i32>) {
    (text(&out.stdout), text(&out.stderr), out.status.code())
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn nerdctl_runs_execs_logs_and_removes_microvm_containers() {
    nerdctl_runs_execs_logs_and_removes_microvm_containers_on(Version::V1_6);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn nerdctl_runs_execs_logs_and_removes_microvm_containers_containerd2() {
    nerdctl_runs_execs_logs_and_removes_microvm_containers_on(Version::V2);
}

fn nerdctl_runs_execs_logs_and_removes_microvm_containers_on(version: Version) {
    require_hardware_kvm();
    let nerdctl = Nerdctl::start_with_busybox(version);
    let started = Instant::now();

    // stdout, stderr and the exit code come back apart.
    let out = nerdctl.run(
        &["--rm", "--network", "none"],
        &["sh", "-c", "echo out; echo err >&2; exit 42"],
    );
    let (stdout, stderr, code) = said(&out);
    assert_eq!(
        (stdout.as_str(), code),
        ("out\n", Some(42)),
        "stderr: {stderr}\ncontainerd log:\n{}",
        nerdctl.containerd.log()
    );
    assert!(stderr.contains("err"), "{stderr}");
    eprintln!("nerdctl run --rm: {:?}", started.elapsed());

    // -e, -w, -u.
    let out = nerdctl.run(
        &[
            "--rm",
            "--network",
            "none",
            "-e",
            "GREETING=from-nerdctl",
            "-w",
            "/tmp",
            "-u",
            "1000:1001",
        ],
        &["sh", "-c", "echo $GREETING $(pwd) $(id -u):$(id -g)"],
    );
    assert_eq!(
        said(&out).0,
        "from-nerdctl /tmp 1000:1001\n",
        "{}",
        said(&out).1
    );

    // -it: a terminal in the VM.
    let (code, output) = nerdctl.in_terminal(&format!(
        "run --rm -it --runtime io.containerd.cocoon.v1 --network none {IMAGE} \
         sh -c 'tty; echo in-a-tty'"
    ));
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("/dev/pts/") && output.contains("in-a-tty"),
        "{output}"
    );

    // A host directory and a named volume.
    let host_dir = nerdctl.containerd.dir().join("shared");
    std::fs::create_dir(&host_dir).expect("the host directory");
    std::fs::write(host_dir.join("in"), "from-the-host\n").expect("a host file");
    let bind = format!("{}:/data", host_dir.display());
    let out = nerdctl.run(
        &["--rm", "--network", "none", "-v", &bind],
        &["sh", "-c", "cat /data/in; echo from-the-vm > /data/out"],
    );
    assert_eq!(said(&out).0, "from-the-host\n", "{}", said(&out).1);
    assert_eq!(
        std::fs::read_to_string(host_dir.join("out")).expect("the guest's file on the host"),
        "from-the-vm\n"
    );
    nerdctl.ok(&["volume", "create", "kept"]);
    let out = nerdctl.run(
        &["--rm", "--network", "none", "-v", "kept:/vol"],
        &["sh", "-c", "echo persisted > /vol/f"],
    );
    assert_eq!(said(&out).2, Some(0), "{}", said(&out).1);
    let out = nerdctl.run(
        &["--rm", "--network", "none", "-v", "kept:/vol"],
        &["cat", "/vol/f"],
    );
    assert_eq!(said(&out).0, "persisted\n", "{}", said(&out).1);
    nerdctl.ok(&["volume", "rm", "kept"]);

    // run -d, exec, logs, stop, rm.
    nerdctl.ok(&[
        "run",
        "-d",
        "--name",
        "sleeper",
        "--runtime",
        "io.containerd.cocoon.v1",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo started; exec sleep 600",
    ]);
    let out = nerdctl.output(&["exec", "sleeper", "sh", "-c", "echo exec $((6 * 7))"]);
    assert_eq!(said(&out).0, "exec 42\n", "{}", said(&out).1);
    let logs = nerdctl.wait_for(&["logs", "sleeper"], "started", Duration::from_secs(30));
    assert_eq!(logs, "started\n");
    nerdctl.ok(&["stop", "-t", "2", "sleeper"]);
    let listed = nerdctl.ok(&["ps", "-a"]);
    assert!(
        listed.contains("sleeper") && listed.contains("Exited"),
        "{listed}"
    );
    nerdctl.ok(&["rm", "sleeper"]);
    nerdctl.assert_nothing_left();

    // Host namespaces: refused, naming the option.
    for (flags, named) in [
        (["--net=host", "--rm"], "--net=host"),
        (["--pid=host", "--network=none"], "--pid=host"),
        (["--ipc=host", "--network=none"], "--ipc=host"),
    ] {
        let flag = flags[0];
        let out = nerdctl.run(&flags, &["true"]);
        let (_, stderr, code) = said(&out);
        assert_ne!(code, Some(0), "{flag} ran");
        assert!(
            stderr.contains(named) && stderr.contains("not supported"),
            "{flag}: {stderr}"
        );
    }
    let leftover = nerdctl.ok(&["ps", "-a", "-q"]);
    for id in leftover.split_whitespace() {
        nerdctl.ok(&["rm", "-f", id]);
    }
    nerdctl.assert_nothing_left();
    eprintln!("all scenarios: {:?}", started.elapsed());
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn nerdctl_bridge_network_publishes_a_port_of_the_microvm() {
    nerdctl_bridge_network_publishes_a_port_of_the_microvm_on(Version::V1_6);
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make conformance)"]
fn conformance_nerdctl_bridge_network_publishes_a_port_of_the_microvm_containerd2() {
    nerdctl_bridge_network_publishes_a_port_of_the_microvm_on(Version::V2);
}

fn nerdctl_bridge_network_publishes_a_port_of_the_microvm_on(version: Version) {
    require_hardware_kvm();
    let nerdctl = Nerdctl::start_with_busybox(version);
    let port = free_port();
    let publish = format!("{port}:80");
    let started = Instant::now();
    nerdctl.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--runtime",
        "io.containerd.cocoon.v1",
        "--network",
        "bridge",
        "-p",
        &publish,
        IMAGE,
        "sh",
        "-c",
        "mkdir /www && echo hello-from-cocoon > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    eprintln!("nerdctl run -d with -p: {:?}", started.elapsed());
    // The guest has the address CNI gave the namespace.
    let addresses = nerdctl.ok(&["exec", "web", "ip", "addr", "show", "eth0"]);
    assert!(addresses.contains("10.4.0."), "{addresses}");
    let page = fetch(port, Duration::from_secs(60));
    assert!(page.contains("hello-from-cocoon"), "{page}");
    eprintln!("fetched through -p: {:?}", started.elapsed());

    nerdctl.ok(&["rm", "-f", "web"]);
    nerdctl.assert_nothing_left();
    let rules = std::process::Command::new("iptables-save")
        .output()
        .map(|out| text(&out.stdout))
        .unwrap_or_default();
    assert!(
        !rules.contains(&format!("--dport {port}")),
        "the port mapping outlived the container:\n{rules}"
    );
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `GET /` from 127.0.0.1:`port`, retried until it answers (at most
/// `limit`); the response, or the last error.
fn fetch(port: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let got = (|| -> std::io::Result<String> {
            let mut stream = TcpStream::connect(("127.0.0.1", port))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })();
        match got {
            Ok(response) if response.contains(" 200 ") => return response,
            other if Instant::now() > deadline => {
                return format!("no page within {limit:?}: {other:?}");
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}
