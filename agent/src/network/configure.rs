//! Applies a checked [`Plan`] through rtnetlink: each NIC found by MAC,
//! renamed, its MTU set, addresses added, brought up; then the routes
//! (on-link first), then the permanent neighbours. Each error names the
//! interface, address, route or neighbour that failed, and the kernel's
//! reason.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::Netlink;
use super::plan::{mac_text, Plan, PlannedInterface, PlannedNeighbour, PlannedRoute, Scope};
use crate::error::{AgentError, Result};

/// Replace rather than exclusive create: a retried call, or a route the
/// kernel made itself for an address, is not an error.
const CREATE_OR_REPLACE: u16 = NLM_F_CREATE | NLM_F_REPLACE;

pub fn apply(plan: &Plan) -> Result<()> {
    if plan.interfaces.is_empty() {
        return Ok(());
    }
    let mut netlink =
        Netlink::open().map_err(|e| AgentError::internal("opening a netlink socket", e))?;
    let links = links(&mut netlink)?;
    let mut indexes = Vec::new();
    for interface in &plan.interfaces {
        // A sandbox started from a template: its NIC still has the
        // template's MAC, and takes the pod's when configured.
        let found = links
            .iter()
            .find(|(_, mac)| *mac == Some(interface.mac))
            .or_else(|| {
                links
                    .iter()
                    .find(|(_, mac)| *mac == Some(cocoon_protocol::TEMPLATE_MAC))
            });
        let Some((index, mac)) = found else {
            let present: Vec<String> = links
                .iter()
                .filter_map(|(_, mac)| mac.as_ref().map(mac_text))
                .collect();
            return Err(AgentError::FailedPrecondition(format!(
                "interface {}: the guest has no NIC with MAC {} (it has {present:?})",
                interface.name,
                mac_text(&interface.mac)
            )));
        };
        let adopt = *mac != Some(interface.mac);
        configure_interface(&mut netlink, *index, interface, adopt)?;
        indexes.push((interface.name.as_str(), *index));
    }
    let index_of = |device: &str| {
        indexes
            .iter()
            .find(|(name, _)| *name == device)
            .map(|(_, index)| *index)
            // The plan checked every device against the interfaces.
            .ok_or_else(|| AgentError::Internal(format!("unplanned device {device}")))
    };
    for route in &plan.routes {
        add_route(&mut netlink, index_of(&route.device)?, route)?;
    }
    for neighbour in &plan.neighbours {
        add_neighbour(&mut netlink, index_of(&neighbour.device)?, neighbour)?;
    }
    Ok(())
}

/// Every link's index and MAC (None for links without an Ethernet
/// address, e.g. lo's is all zeros but six bytes: it is kept, harmlessly).
fn links(netlink: &mut Netlink) -> Result<Vec<(u32, Option<[u8; 6]>)>> {
    let answers = netlink
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .map_err(|e| AgentError::internal("listing the guest's network interfaces", e))?;
    Ok(answers
        .into_iter()
        .filter_map(|message| match message {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        })
        .map(|link| {
            let mac = link
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                    _ => None,
                });
            (link.header.index, mac)
        })
        .collect())
}

/// `set_mac`: the NIC has the template's MAC and gets the planned one.
fn configure_interface(
    netlink: &mut Netlink,
    index: u32,
    interface: &PlannedInterface,
    set_mac: bool,
) -> Result<()> {
    let failed = |what: &str, error: std::io::Error| {
        AgentError::FailedPrecondition(format!(
            "interface {} ({}): {what}: {error}",
            interface.name,
            mac_text(&interface.mac)
        ))
    };
    // A NIC can only be renamed while down, which it is until we bring it
    // up below.
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.attributes
        .push(LinkAttribute::IfName(interface.name.clone()));
    if set_mac {
        link.attributes
            .push(LinkAttribute::Address(interface.mac.to_vec()));
    }
    if let Some(mtu) = interface.mtu {
        link.attributes.push(LinkAttribute::Mtu(mtu));
    }
    netlink
        .change(RouteNetlinkMessage::SetLink(link), 0)
        .map_err(|e| match interface.mtu {
            Some(mtu) => failed(&format!("renaming and setting MTU {mtu}"), e),
            None => failed("renaming", e),
        })?;
    for address in &interface.addresses {
        let mut message = AddressMessage::default();
        message.header.family = family(address.ip);
        message.header.prefix_len = address.prefix;
        message.header.index = index;
        message
            .attributes
            .push(AddressAttribute::Address(address.ip));
        if address.ip.is_ipv4() {
            message.attributes.push(AddressAttribute::Local(address.ip));
        } else {
            // CNI's IPAM made the address unique; duplicate detection would
            // only hold it tentative (unusable as a source) for a second.
            message.header.flags = AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        netlink
            .change(RouteNetlinkMessage::NewAddress(message), CREATE_OR_REPLACE)
            .map_err(|e| failed(&format!("adding address {address}"), e))?;
    }
    let mut up = LinkMessage::default();
    up.header.index = index;
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;
    netlink
        .change(RouteNetlinkMessage::SetLink(up), 0)
        .map_err(|e| failed("bringing it up", e))
}

fn add_route(netlink: &mut Netlink, index: u32, route: &PlannedRoute) -> Result<()> {
    let mut message = RouteMessage::default();
    message.header.address_family = family(route.destination.ip);
    message.header.destination_prefix_length = route.destination.prefix;
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    // What `ip route add` sets: a route configured by an administrator.
    message.header.protocol = RouteProtocol::Boot;
    message.header.kind = RouteType::Unicast;
    message.header.scope = match route.scope {
        Scope::Universe => RouteScope::Universe,
        Scope::Site => RouteScope::Site,
        Scope::Link => RouteScope::Link,
        Scope::Host => RouteScope::Host,
    };
    if route.destination.prefix > 0 {
        message
            .attributes
            .push(RouteAttribute::Destination(route_address(
                route.destination.ip,
            )));
    }
    if let Some(gateway) = route.gateway {
        message
            .attributes
            .push(RouteAttribute::Gateway(route_address(gateway)));
    }
    if let Some(source) = route.source {
        message
            .attributes
            .push(RouteAttribute::PrefSource(route_address(source)));
    }
    if route.metric != 0 {
        message
            .attributes
            .push(RouteAttribute::Priority(route.metric));
    }
    message.attributes.push(RouteAttribute::Oif(index));
    netlink
        .change(RouteNetlinkMessage::NewRoute(message), CREATE_OR_REPLACE)
        .map_err(|e| AgentError::FailedPrecondition(format!("adding {route}: {e}")))
}

fn add_neighbour(netlink: &mut Netlink, index: u32, neighbour: &PlannedNeighbour) -> Result<()> {
    let mut message = NeighbourMessage::default();
    message.header.family = family(neighbour.ip);
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message
        .attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
            neighbour.ip,
        )));
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(neighbour.mac.to_vec()));
    netlink
        .change(
            RouteNetlinkMessage::NewNeighbour(message),
            CREATE_OR_REPLACE,
        )
        .map_err(|e| {
            AgentError::FailedPrecondition(format!(
                "adding neighbour {} lladdr {} dev {}: {e}",
                neighbour.ip,
                mac_text(&neighbour.mac),
                neighbour.device
            ))
        })
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    RouteAddress::from(ip)
}
