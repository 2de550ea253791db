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
use crate::sandbox;
use crate::task::TaskService;

pub struct CocoonShim {
    namespace: String,
    id: String,
    bundle: PathBuf,
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
        TaskService::new(&self.namespace, &self.id, publisher, self.exit.clone())
    }
}
