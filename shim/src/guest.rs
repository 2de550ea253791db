//! The seam between the task service and the sandbox VM: what the service
//! asks of a running VM ([`Guest`]) and how the first Create gets one
//! ([`Launch`]). [`crate::sandbox::Sandbox`] and [`crate::launch::VmLauncher`]
//! are the real ones; the task service's tests use fakes, without KVM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use cocoon_protocol::client::{AgentCalls, GuestRootfs};
use containerd_shim::protos::api::{CreateTaskRequest, Mount};
use tokio::sync::watch;

use crate::error::Result;
use crate::io::{Relay, StdioPaths};
use crate::volumes::HostVolume;

#[async_trait]
pub trait Guest: Send + Sync {
    /// The agent in the guest.
    fn agent(&self) -> &dyn AgentCalls;

    /// Mounts container `id`'s root file system where the guest sees it
    /// (`mounts`, else the directory `root`): read-only, the image alone,
    /// when the guest stacks the writable layer on its scratch disk.
    async fn mount_rootfs(&self, id: &str, mounts: &[Mount], root: &Path) -> Result<GuestRootfs>;

    /// Mounts container `id`'s volumes (its spec's bind mounts) where the
    /// guest sees them ([`crate::volumes::guest_volume`]).
    fn mount_volumes(&self, id: &str, volumes: &[HostVolume]) -> Result<()>;

    /// Undoes [`Guest::mount_rootfs`] and [`Guest::mount_volumes`], also
    /// partial ones.
    fn unmount_container(&self, id: &str);

    /// Connects process (`id`, `exec`)'s streams to containerd's stdio and
    /// starts copying.
    async fn attach_stdio(&self, id: &str, exec: &str, stdio: &StdioPaths) -> Result<Relay>;

    /// The pid containerd is told for every process of the sandbox: the
    /// VMM's, a host process that belongs to the sandbox. (Guest pids mean
    /// nothing on the host; they are for ListPids only.)
    fn host_pid(&self) -> u32;

    /// The VMM's exit status, once it has exited.
    fn vmm_exit(&self) -> watch::Receiver<Option<i32>>;

    /// The sandbox's network namespace on the host, if it has one (hooks
    /// are told it).
    fn netns(&self) -> Option<PathBuf> {
        None
    }

    /// [`Guest::netns`] when the shim made it for the hooks to wire (its
    /// containers then share the VM's network, not a namespace of their own).
    fn own_netns(&self) -> Option<PathBuf> {
        None
    }

    /// Shuts the VM down and removes its state.
    async fn stop(&self);
}

#[async_trait]
pub trait Launch: Send + Sync {
    /// Starts the sandbox VM for the first container, `req` with its OCI
    /// `spec` (which sizes the VM).
    async fn launch(
        &self,
        req: &CreateTaskRequest,
        spec: &serde_json::Value,
    ) -> Result<Arc<dyn Guest>>;
}

/// Resolves once the VMM has exited.
pub async fn vm_exited(exit: &mut watch::Receiver<Option<i32>>) {
    let _ = exit.wait_for(Option::is_some).await;
}
