//! The scan, as the agent's SetupNetwork request: the guest's NIC gets the
//! veth's name, MAC, MTU and addresses, and its routes and neighbours.

use cocoon_protocol::api::agent::{Interface, Neighbour, Route, SetupNetworkRequest};

use super::scan::Scanned;

pub fn setup_request(scanned: &Scanned) -> SetupNetworkRequest {
    let name = scanned.interface.name.clone();
    let mut interface = Interface::new();
    interface.name = name.clone();
    interface.mac = mac_text(&scanned.interface.mac);
    interface.mtu = scanned.interface.mtu;
    interface.addresses = scanned
        .interface
        .addresses
        .iter()
        .map(|(ip, prefix)| format!("{ip}/{prefix}"))
        .collect();
    let mut request = SetupNetworkRequest::new();
    request.interfaces = vec![interface];
    request.routes = scanned
        .routes
        .iter()
        .map(|scanned| {
            let mut route = Route::new();
            let (ip, prefix) = scanned.destination;
            route.destination = format!("{ip}/{prefix}");
            route.gateway = scanned.gateway.map(|g| g.to_string()).unwrap_or_default();
            route.device = name.clone();
            route.scope = scanned.scope.into();
            route.source = scanned.source.map(|s| s.to_string()).unwrap_or_default();
            route.metric = scanned.metric;
            route
        })
        .collect();
    request.neighbours = scanned
        .neighbours
        .iter()
        .map(|scanned| {
            let mut neighbour = Neighbour::new();
            neighbour.ip = scanned.ip.to_string();
            neighbour.mac = mac_text(&scanned.mac);
            neighbour.device = name.clone();
            neighbour
        })
        .collect();
    request
}

pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
