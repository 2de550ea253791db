//! The sandbox VM's start, on the sandbox's first Create: the config its
//! runtime options name (or the default one), the VM sized by the first
//! container, its network namespace (with the first container's prestart
//! and createRuntime hooks, which may wire it), the state directory
//! recorded in its bundle.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::protos::api::CreateTaskRequest;

use crate::cgroup;
use crate::config::Config;
use crate::error::{Result, ShimError};
use crate::guest::{Guest, Launch};
use crate::hooks::{self, Hooks};
use crate::network::{self, PodNetns};
use crate::runtime_options;
use crate::sandbox::{self, BeforeNetwork, NetnsPlan, Sandbox};
use crate::vm_shape::{HostLimits, VmShape};

pub struct VmLauncher {
    pub namespace: String,
    pub sandbox_id: String,
    /// `-debug` from containerd.
    pub debug: bool,
}

#[async_trait]
impl Launch for VmLauncher {
    async fn launch(
        &self,
        req: &CreateTaskRequest,
        spec: &serde_json::Value,
    ) -> Result<Arc<dyn Guest>> {
        let hooks = Hooks::of_spec(spec)?;
        let netns = match network::pod_netns(spec)? {
            PodNetns::Path(path) => NetnsPlan::Existing(path),
            // nerdctl's bridge network: its createRuntime hook wires the
            // namespace runc would have made.
            PodNetns::Empty if hooks.wire_network() => NetnsPlan::Own,
            PodNetns::Empty => NetnsPlan::None,
        };
        let source = runtime_options::config_source(req.options.as_ref())?;
        let config = Config::resolve(source)?;
        log::set_max_level(config.log_filter(self.debug));
        let shape = VmShape::for_spec(&config, spec, &HostLimits::of_host(&config))?;
        let cgroup = sandbox_cgroup(spec)?;
        let dir = sandbox::state_dir(&config, &self.namespace, &self.sandbox_id);
        if let Err(error) = sandbox::record_state_dir(Path::new(&req.bundle), &dir) {
            tracing::warn!("recording the state directory in {}: {error}", req.bundle);
        }
        let hook_netns = match &netns {
            NetnsPlan::None => None,
            NetnsPlan::Existing(path) => Some(path.clone()),
            NetnsPlan::Own => Some(network::own_netns::path(&dir)),
        };
        let state = hooks::State::new(&req.id, &req.bundle, spec, hook_netns.as_deref());
        let started = Sandbox::start(
            &config,
            &self.namespace,
            dir,
            &shape,
            cgroup.as_deref(),
            netns,
            BeforeNetwork {
                hooks: &hooks,
                state: state.clone(),
            },
        )
        .await;
        match started {
            Ok(sandbox) => Ok(Arc::new(sandbox)),
            Err(error) => {
                // As runc's delete after a failed create: what the create
                // hooks set up on the host (nerdctl: the IP lease, iptables
                // rules) is theirs to undo.
                if hooks.wire_network() {
                    hooks.run_poststop(&state).await;
                }
                Err(error.into())
            }
        }
    }
}

/// The cgroup the VMM joins: the first container's `linux.cgroupsPath`, on a
/// cgroup v2 host (else the VMM stays in the shim's, with a warning).
fn sandbox_cgroup(spec: &serde_json::Value) -> Result<Option<PathBuf>> {
    let path = spec
        .get("linux")
        .and_then(|l| l.get("cgroupsPath"))
        .and_then(|p| p.as_str())
        .unwrap_or_default();
    let relative = cgroup::relative_path(path).map_err(|e| ShimError::BadRequest(e.to_string()))?;
    if relative.is_some() && !cgroup::is_cgroup_v2() {
        tracing::warn!(
            "{} is not cgroup v2: the VM is not charged to {path}",
            cgroup::CGROUP_ROOT
        );
        return Ok(None);
    }
    Ok(relative)
}
