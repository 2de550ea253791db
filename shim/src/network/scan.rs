//! What the pod's network namespace holds, read through rtnetlink: the one
//! interface CNI made (besides `lo`), its addresses, the main table's
//! routes through it and its permanent neighbours; the guest gets a copy.
//!
//! Left out, because the guest kernel makes them itself from the same
//! addresses and MAC:
//! - IPv6 link-local addresses (fe80::/10): the guest derives its own from
//!   the MAC, which is the veth's.
//! - Routes of protocol `kernel`: the connected (subnet) route of each
//!   address, IPv6's fe80::/64 and prefix routes. Protocol `ra` routes
//!   too (router advertisements reach the guest itself). The local and
//!   broadcast routes live in the local table, which is not read.
//!
//! Routes of other tables (policy routing) are not copied.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::Handle;

use super::{NetworkError, TAP_NAME};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub interface: ScannedInterface,
    pub routes: Vec<ScannedRoute>,
    pub neighbours: Vec<ScannedNeighbour>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedInterface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Address and prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
}

/// A route through the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRoute {
    /// Destination and prefix length (0.0.0.0/0 or ::/0 for a default).
    pub destination: (IpAddr, u8),
    pub gateway: Option<IpAddr>,
    /// "universe", "site", "link" or "host".
    pub scope: &'static str,
    pub source: Option<IpAddr>,
    pub metric: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedNeighbour {
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

fn failed(what: &'static str) -> impl Fn(rtnetlink::Error) -> NetworkError {
    move |error| NetworkError::netlink(what, error)
}

/// Scans the namespace `handle` speaks to. None if it has no interface but
/// `lo` (the guest then gets no NIC).
pub async fn scan(handle: &Handle) -> Result<Option<Scanned>, NetworkError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(failed("listing the interfaces"))?;
    let candidates: Vec<&LinkMessage> = links
        .iter()
        .filter(|link| link.header.link_layer_type != LinkLayerType::Loopback)
        // Ours, left by a sandbox that crashed before it was cleaned up.
        .filter(|link| link_name(link).as_deref() != Some(TAP_NAME))
        .collect();
    let link = match candidates.as_slice() {
        [] => return Ok(None),
        [link] => *link,
        several => {
            return Err(NetworkError::Interfaces(
                several.iter().filter_map(|link| link_name(link)).collect(),
            ))
        }
    };
    let index = link.header.index;
    let name = link_name(link).unwrap_or_default();
    let mac = link
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        })
        .ok_or_else(|| NetworkError::NotEthernet(name.clone()))?;
    if link.header.link_layer_type != LinkLayerType::Ether {
        return Err(NetworkError::NotEthernet(name));
    }
    let mtu = link
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .unwrap_or(1500);

    let addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(failed("listing the addresses"))?
        .into_iter()
        .filter(|address| address.header.index == index)
        .filter_map(|address| {
            let ip = address
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
            keep_address(ip).then_some((ip, address.header.prefix_len))
        })
        .collect();

    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        let table: Vec<RouteMessage> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(failed("listing the routes"))?;
        routes.extend(table.iter().filter_map(|route| kept_route(route, index)));
    }

    let neighbours = handle
        .neighbours()
        .get()
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(failed("listing the neighbours"))?
        .into_iter()
        .filter(|n| n.header.ifindex == index && n.header.state == NeighbourState::Permanent)
        .filter_map(|n| {
            let ip = n.attributes.iter().find_map(|attribute| match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                    Some(IpAddr::V4(*ip))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                    Some(IpAddr::V6(*ip))
                }
                _ => None,
            })?;
            let mac = n.attributes.iter().find_map(|attribute| match attribute {
                NeighbourAttribute::LinkLayerAddress(bytes) => {
                    <[u8; 6]>::try_from(bytes.as_slice()).ok()
                }
                _ => None,
            })?;
            Some(ScannedNeighbour { ip, mac })
        })
        .collect();

    Ok(Some(Scanned {
        interface: ScannedInterface {
            name,
            index,
            mac,
            mtu,
            addresses,
        },
        routes,
        neighbours,
    }))
}

pub fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
}

/// IPv6 link-local addresses are left to the guest kernel.
fn keep_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 != 0xfe80,
    }
}

/// The route as the guest should get it, if it is one to copy: a unicast
/// route of the main table through `index`, not made by the kernel (see
/// the module's comment).
fn kept_route(route: &RouteMessage, index: u32) -> Option<ScannedRoute> {
    let header = &route.header;
    let table = route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || header.kind != RouteType::Unicast
        || matches!(header.protocol, RouteProtocol::Kernel | RouteProtocol::Ra)
    {
        return None;
    }
    let mut destination = None;
    let mut gateway = None;
    let mut source = None;
    let mut device = None;
    let mut metric = 0;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(address) => destination = ip_of(address),
            RouteAttribute::Gateway(address) => gateway = ip_of(address),
            RouteAttribute::PrefSource(address) => source = ip_of(address),
            RouteAttribute::Oif(oif) => device = Some(*oif),
            RouteAttribute::Priority(priority) => metric = *priority,
            _ => {}
        }
    }
    if device != Some(index) {
        return None;
    }
    let unspecified = match header.address_family {
        AddressFamily::Inet => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let scope = match header.scope {
        RouteScope::Universe => "universe",
        RouteScope::Site => "site",
        RouteScope::Link => "link",
        RouteScope::Host => "host",
        _ => return None,
    };
    Some(ScannedRoute {
        destination: (
            destination.unwrap_or(unspecified),
            header.destination_prefix_length,
        ),
        gateway,
        scope,
        source,
        metric,
    })
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ipv6_link_local_addresses_are_left_out() {
        assert!(keep_address("10.88.0.5".parse().unwrap()));
        assert!(keep_address("fd00::5".parse().unwrap()));
        assert!(!keep_address("fe80::1".parse().unwrap()));
        assert!(!keep_address("febf::1".parse().unwrap()));
        assert!(keep_address("fec0::1".parse().unwrap()));
    }

    fn route(protocol: RouteProtocol, table: u8, oif: u32) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.table = table;
        route.header.protocol = protocol;
        route.header.kind = RouteType::Unicast;
        route
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(
                "10.88.0.1".parse().unwrap(),
            )));
        route.attributes.push(RouteAttribute::Oif(oif));
        route
    }

    #[test]
    fn kernel_made_and_foreign_routes_are_left_out() {
        let default = kept_route(&route(RouteProtocol::Boot, 254, 2), 2).unwrap();
        assert_eq!(default.destination, ("0.0.0.0".parse().unwrap(), 0));
        assert_eq!(default.gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(default.scope, "universe");
        assert!(kept_route(&route(RouteProtocol::Kernel, 254, 2), 2).is_none());
        assert!(kept_route(&route(RouteProtocol::Ra, 254, 2), 2).is_none());
        assert!(kept_route(&route(RouteProtocol::Boot, 255, 2), 2).is_none());
        assert!(kept_route(&route(RouteProtocol::Boot, 254, 3), 2).is_none());
    }
}
