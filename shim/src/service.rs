//! The shim process itself: containerd's `start` / `delete` / serve
//! bootstrap (containerd-shim does the protocol), grouping containers into
//! sandboxes, and the task service it serves.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config as ShimConfig, Error, Flags, StartOpts};

use crate::config::Config;
use crate::launch::VmLauncher;
use crate::sandbox;
use crate::task::TaskService;

pub struct CocoonShim {
    namespace: String,
    id: String,
    bundle: PathBuf,
    debug: bool,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for CocoonShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        // containerd runs the shim in the bundle; newer versions also say so.
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        CocoonShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            debug: args.debug,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// One shim, and one VM, per sandbox: the containers of a CRI pod join
    /// their pod's shim; any other container is a sandbox of its own.
    /// containerd runs `start` in the container's bundle.
    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let spec = std::fs::read(self.bundle.join("config.json")).unwrap_or_default();
        let grouping = sandbox_of(&spec).unwrap_or_else(|| opts.id.clone());
        let address = spawn(opts, &grouping, Vec::new()).await?;
        Ok(address)
    }

    /// After a crashed shim: whatever its sandbox left behind goes.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let dir = match sandbox::recorded_state_dir(&self.bundle, &self.namespace, &self.id) {
            Some(dir) => dir,
            None => {
                let config =
                    Config::resolve(None).map_err(|e| Error::InvalidArgument(e.to_string()))?;
                sandbox::state_dir(&config, &self.namespace, &self.id)
            }
        };
        sandbox::clean_up_leftovers(&dir);
        let mut response = DeleteResponse::new();
        // As runc's shim: a task whose shim died was killed.
        response.exit_status = 128 + 9;
        response.exited_at = Some(containerd_shim::util::timestamp()?).into();
        Ok(response)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    /// The config is read at the first Create, which may name it.
    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let launcher = VmLauncher {
            namespace: self.namespace.clone(),
            sandbox_id: self.id.clone(),
            debug: self.debug,
        };
        TaskService::new(
            &self.namespace,
            Arc::new(launcher),
            Arc::new(publisher),
            self.exit.clone(),
        )
    }
}

/// The pod sandbox a CRI container belongs to, from its OCI spec's
/// annotations (none for a pod's own sandbox container, and for containers
/// outside Kubernetes).
fn sandbox_of(spec: &[u8]) -> Option<String> {
    const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    let spec: serde_json::Value = serde_json::from_slice(spec).ok()?;
    let annotations = spec.get("annotations")?;
    if annotations.get(CONTAINER_TYPE)?.as_str()? != "container" {
        return None;
    }
    let sandbox = annotations.get(SANDBOX_ID)?.as_str()?;
    (!sandbox.is_empty()).then(|| sandbox.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_containers_join_their_sandbox_and_others_stand_alone() {
        let member = br#"{"annotations": {"io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "pod1"}}"#;
        assert_eq!(sandbox_of(member), Some("pod1".into()));
        let pod = br#"{"annotations": {"io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": "pod1"}}"#;
        assert_eq!(sandbox_of(pod), None);
        assert_eq!(sandbox_of(br#"{"ociVersion": "1.0.2"}"#), None);
        assert_eq!(sandbox_of(b"not json"), None);
    }
}
