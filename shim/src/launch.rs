//! The sandbox VM's start, on the sandbox's first Create: the config its
//! runtime options name (or the default one), the VM sized by the first
//! container, the state directory recorded in its bundle.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::protos::api::CreateTaskRequest;

use crate::config::Config;
use crate::error::Result;
use crate::guest::{Guest, Launch};
use crate::runtime_options;
use crate::sandbox::{self, Sandbox};
use crate::vm_shape::VmShape;

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
        let source = runtime_options::config_source(req.options.as_ref())?;
        let config = Config::resolve(source)?;
        log::set_max_level(config.log_filter(self.debug));
        let shape = VmShape::for_spec(&config, spec);
        let dir = sandbox::state_dir(&config, &self.namespace, &self.sandbox_id);
        if let Err(error) = sandbox::record_state_dir(Path::new(&req.bundle), &dir) {
            tracing::warn!("recording the state directory in {}: {error}", req.bundle);
        }
        Ok(Arc::new(
            Sandbox::start(&config, &self.namespace, dir, &shape).await?,
        ))
    }
}
