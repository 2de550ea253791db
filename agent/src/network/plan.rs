//! The shim's network request checked and typed before anything is
//! changed: every address, route and neighbour parsed, every device named
//! by an interface of the request, routes ordered so that each one's
//! gateway is reachable when it is added. A bad request changes nothing.

use std::net::IpAddr;

use cocoon_protocol::api::agent::{Interface, Neighbour, Route, SetupNetworkRequest};

use crate::error::{AgentError, Result};

/// Longest interface name the kernel takes (IFNAMSIZ less the NUL).
const MAX_NAME_LEN: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct PlannedInterface {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
    pub addresses: Vec<Cidr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Universe,
    Site,
    Link,
    Host,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Universe => "universe",
            Scope::Site => "site",
            Scope::Link => "link",
            Scope::Host => "host",
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct PlannedRoute {
    pub destination: Cidr,
    pub gateway: Option<IpAddr>,
    pub device: String,
    pub scope: Scope,
    pub source: Option<IpAddr>,
    pub metric: u32,
}

impl std::fmt::Display for PlannedRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "route {}", self.destination)?;
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        write!(f, " dev {} scope {}", self.device, self.scope)?;
        if let Some(source) = self.source {
            write!(f, " src {source}")?;
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct PlannedNeighbour {
    pub ip: IpAddr,
    pub mac: [u8; 6],
    pub device: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub interfaces: Vec<PlannedInterface>,
    /// Link-scope (and host-scope) routes first, then routes through
    /// gateways or of wider scope, each group in request order.
    pub routes: Vec<PlannedRoute>,
    pub neighbours: Vec<PlannedNeighbour>,
}

impl Plan {
    pub fn from_request(request: &SetupNetworkRequest) -> Result<Plan> {
        let interfaces = request
            .interfaces
            .iter()
            .map(interface)
            .collect::<Result<Vec<_>>>()?;
        for (i, a) in interfaces.iter().enumerate() {
            if interfaces[..i]
                .iter()
                .any(|b| b.name == a.name || b.mac == a.mac)
            {
                return Err(invalid(format!(
                    "interface {} ({}) is given twice",
                    a.name,
                    mac_text(&a.mac)
                )));
            }
        }
        let known = |device: &str, what: &str| {
            if interfaces.iter().any(|i| i.name == device) {
                Ok(())
            } else {
                Err(invalid(format!(
                    "{what}: device {device:?} is none of the request's interfaces"
                )))
            }
        };
        let mut routes = Vec::new();
        for route in &request.routes {
            let planned = self::route(route)?;
            known(&planned.device, &planned.to_string())?;
            routes.push(planned);
        }
        // A route through a gateway needs the gateway reachable: the
        // kernel refuses it (ENETUNREACH) before a route to the gateway
        // exists, so on-link routes go first.
        routes.sort_by_key(|r| r.gateway.is_some() || r.scope == Scope::Universe);
        let mut neighbours = Vec::new();
        for entry in &request.neighbours {
            let planned = neighbour(entry)?;
            known(&planned.device, &format!("neighbour {}", planned.ip))?;
            neighbours.push(planned);
        }
        Ok(Plan {
            interfaces,
            routes,
            neighbours,
        })
    }
}

fn invalid(message: String) -> AgentError {
    AgentError::InvalidArgument(message)
}

fn interface(request: &Interface) -> Result<PlannedInterface> {
    let name = &request.name;
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(invalid(format!("invalid interface name {name:?}")));
    }
    let mac = parse_mac(&request.mac)
        .ok_or_else(|| invalid(format!("interface {name}: invalid MAC {:?}", request.mac)))?;
    let addresses = request
        .addresses
        .iter()
        .map(|text| {
            parse_cidr(text)
                .ok_or_else(|| invalid(format!("interface {name}: invalid address {text:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mtu = match request.mtu {
        0 => None,
        mtu @ 68..=65535 => Some(mtu),
        mtu => return Err(invalid(format!("interface {name}: invalid MTU {mtu}"))),
    };
    Ok(PlannedInterface {
        name: name.clone(),
        mac,
        mtu,
        addresses,
    })
}

fn route(request: &Route) -> Result<PlannedRoute> {
    let what = || {
        format!(
            "route {:?} via {:?} dev {:?}",
            request.destination, request.gateway, request.device
        )
    };
    let gateway = match request.gateway.as_str() {
        "" => None,
        text => Some(
            text.parse::<IpAddr>()
                .map_err(|_| invalid(format!("{}: invalid gateway", what())))?,
        ),
    };
    let destination = match request.destination.as_str() {
        "" | "default" => match gateway {
            Some(IpAddr::V4(_)) => Cidr {
                ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                prefix: 0,
            },
            Some(IpAddr::V6(_)) => Cidr {
                ip: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                prefix: 0,
            },
            None => {
                return Err(invalid(format!(
                    "{}: a default route without a gateway must be given as 0.0.0.0/0 or ::/0",
                    what()
                )))
            }
        },
        text => {
            parse_cidr(text).ok_or_else(|| invalid(format!("{}: invalid destination", what())))?
        }
    };
    if gateway.is_some_and(|g| g.is_ipv4() != destination.ip.is_ipv4()) {
        return Err(invalid(format!(
            "{}: gateway and destination are of different families",
            what()
        )));
    }
    let scope = match request.scope.as_str() {
        "" | "universe" => Scope::Universe,
        "site" => Scope::Site,
        "link" => Scope::Link,
        "host" => Scope::Host,
        other => return Err(invalid(format!("{}: unknown scope {other:?}", what()))),
    };
    if gateway.is_some() && matches!(scope, Scope::Link | Scope::Host) {
        return Err(invalid(format!(
            "{}: a route through a gateway cannot have {} scope",
            what(),
            scope
        )));
    }
    let source = match request.source.as_str() {
        "" => None,
        text => {
            let source = text
                .parse::<IpAddr>()
                .map_err(|_| invalid(format!("{}: invalid source {text:?}", what())))?;
            if source.is_ipv4() != destination.ip.is_ipv4() {
                return Err(invalid(format!(
                    "{}: source and destination are of different families",
                    what()
                )));
            }
            Some(source)
        }
    };
    Ok(PlannedRoute {
        destination,
        gateway,
        device: request.device.clone(),
        scope,
        source,
        metric: request.metric,
    })
}

fn neighbour(request: &Neighbour) -> Result<PlannedNeighbour> {
    let ip = request
        .ip
        .parse::<IpAddr>()
        .map_err(|_| invalid(format!("neighbour: invalid address {:?}", request.ip)))?;
    let mac = parse_mac(&request.mac)
        .ok_or_else(|| invalid(format!("neighbour {ip}: invalid MAC {:?}", request.mac)))?;
    Ok(PlannedNeighbour {
        ip,
        mac,
        device: request.device.clone(),
    })
}

/// "aa:bb:cc:dd:ee:ff", either case.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// "10.0.0.2/24", "fd00::2/64"; the prefix is required.
pub fn parse_cidr(text: &str) -> Option<Cidr> {
    let (ip, prefix) = text.split_once('/')?;
    let ip = ip.parse::<IpAddr>().ok()?;
    let prefix = prefix.parse::<u8>().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(Cidr { ip, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SetupNetworkRequest {
        let mut interface = Interface::new();
        interface.name = "eth0".into();
        interface.mac = "0A:58:0a:58:00:05".into();
        interface.addresses = vec!["10.88.0.5/16".into(), "fd00::5/64".into()];
        interface.mtu = 1500;
        let route = |destination: &str, gateway: &str, scope: &str| {
            let mut route = Route::new();
            route.destination = destination.into();
            route.gateway = gateway.into();
            route.device = "eth0".into();
            route.scope = scope.into();
            route
        };
        let mut neighbour = Neighbour::new();
        neighbour.ip = "10.88.0.1".into();
        neighbour.mac = "aa:bb:cc:dd:ee:ff".into();
        neighbour.device = "eth0".into();
        let mut request = SetupNetworkRequest::new();
        request.interfaces = vec![interface];
        request.routes = vec![
            route("default", "10.88.0.1", ""),
            route("10.89.0.0/16", "", "link"),
            route("::/0", "fd00::1", "universe"),
        ];
        request.neighbours = vec![neighbour];
        request
    }

    #[test]
    fn a_cni_like_request_is_typed_with_on_link_routes_first() {
        let plan = Plan::from_request(&request()).unwrap();
        assert_eq!(plan.interfaces[0].mac, [0x0a, 0x58, 0x0a, 0x58, 0, 5]);
        assert_eq!(plan.interfaces[0].addresses[1].to_string(), "fd00::5/64");
        let order: Vec<String> = plan
            .routes
            .iter()
            .map(|r| r.destination.to_string())
            .collect();
        assert_eq!(order, ["10.89.0.0/16", "0.0.0.0/0", "::/0"]);
        assert_eq!(plan.routes[1].gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(plan.neighbours[0].mac, [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
    }

    #[test]
    fn bad_requests_say_what_is_wrong_and_change_nothing() {
        let refused = |change: &dyn Fn(&mut SetupNetworkRequest), words: &str| {
            let mut request = request();
            change(&mut request);
            let error = Plan::from_request(&request).unwrap_err().to_string();
            assert!(error.contains(words), "{error:?} lacks {words:?}");
        };
        refused(
            &|r| r.interfaces[0].mac = "0a:58".into(),
            "invalid MAC \"0a:58\"",
        );
        refused(
            &|r| r.interfaces[0].name = "a/b".into(),
            "invalid interface name",
        );
        refused(
            &|r| r.interfaces[0].addresses[0] = "10.0.0.1".into(),
            "invalid address",
        );
        refused(
            &|r| r.interfaces[0].addresses[0] = "10.0.0.1/33".into(),
            "invalid address",
        );
        refused(&|r| r.interfaces[0].mtu = 20, "invalid MTU 20");
        refused(
            &|r| r.routes[0].device = "eth1".into(),
            "device \"eth1\" is none",
        );
        refused(
            &|r| {
                r.routes[0].destination = "10.0.0.0/8".into();
                r.routes[0].gateway = "fd00::1".into();
            },
            "different families",
        );
        refused(&|r| r.routes[0].gateway.clear(), "without a gateway");
        refused(
            &|r| r.routes[0].scope = "link".into(),
            "cannot have link scope",
        );
        refused(&|r| r.routes[1].scope = "galaxy".into(), "unknown scope");
        refused(
            &|r| r.routes[1].source = "fd00::5".into(),
            "different families",
        );
        refused(
            &|r| r.neighbours[0].ip = "x".into(),
            "neighbour: invalid address",
        );
        refused(
            &|r| {
                let twin = r.interfaces[0].clone();
                r.interfaces.push(twin)
            },
            "given twice",
        );
    }
}
