//! Work inside the pod's network namespace, on a thread of its own.
//!
//! A network namespace is a per-thread attribute: the thread that enters
//! it must be one nobody else runs on (never a tokio worker). The thread
//! enters the namespace, opens its rtnetlink socket there (a socket stays
//! in the namespace it was made in), runs the work on a current-thread
//! runtime, and ends.

use std::future::Future;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::CloneFlags;

use super::NetworkError;

/// Runs `work` with an rtnetlink handle in the network namespace at
/// `netns`, blocking the caller until it is done.
pub fn run<T, F, Fut>(netns: &Path, work: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let namespace = std::fs::File::open(netns).map_err(|source| NetworkError::Netns {
        path: netns.display().to_string(),
        source,
    })?;
    let path = netns.display().to_string();
    let thread = std::thread::Builder::new()
        .name("cocoon-netns".into())
        .spawn(move || {
            nix::sched::setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                NetworkError::Netns {
                    path: path.clone(),
                    source: source.into(),
                }
            })?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|e| NetworkError::netlink("starting the netns thread's runtime", e))?;
            runtime.block_on(async move {
                let (connection, handle, _) = rtnetlink::new_connection()
                    .map_err(|e| NetworkError::netlink("opening an rtnetlink socket", e))?;
                tokio::spawn(connection);
                work(handle).await
            })
        })
        .map_err(|e| NetworkError::netlink("starting the netns thread", e))?;
    thread
        .join()
        .unwrap_or_else(|_| Err(NetworkError::netlink("the netns thread", "panicked")))
}
