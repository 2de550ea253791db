//! Pod networking on the host: the pod's network namespace (made and wired
//! by CNI) keeps its veth and addresses; the shim adds a tap beside the
//! veth, joins the two with tc redirects, hands the tap to the VMM's
//! virtio-net device and the veth's configuration to the agent, which
//! gives the guest's NIC the veth's MAC, addresses, routes and neighbours.
//! See docs/security/network.md for what is added and removed when.

mod guest_config;
mod in_netns;
mod namespace;
pub mod own_netns;
mod record;
mod redirect;
mod scan;
pub mod tap;
#[cfg(test)]
mod tests;

use std::os::fd::OwnedFd;
use std::path::Path;

use cocoon_protocol::api::agent::SetupNetworkRequest;
use futures::TryStreamExt;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::{Handle, LinkUnspec};

pub use namespace::{join_own_netns, pod_netns, PodNetns};
use record::NetworkRecord;
use scan::Scanned;

/// The tap's name in the pod's namespace (at most 15 bytes).
pub const TAP_NAME: &str = "tap0_cocoon";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "host networking is not supported (--net=host, --network=host, hostNetwork: true): \
         a VM cannot share the host's network namespace (the spec has no network namespace)"
    )]
    HostNetwork,
    #[error("{0}")]
    Spec(String),
    #[error("entering the pod's network namespace {path}: {source}")]
    Netns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the pod's network namespace has several interfaces besides lo ({}); \
         cocoon supports exactly one",
        .0.join(", ")
    )]
    Interfaces(Vec<String>),
    #[error("the pod's interface {0} is not an Ethernet interface")]
    NotEthernet(String),
    #[error(
        "the pod's interface {0} already has an ingress qdisc, which is not cocoon's; \
         cocoon needs it to connect the VM"
    )]
    IngressTaken(String),
    #[error("{0}")]
    Tap(String),
    #[error("{what}: {message}")]
    Netlink { what: String, message: String },
    #[error("recording the pod network in {path}: {source}")]
    Record {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl NetworkError {
    fn netlink(what: &str, error: impl std::fmt::Display) -> Self {
        NetworkError::Netlink {
            what: what.into(),
            message: error.to_string(),
        }
    }

    /// Whether the request (the spec) is at fault rather than the host.
    pub fn is_invalid_request(&self) -> bool {
        matches!(self, NetworkError::HostNetwork | NetworkError::Spec(_))
    }
}

/// The pod's network, connected: the tap's queue for the VMM, the MAC the
/// guest's NIC gets (the veth's), and what the agent is to configure.
pub struct Attached {
    pub tap: OwnedFd,
    pub mac: [u8; 6],
    pub request: SetupNetworkRequest,
}

/// Scans the namespace at `netns` and connects a new tap to its interface,
/// recording in `state_dir` what it adds. None when the namespace has no
/// interface but `lo`. On failure nothing is left.
pub fn attach(netns: &Path, state_dir: &Path) -> Result<Option<Attached>, NetworkError> {
    let netns_path = netns.to_path_buf();
    let dir = state_dir.to_path_buf();
    in_netns::run(netns, move |handle| async move {
        let Some(scanned) = scan::scan(&handle).await? else {
            tracing::info!(
                "the network namespace {} has only lo: the guest gets no NIC",
                netns_path.display()
            );
            return Ok(None);
        };
        let veth = &scanned.interface;
        let ingress_taken = redirect::qdiscs(&handle, veth.index)
            .await?
            .iter()
            .any(|qdisc| qdisc.header.parent == rtnetlink::packet_route::tc::TcHandle::INGRESS);
        if ingress_taken {
            return Err(NetworkError::IngressTaken(veth.name.clone()));
        }
        let record = NetworkRecord {
            netns: netns_path,
            veth: veth.name.clone(),
            veth_index: veth.index,
            tap: TAP_NAME.into(),
        };
        record.write(&dir).map_err(|source| NetworkError::Record {
            path: dir.display().to_string(),
            source,
        })?;
        match connect(&handle, &scanned).await {
            Ok(tap) => Ok(Some(Attached {
                tap,
                mac: scanned.interface.mac,
                request: guest_config::setup_request(&scanned),
            })),
            Err(error) => {
                if let Err(undo) = remove(&handle, &record).await {
                    tracing::warn!("undoing a failed network set-up: {undo}");
                }
                NetworkRecord::remove(&dir);
                Err(error)
            }
        }
    })
}

/// Removes what [`attach`] recorded in `state_dir`, if anything: the tap
/// and the veth's ingress qdisc. The namespace is containerd's and stays.
/// Failures are logged: teardown goes on.
pub fn detach(state_dir: &Path) {
    let Some(record) = NetworkRecord::read(state_dir) else {
        return;
    };
    if record.netns.exists() {
        let netns = record.netns.clone();
        if let Err(error) = in_netns::run(&netns, move |handle| async move {
            remove(&handle, &record).await
        }) {
            tracing::warn!("removing the pod network's tap and redirects: {error}");
        }
    }
    NetworkRecord::remove(state_dir);
}

/// The tap, up with the veth's MTU, and the redirects both ways.
async fn connect(handle: &Handle, scanned: &Scanned) -> Result<OwnedFd, NetworkError> {
    let veth = &scanned.interface;
    let tap = tap::open(TAP_NAME)?;
    let tap_index = link_index(handle, TAP_NAME)
        .await?
        .ok_or_else(|| NetworkError::Tap(format!("the new tap {TAP_NAME} is not listed")))?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(tap_index)
                .mtu(veth.mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| NetworkError::netlink(&format!("setting MTU {} and up", veth.mtu), e))?;
    redirect::redirect(handle, veth.index, tap_index).await?;
    redirect::redirect(handle, tap_index, veth.index).await?;
    Ok(tap)
}

/// Deletes the recorded tap (its qdisc and filter go with it) and the
/// veth's ingress qdisc (with its filter), if the veth is still the one
/// recorded. Whatever is already gone is fine.
async fn remove(handle: &Handle, record: &NetworkRecord) -> Result<(), NetworkError> {
    if let Some(index) = link_index(handle, &record.tap).await? {
        match handle.link().del(index).execute().await {
            Err(error) if redirect::errno(&error) == Some(libc::ENODEV) => {}
            result => {
                result.map_err(|e| NetworkError::netlink(&format!("deleting {}", record.tap), e))?
            }
        }
    }
    if link_index(handle, &record.veth).await? == Some(record.veth_index) {
        redirect::remove(handle, record.veth_index).await?;
    }
    Ok(())
}

/// The index of interface `name`, if there is one.
async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let found: Result<Option<LinkMessage>, _> = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match found {
        Ok(link) => Ok(link.map(|link| link.header.index)),
        Err(error) if redirect::errno(&error) == Some(libc::ENODEV) => Ok(None),
        Err(error) => Err(NetworkError::netlink(&format!("looking up {name}"), error)),
    }
}
