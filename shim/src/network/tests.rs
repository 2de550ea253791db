//! The scan, the tap and the redirects against real network namespaces,
//! wired as CNI's bridge plugin would. They need root (network namespaces,
//! veths, /dev/net/tun), as `make unit-test` is run; run by anyone else
//! they say they were skipped.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::scan::{ScannedNeighbour, ScannedRoute};
use super::*;

const POD_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x58, 0x00, 0x05];
const GATEWAY_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x58, 0x00, 0x01];

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: needs root for network namespaces, veths and taps");
    false
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A pod's network namespace as CNI's bridge plugin leaves it: `eth0`, one
/// end of a veth whose other end is a port of bridge `br0` (10.88.0.1,
/// fd00:88::1) in a second namespace standing in for the host.
struct CniPod {
    pod: String,
    host: String,
}

impl CniPod {
    fn new() -> CniPod {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let base = format!("cocoon-t{}-{n}", std::process::id());
        let fixture = CniPod {
            pod: format!("{base}-pod"),
            host: format!("{base}-host"),
        };
        let (pod, host) = (fixture.pod.as_str(), fixture.host.as_str());
        ip(&["netns", "add", pod]);
        ip(&["netns", "add", host]);
        ip(&["-n", host, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", host, "addr", "add", "10.88.0.1/16", "dev", "br0"]);
        ip(&[
            "-n",
            host,
            "link",
            "set",
            "br0",
            "address",
            "0a:58:0a:58:00:01",
            "up",
        ]);
        ip(&[
            "-n", host, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns",
            pod,
        ]);
        ip(&["-n", host, "link", "set", "veth0", "master", "br0", "up"]);
        ip(&["-n", pod, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            pod,
            "link",
            "set",
            "eth0",
            "mtu",
            "1450",
            "address",
            "0a:58:0a:58:00:05",
        ]);
        ip(&["-n", pod, "addr", "add", "10.88.0.5/16", "dev", "eth0"]);
        ip(&[
            "-n",
            pod,
            "addr",
            "add",
            "fd00:88::5/64",
            "dev",
            "eth0",
            "nodad",
        ]);
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
        ip(&[
            "-n",
            pod,
            "route",
            "add",
            "10.99.0.0/16",
            "via",
            "10.88.0.1",
            "dev",
            "eth0",
            "src",
            "10.88.0.5",
            "metric",
            "50",
        ]);
        ip(&[
            "-n",
            pod,
            "route",
            "add",
            "192.168.50.0/24",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        ip(&[
            "-n",
            pod,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:88::1",
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            pod,
            "neigh",
            "add",
            "10.88.0.1",
            "lladdr",
            "0a:58:0a:58:00:01",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        fixture
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.pod)
    }

    /// What the pod's namespace holds of ours: the tap's index, whether
    /// eth0 and the tap have an ingress qdisc and how many filters each.
    fn ours(&self) -> Ours {
        in_netns::run(&self.path(), |handle| async move {
            let tap = link_index(&handle, TAP_NAME).await?;
            let eth0 = link_index(&handle, "eth0").await?.expect("eth0");
            let ingress = |qdiscs: Vec<rtnetlink::packet_route::tc::TcMessage>| {
                qdiscs
                    .iter()
                    .any(|q| q.header.parent == rtnetlink::packet_route::tc::TcHandle::INGRESS)
            };
            let filters = |index: u32| {
                let handle = handle.clone();
                async move {
                    let filters = handle
                        .traffic_filter(index as i32)
                        .get()
                        .ingress()
                        .execute()
                        .try_collect::<Vec<_>>()
                        .await
                        .unwrap_or_default();
                    redirects(&filters)
                }
            };
            Ok(Ours {
                eth0_index: eth0,
                tap_index: tap,
                tap_mtu_up: match tap {
                    Some(index) => Some(mtu_and_up(&handle, index).await),
                    None => None,
                },
                eth0_ingress: ingress(redirect::qdiscs(&handle, eth0).await?),
                eth0_redirects: filters(eth0).await,
                tap_redirects: match tap {
                    Some(index) => filters(index).await,
                    None => Vec::new(),
                },
            })
        })
        .expect("inspecting the pod's namespace")
    }
}

impl Drop for CniPod {
    fn drop(&mut self) {
        for name in [&self.pod, &self.host] {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Ours {
    eth0_index: u32,
    tap_index: Option<u32>,
    tap_mtu_up: Option<(u32, bool)>,
    eth0_ingress: bool,
    /// The interfaces each one's filters redirect every frame to.
    eth0_redirects: Vec<u32>,
    tap_redirects: Vec<u32>,
}

/// The egress-redirect targets of the `protocol all` filters among
/// `filters` (a u32 filter is listed as its table and its node).
fn redirects(filters: &[rtnetlink::packet_route::tc::TcMessage]) -> Vec<u32> {
    use rtnetlink::packet_route::tc::{
        TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute, TcFilterU32Option,
        TcMirrorActionType, TcOption,
    };
    let mut targets = Vec::new();
    for filter in filters {
        // tcm_info: priority << 16 | protocol (network byte order).
        if filter.header.info & 0xffff != u32::from(redirect::ETH_P_ALL) {
            continue;
        }
        for attribute in &filter.attributes {
            let TcAttribute::Options(options) = attribute else {
                continue;
            };
            for option in options {
                let TcOption::U32(TcFilterU32Option::Action(actions)) = option else {
                    continue;
                };
                for action in actions.iter().flat_map(|a| &a.attributes) {
                    let TcActionAttribute::Options(options) = action else {
                        continue;
                    };
                    for option in options {
                        if let TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror)) = option
                        {
                            if mirror.eaction == TcMirrorActionType::EgressRedir {
                                targets.push(mirror.ifindex);
                            }
                        }
                    }
                }
            }
        }
    }
    targets
}

async fn mtu_and_up(handle: &Handle, index: u32) -> (u32, bool) {
    use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
    let link = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .expect("getting the tap")
        .expect("the tap");
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .unwrap_or(0);
    (mtu, link.header.flags.contains(LinkFlags::Up))
}

fn addr(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn the_scan_sees_what_cni_made_less_what_the_guest_kernel_makes() {
    if !root() {
        return;
    }
    let pod = CniPod::new();
    let scanned = in_netns::run(
        &pod.path(),
        |handle| async move { scan::scan(&handle).await },
    )
    .unwrap()
    .expect("an interface");
    let interface = &scanned.interface;
    assert_eq!(interface.name, "eth0");
    assert_eq!(interface.mac, POD_MAC);
    assert_eq!(interface.mtu, 1450);
    // No fe80:: address: the guest makes its own.
    assert_eq!(
        interface.addresses,
        [(addr("10.88.0.5"), 16), (addr("fd00:88::5"), 64)]
    );
    let mut routes = scanned.routes.clone();
    routes.sort_by_key(|r| format!("{:?}", r.destination));
    let route =
        |destination: &str, prefix, gateway: Option<&str>, scope, source: Option<&str>, metric| {
            ScannedRoute {
                destination: (addr(destination), prefix),
                gateway: gateway.map(addr),
                scope,
                source: source.map(addr),
                metric,
            }
        };
    let mut expected = vec![
        route("0.0.0.0", 0, Some("10.88.0.1"), "universe", None, 0),
        route(
            "10.99.0.0",
            16,
            Some("10.88.0.1"),
            "universe",
            Some("10.88.0.5"),
            50,
        ),
        route("192.168.50.0", 24, None, "link", None, 0),
        // The kernel's default metric for an IPv6 route.
        route("::", 0, Some("fd00:88::1"), "universe", None, 1024),
    ];
    expected.sort_by_key(|r| format!("{:?}", r.destination));
    // Not 10.88.0.0/16, fd00:88::/64 nor fe80::/64: the kernel's.
    assert_eq!(routes, expected);
    assert_eq!(
        scanned.neighbours,
        [ScannedNeighbour {
            ip: addr("10.88.0.1"),
            mac: GATEWAY_MAC
        }]
    );

    let request = guest_config::setup_request(&scanned);
    assert_eq!(request.interfaces[0].mac, "0a:58:0a:58:00:05");
    assert_eq!(
        request.interfaces[0].addresses,
        ["10.88.0.5/16", "fd00:88::5/64"]
    );
    assert!(request
        .routes
        .iter()
        .any(|r| r.destination == "10.99.0.0/16" && r.source == "10.88.0.5" && r.device == "eth0"));
    assert_eq!(request.neighbours[0].mac, "0a:58:0a:58:00:01");
}

#[test]
fn the_tap_is_wired_to_the_veth_both_ways_and_detach_removes_it() {
    if !root() {
        return;
    }
    let pod = CniPod::new();
    let state = tempfile::tempdir().unwrap();
    let attached = attach(&pod.path(), state.path())
        .unwrap()
        .expect("an interface");
    assert_eq!(attached.mac, POD_MAC);
    assert_eq!(attached.request.interfaces[0].name, "eth0");
    let ours = pod.ours();
    let tap = ours.tap_index.expect("the tap exists");
    assert_eq!(
        ours,
        Ours {
            eth0_index: ours.eth0_index,
            tap_index: Some(tap),
            tap_mtu_up: Some((1450, true)),
            eth0_ingress: true,
            eth0_redirects: vec![tap],
            tap_redirects: vec![ours.eth0_index],
        }
    );
    assert!(NetworkRecord::read(state.path()).is_some());

    // What the guest sends reaches the bridge, and its answer the guest:
    // an ARP request for the gateway written to the tap comes back as the
    // bridge's reply.
    send_arp_request(&attached.tap);
    let reply = read_arp_reply(&attached.tap, Duration::from_secs(10));
    assert_eq!(&reply[0..6], &POD_MAC, "the reply is for the pod's MAC");
    assert_eq!(&reply[6..12], &GATEWAY_MAC, "the reply is the bridge's");

    detach(state.path());
    let eth0 = ours.eth0_index;
    assert_eq!(
        pod.ours(),
        Ours {
            eth0_index: eth0,
            tap_index: None,
            tap_mtu_up: None,
            eth0_ingress: false,
            eth0_redirects: Vec::new(),
            tap_redirects: Vec::new(),
        }
    );
    assert!(NetworkRecord::read(state.path()).is_none());
    // Detaching twice is harmless.
    detach(state.path());
}

#[test]
fn a_failed_attach_leaves_nothing_and_someone_elses_qdisc_alone() {
    if !root() {
        return;
    }
    let pod = CniPod::new();
    // (No dummy driver everywhere: a veth pair is two more interfaces.)
    ip(&[
        "-n", &pod.pod, "link", "add", "extra0", "type", "veth", "peer", "name", "extra1",
    ]);
    let state = tempfile::tempdir().unwrap();
    let error = attach(&pod.path(), state.path()).err().expect("refused");
    assert!(
        matches!(&error, NetworkError::Interfaces(names) if names.len() == 3),
        "{error}"
    );
    assert!(error.to_string().contains("exactly one"), "{error}");
    ip(&["-n", &pod.pod, "link", "del", "extra0"]);

    Command::new("tc")
        .args(["-n", &pod.pod, "qdisc", "add", "dev", "eth0", "ingress"])
        .status()
        .expect("tc")
        .success()
        .then_some(())
        .expect("adding an ingress qdisc");
    let error = attach(&pod.path(), state.path()).err().expect("refused");
    assert!(matches!(error, NetworkError::IngressTaken(_)), "{error}");
    let ours = pod.ours();
    assert_eq!(ours.tap_mtu_up, None);
    assert!(ours.eth0_ingress, "someone else's qdisc stays");
    assert!(NetworkRecord::read(state.path()).is_none());
}

#[test]
fn a_namespace_with_only_lo_gives_no_nic() {
    if !root() {
        return;
    }
    let name = format!("cocoon-t{}-lo", std::process::id());
    ip(&["netns", "add", &name]);
    let state = tempfile::tempdir().unwrap();
    let attached = attach(&PathBuf::from("/run/netns").join(&name), state.path());
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    assert!(attached.unwrap().is_none());
    assert!(NetworkRecord::read(state.path()).is_none());
}

#[test]
fn the_sandboxs_own_namespace_is_new_kept_by_a_mount_and_removed_whole() {
    if !root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let netns = own_netns::create(state.path()).unwrap();
    let inode =
        |path: &str| std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let ours = inode(netns.to_str().unwrap()).unwrap();
    assert_ne!(
        ours,
        inode("/proc/self/ns/net").unwrap(),
        "not a new namespace"
    );
    assert!(own_netns::create(state.path()).is_err(), "made twice");
    // Fresh: only lo, so no NIC until a hook wires it.
    assert!(attach(&netns, state.path()).unwrap().is_none());
    own_netns::remove(state.path());
    assert!(!netns.exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(state.path().to_str().unwrap()), "{mounts}");
}

/// Writes a broadcast ARP request "who has 10.88.0.1, tell 10.88.0.5" from
/// the pod's MAC, behind an all-zero virtio-net header.
fn send_arp_request(tap: &OwnedFd) {
    let mut frame = vec![0u8; VNET_HEADER];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&POD_MAC);
    frame.extend_from_slice(&[0x08, 0x06]);
    // Ethernet, IPv4, 6, 4, request.
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&POD_MAC);
    frame.extend_from_slice(&[10, 88, 0, 5]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&[10, 88, 0, 1]);
    let written = nix::unistd::write(tap.as_fd(), &frame).expect("writing to the tap");
    assert_eq!(written, frame.len());
}

/// The virtio-net header a tap with IFF_VNET_HDR puts before each frame
/// (struct virtio_net_hdr, the default size).
const VNET_HEADER: usize = 10;

/// Reads frames from the tap until an ARP reply comes (other frames, e.g.
/// the bridge's IPv6 chatter, are skipped); returns its Ethernet frame.
fn read_arp_reply(tap: &OwnedFd, timeout: Duration) -> Vec<u8> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + timeout;
    let mut buffer = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no ARP reply reached the tap within {timeout:?}"
        );
        let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if poll(&mut fds, PollTimeout::from(millis)).expect("poll") == 0 {
            continue;
        }
        let length = nix::unistd::read(tap.as_raw_fd(), &mut buffer).expect("reading the tap");
        let frame = &buffer[VNET_HEADER.min(length)..length];
        // ARP, opcode 2 (reply).
        if frame.len() >= 22 && frame[12..14] == [0x08, 0x06] && frame[20..22] == [0, 2] {
            return frame.to_vec();
        }
    }
}
