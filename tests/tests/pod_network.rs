//! The pod network end to end through containerd (`ctr`): a network
//! namespace wired by hand as CNI's bridge plugin wires it (a bridge with
//! the gateway address in a second namespace standing in for the host, a
//! veth into the pod's namespace with the pod's address and routes), given
//! to the sandbox as its network namespace path; the guest gets the veth's
//! MAC, addresses and routes, pings the gateway and is pinged from the
//! "host"; deleting the sandbox (or `shim delete` after its shim was
//! killed) removes the tap and the redirects and leaves CNI's namespace and
//! veth alone. Also: host networking is refused, and a namespace without a
//! path gives the guest only `lo`.

use std::process::Command;

use cocoon_tests::containerd::{ok, text, Containerd, RUNTIME};
use cocoon_tests::require_hardware_kvm;

const POD_MAC: &str = "0a:58:0a:58:00:05";

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The pod's namespace and the "host" namespace with the bridge, removed
/// when dropped (after the sandbox: the shim must have left them intact).
struct CniNetwork {
    pod: String,
    host: String,
}

impl CniNetwork {
    fn new() -> CniNetwork {
        // What CNI and the shim use, loaded up front: the host VM has no
        // udev (the tap's device node comes with the module).
        for module in [
            "tun",
            "veth",
            "bridge",
            "sch_ingress",
            "cls_u32",
            "act_mirred",
        ] {
            let loaded = Command::new("modprobe").arg(module).status();
            assert!(
                matches!(loaded, Ok(status) if status.success()),
                "`modprobe {module}` failed: {loaded:?}"
            );
        }
        let base = format!("cocoon-kvm{}", std::process::id());
        let network = CniNetwork {
            pod: format!("{base}-pod"),
            host: format!("{base}-host"),
        };
        let (pod, host) = (network.pod.as_str(), network.host.as_str());
        ip(&["netns", "add", pod]);
        ip(&["netns", "add", host]);
        ip(&["-n", host, "link", "add", "cni0", "type", "bridge"]);
        ip(&["-n", host, "addr", "add", "10.88.0.1/16", "dev", "cni0"]);
        ip(&["-n", host, "link", "set", "cni0", "up"]);
        ip(&[
            "-n", host, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns",
            pod,
        ]);
        ip(&["-n", host, "link", "set", "veth0", "master", "cni0", "up"]);
        ip(&["-n", pod, "link", "set", "lo", "up"]);
        ip(&[
            "-n", pod, "link", "set", "eth0", "mtu", "1450", "address", POD_MAC,
        ]);
        ip(&["-n", pod, "addr", "add", "10.88.0.5/16", "dev", "eth0"]);
        ip(&["-n", pod, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            pod,
            "route",
            "add",
            "default",
            "via",
            "10.88.0.1",
            "dev",
            "eth0",
        ]);
        network
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.pod)
    }

    /// The tap and the veth's ingress qdisc are gone; CNI's veth and its
    /// address stay.
    fn assert_ours_gone(&self) {
        let links = ip(&["-n", &self.pod, "-o", "link", "show"]);
        assert!(!links.contains("tap0_cocoon"), "the tap is gone:\n{links}");
        let qdiscs = text(
            &Command::new("tc")
                .args(["-n", &self.pod, "qdisc", "show", "dev", "eth0"])
                .output()
                .expect("tc")
                .stdout,
        );
        assert!(
            !qdiscs.contains("ingress"),
            "the veth's ingress qdisc is gone:\n{qdiscs}"
        );
        let addresses = ip(&["-n", &self.pod, "-o", "addr", "show", "eth0"]);
        assert!(
            addresses.contains("10.88.0.5/16"),
            "CNI's veth and address stay:\n{addresses}"
        );
    }
}

impl Drop for CniNetwork {
    fn drop(&mut self) {
        for name in [&self.pod, &self.host] {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn the_guest_gets_the_pods_veth_and_traffic_flows_both_ways() {
    require_hardware_kvm();
    let network = CniNetwork::new();
    let containerd = Containerd::start();
    containerd.import_busybox();
    let with_ns = format!("network:{}", network.path());

    containerd.start_sleeping(&["--with-ns", &with_ns], "web");
    let said = containerd.exec(
        "web",
        "look",
        "ip -o link show eth0; ip -o addr show eth0; ip route; ping -c 3 -W 5 10.88.0.1",
    );
    assert!(
        said.contains(POD_MAC),
        "the guest's eth0 has the veth's MAC:\n{said}"
    );
    assert!(said.contains("mtu 1450"), "and its MTU:\n{said}");
    assert!(
        said.contains("inet 10.88.0.5/16"),
        "and its address:\n{said}"
    );
    assert!(
        said.contains("default via 10.88.0.1 dev eth0"),
        "and its routes:\n{said}"
    );
    assert!(
        said.contains("3 packets received"),
        "the gateway answers:\n{said}"
    );

    // From the "host" side to the guest (busybox-static's ping: the host
    // may have none of its own).
    let pinged = Command::new("ip")
        .args([
            "netns",
            "exec",
            &network.host,
            "/bin/busybox",
            "ping",
            "-c",
            "3",
            "-W",
            "5",
            "10.88.0.5",
        ])
        .output()
        .expect("ping");
    assert!(
        pinged.status.success(),
        "the host side reaches the guest: {}{}",
        text(&pinged.stdout),
        text(&pinged.stderr)
    );

    // What the shim added, while the sandbox runs.
    let links = ip(&["-n", &network.pod, "-o", "link", "show"]);
    assert!(links.contains("tap0_cocoon"), "{links}");

    containerd.kill_and_delete("web");
    containerd.assert_nothing_left();
    network.assert_ours_gone();
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_crashed_shims_tap_and_redirects_are_removed_by_shim_delete() {
    require_hardware_kvm();
    let network = CniNetwork::new();
    let containerd = Containerd::start();
    containerd.import_busybox();
    let with_ns = format!("network:{}", network.path());
    containerd.start_sleeping(&["--with-ns", &with_ns], "orphan");
    // The VMM outlives its shim and holds the tap until `shim delete`
    // (which containerd runs for a dead shim) kills it; the veth's
    // qdisc would stay for good without the record in the state dir.
    containerd.crash_shim_and_delete("orphan");
    containerd.assert_nothing_left();
    network.assert_ours_gone();
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn host_networking_is_refused_and_an_empty_namespace_gives_only_lo() {
    require_hardware_kvm();
    let containerd = Containerd::start();
    containerd.import_busybox();

    let out = containerd.run(RUNTIME, &["--rm", "--net-host"], "hostnet", &["true"]);
    assert!(!out.status.success(), "host networking must be refused");
    assert!(
        text(&out.stderr).contains("host networking is not supported"),
        "{}",
        text(&out.stderr)
    );
    // A refused Create leaves no container behind to delete.
    let _ = containerd.ctr(&["container", "delete", "hostnet"]);
    containerd.assert_nothing_left();

    let out = containerd.run(RUNTIME, &["--rm"], "nonet", &["ip", "-o", "link", "show"]);
    let links = ok(out, "ctr run nonet");
    assert_eq!(links.lines().count(), 1, "only lo:\n{links}");
    assert!(links.contains(": lo:"), "{links}");
    containerd.assert_nothing_left();
}
