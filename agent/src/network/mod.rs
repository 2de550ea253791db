//! The guest's network, as the shim asks for it (SetupNetwork): the pod's
//! NIC configured like the veth it stands in for, hostname and DNS.

mod configure;
mod netlink;
pub mod plan;

use cocoon_protocol::api::agent::SetupNetworkRequest;

use crate::error::{AgentError, Result};

/// TCP segments per TSO frame at least (Linux's default is 2): 44 full
/// segments of a 1500-byte MTU fill the 64 KiB a frame can hold.
///
/// Linux sizes a flow's TSO frames to about 1 ms of its pacing rate, so a
/// flow that looks slow sends small frames. Each frame costs the VM exits
/// (a kick, and the interrupt of the reply), far more than its bytes do, so
/// small frames keep a flow slow: in the emulated host VM an HTTP download
/// from a guest went from 19 KiB to 43 KiB frames with this (see
/// docs/performance.md). A pod's sysctls, applied later, may set it back.
const TCP_MIN_TSO_SEGS: &str = "44";

/// Checks the whole request, then configures interfaces, routes and
/// neighbours, then hostname and DNS.
pub fn setup_network(request: &SetupNetworkRequest) -> Result<()> {
    let plan = plan::Plan::from_request(request)?;
    crate::sysctl::set_network(&[(
        "net.ipv4.tcp_min_tso_segs".to_string(),
        TCP_MIN_TSO_SEGS.to_string(),
    )])?;
    configure::apply(&plan)?;
    if !request.hostname.is_empty() {
        crate::init::set_hostname(&request.hostname)?;
    }
    if let Some(dns) = request.dns.as_ref() {
        write_resolv_conf(dns)?;
    }
    Ok(())
}

fn write_resolv_conf(dns: &cocoon_protocol::api::agent::Dns) -> Result<()> {
    let mut text = String::new();
    for server in &dns.nameservers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    std::fs::create_dir_all("/run/cocoon")
        .map_err(|e| AgentError::internal("creating /run/cocoon", e))?;
    std::fs::write("/run/cocoon/resolv.conf", text)
        .map_err(|e| AgentError::internal("writing resolv.conf", e))
}

#[cfg(test)]
mod tests;
