//! The shim process itself: containerd's `start` / `delete` / serve
//! bootstrap (containerd-shim does the protocol), grouping containers into
//! sandboxes, and the task service it serves.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config as ShimConfig, Error, Flags, StartOpts};

use crate::config::Config;
use crate::sandbox;
use crate::task::TaskService;

pub struct CocoonShim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for CocoonShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        CocoonShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// One shim (and one VM) per container for now; CRI pods will group by
    /// their sandbox id here.
    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let grouping = opts.id.clone();
        let address = spawn(opts, &grouping, Vec::new()).await?;
        Ok(address)
    }

    /// After a crashed shim: whatever its sandbox left behind goes.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let config = Config::load().map_err(|e| Error::InvalidArgument(e.to_string()))?;
        sandbox::clean_up_leftovers(&sandbox::state_dir(&config, &self.namespace, &self.id));
        let mut response = DeleteResponse::new();
        // As runc's shim: a task whose shim died was killed.
        response.exit_status = 128 + 9;
        response.exited_at = Some(containerd_shim::util::timestamp()?).into();
        Ok(response)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let config = match Config::load() {
            Ok(config) => config,
            Err(error) => {
                tracing::error!("{error}; using the defaults");
                Config::default()
            }
        };
        TaskService::new(
            &self.namespace,
            &self.id,
            config,
            publisher,
            self.exit.clone(),
        )
    }
}
