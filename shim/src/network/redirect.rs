//! The wire between the veth CNI made and our tap: an ingress qdisc on each
//! and a filter that matches every frame and redirects it to the other's
//! egress (tc mirred), Kata's "tcfilter" model. The veth keeps its
//! addresses in the namespace (CNI's view stays true) but sees no traffic
//! of its own: what arrives on it goes to the guest, what the guest sends
//! leaves through it.

use futures::TryStreamExt;
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use rtnetlink::Handle;

use super::NetworkError;

/// `protocol all`, as the kernel reads it: network byte order.
pub const ETH_P_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();
/// The filters' priority (tc's `pref`).
const PRIORITY: u16 = 1;

/// Adds the ingress qdisc and the redirecting filter on `from` (an
/// interface index) towards `to`.
pub async fn redirect(handle: &Handle, from: u32, to: u32) -> Result<(), NetworkError> {
    handle
        .qdisc()
        .add(from as i32)
        .ingress()
        .execute()
        .await
        .map_err(|e| NetworkError::netlink("adding an ingress qdisc", e))?;
    handle
        .traffic_filter(from as i32)
        .add()
        .ingress()
        .priority(PRIORITY)
        .protocol(ETH_P_ALL)
        .redirect(to)
        .map_err(|e| NetworkError::netlink("building the redirect filter", e))?
        .execute()
        .await
        .map_err(|e| NetworkError::netlink("adding the redirect filter", e))
}

/// Removes the ingress qdisc of `index`, with its filters. Not having one
/// is fine.
pub async fn remove(handle: &Handle, index: u32) -> Result<(), NetworkError> {
    let mut request = handle.qdisc().del(index as i32);
    let message = request.message_mut();
    message.header.parent = TcHandle::INGRESS;
    message.header.handle = TcHandle::from(0xffff_0000);
    message
        .attributes
        .push(TcAttribute::Kind("ingress".to_string()));
    match request.execute().await {
        Err(error)
            if matches!(
                errno(&error),
                Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)
            ) =>
        {
            Ok(())
        }
        result => result.map_err(|e| NetworkError::netlink("removing an ingress qdisc", e)),
    }
}

/// The qdiscs of interface `index` (for tests and checks).
pub async fn qdiscs(handle: &Handle, index: u32) -> Result<Vec<TcMessage>, NetworkError> {
    let all: Vec<TcMessage> = handle
        .qdisc()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetworkError::netlink("listing qdiscs", e))?;
    Ok(all
        .into_iter()
        .filter(|qdisc| qdisc.header.index == index as i32)
        .collect())
}

/// The kernel's errno in a netlink error.
pub fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
        _ => None,
    }
}
