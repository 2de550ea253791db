//! SetupNetwork against a real network namespace standing in for the
//! guest: a veth end with the pod's MAC plays the virtio NIC. Needs root
//! (as `make unit-test` is run); anyone else is told it was skipped.

use std::os::fd::AsRawFd;
use std::process::Command;

use cocoon_protocol::api::agent::{Interface, Neighbour, Route, SetupNetworkRequest};
use serde_json::Value;

use crate::error::AgentError;

fn root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("SKIPPED: needs root for network namespaces and veths");
    false
}

fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(args: &[&str]) -> Vec<Value> {
    serde_json::from_str(&ip(args)).expect("ip's JSON")
}

/// A namespace with `nic0` (MAC 02:00:00:00:00:07, down), one end of a
/// veth whose other end is up, so the NIC has a carrier once up.
struct Guest(String);

impl Guest {
    fn new(tag: &str) -> Guest {
        Self::with_mac(tag, "02:00:00:00:00:07")
    }

    /// A guest whose NIC has `mac`.
    fn with_mac(tag: &str, mac: &str) -> Guest {
        let name = format!("cocoon-agent-t{}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        let guest = Guest(name);
        ip(&[
            "-n", &guest.0, "link", "add", "nic0", "address", mac, "type", "veth", "peer", "name",
            "peer0",
        ]);
        ip(&["-n", &guest.0, "link", "set", "peer0", "up"]);
        guest
    }

    /// Runs SetupNetwork on a thread inside the namespace.
    fn setup(&self, request: SetupNetworkRequest) -> Result<(), AgentError> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let namespace = std::fs::File::open(&path).expect("opening the namespace");
            // SAFETY: setns(2) on an open namespace file; only this thread,
            // which no one else uses, changes namespace.
            let entered = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            super::setup_network(&request)
        })
        .join()
        .expect("the namespace thread")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn request() -> SetupNetworkRequest {
    let mut interface = Interface::new();
    interface.name = "eth0".into();
    interface.mac = "02:00:00:00:00:07".into();
    interface.mtu = 1400;
    interface.addresses = vec!["10.77.0.5/24".into(), "fd00:77::5/64".into()];
    let route = |destination: &str, gateway: &str, scope: &str, source: &str, metric| {
        let mut route = Route::new();
        route.destination = destination.into();
        route.gateway = gateway.into();
        route.device = "eth0".into();
        route.scope = scope.into();
        route.source = source.into();
        route.metric = metric;
        route
    };
    let mut neighbour = Neighbour::new();
    neighbour.ip = "10.77.0.1".into();
    neighbour.mac = "02:00:00:00:00:01".into();
    neighbour.device = "eth0".into();
    let mut request = SetupNetworkRequest::new();
    request.interfaces = vec![interface];
    // The gateway of the first is only reachable through the last: the
    // agent reorders.
    request.routes = vec![
        route("default", "172.30.0.1", "", "", 0),
        route("10.66.0.0/16", "10.77.0.1", "universe", "10.77.0.5", 50),
        route("::/0", "fd00:77::1", "", "", 0),
        route("172.30.0.0/16", "", "link", "", 0),
    ];
    request.neighbours = vec![neighbour];
    request
}

#[test]
fn the_nic_found_by_mac_gets_name_mtu_addresses_routes_and_neighbours() {
    if !root() {
        return;
    }
    let guest = Guest::new("ok");
    guest.setup(request()).expect("SetupNetwork");
    let ns = guest.0.as_str();

    let link = &json(&["-n", ns, "-j", "link", "show", "eth0"])[0];
    assert_eq!(link["address"], "02:00:00:00:00:07");
    assert_eq!(link["mtu"], 1400);
    assert!(
        link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{link}"
    );
    let addresses: Vec<String> = json(&["-n", ns, "-j", "addr", "show", "eth0"])[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert!(
        addresses.contains(&"10.77.0.5/24".to_string()),
        "{addresses:?}"
    );
    assert!(
        addresses.contains(&"fd00:77::5/64".to_string()),
        "{addresses:?}"
    );

    let routes = json(&["-n", ns, "-j", "route", "show"]);
    let find = |destination: &str| {
        routes
            .iter()
            .find(|r| r["dst"] == destination)
            .unwrap_or_else(|| panic!("no route to {destination} in {routes:?}"))
    };
    assert_eq!(find("default")["gateway"], "172.30.0.1");
    let via = find("10.66.0.0/16");
    assert_eq!(via["gateway"], "10.77.0.1");
    assert_eq!(via["prefsrc"], "10.77.0.5");
    assert_eq!(via["metric"], 50);
    assert_eq!(find("172.30.0.0/16")["scope"], "link");
    let routes6 = json(&["-n", ns, "-j", "-6", "route", "show", "default"]);
    assert_eq!(routes6[0]["gateway"], "fd00:77::1", "{routes6:?}");

    let neighbours = json(&["-n", ns, "-j", "neigh", "show", "dev", "eth0"]);
    let gateway = neighbours
        .iter()
        .find(|n| n["dst"] == "10.77.0.1")
        .unwrap_or_else(|| panic!("no neighbour 10.77.0.1 in {neighbours:?}"));
    assert_eq!(gateway["lladdr"], "02:00:00:00:00:01");
    assert!(gateway["state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "PERMANENT"));

    // Full-sized TSO frames even for a flow that looks slow.
    let tso = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "cat",
            "/proc/sys/net/ipv4/tcp_min_tso_segs",
        ])
        .output()
        .expect("ip netns exec");
    assert_eq!(String::from_utf8_lossy(&tso.stdout).trim(), "44");

    // The same request again (a retried call) is not an error.
    guest.setup(request()).expect("SetupNetwork again");
}

#[test]
fn a_nic_restored_from_a_template_takes_the_pods_mac() {
    if !root() {
        return;
    }
    let template_mac = cocoon_protocol::TEMPLATE_MAC
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let guest = Guest::with_mac("template", &template_mac);
    guest.setup(request()).expect("SetupNetwork");
    let link = &json(&["-n", &guest.0, "-j", "link", "show", "eth0"])[0];
    assert_eq!(link["address"], "02:00:00:00:00:07");
    assert!(link["flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|flag| flag == "UP")));
}

#[test]
fn failures_name_what_failed() {
    if !root() {
        return;
    }
    let guest = Guest::new("bad");
    let mut request = request();
    request.interfaces[0].mac = "02:00:00:00:00:99".into();
    let error = guest.setup(request).unwrap_err().to_string();
    assert!(
        error.contains("eth0") && error.contains("no NIC with MAC 02:00:00:00:00:99"),
        "{error}"
    );

    let mut request = self::request();
    // Not reachable: no route to 10.200.0.1 is given.
    request.routes[1].gateway = "10.200.0.1".into();
    let error = guest.setup(request).unwrap_err().to_string();
    eprintln!("{error}");
    assert!(
        error.contains("adding route 10.66.0.0/16 via 10.200.0.1 dev eth0 scope universe"),
        "{error}"
    );
}
