//! The virtio-fs device: identity, features, config space and lifecycle.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::Vfs;
use tracing::info;

use super::config_space::ConfigSpace;
use super::error::FsError;
use super::passthrough::{self, Caching, FsServer};
use super::worker;
use crate::virtio::config::read_config_bytes;
use crate::virtio::device::{Activation, Device, DeviceState};
use crate::virtio::worker_thread::WorkerThreads;
use crate::virtio::{ActivateError, VIRTIO_F_VERSION_1, VIRTIO_ID_FS, VIRTIO_RING_F_EVENT_IDX};

/// Size of each queue. Linux caps a request at (queue size - a few) pages, so
/// 1024 lets the guest use fuse-backend-rs's full 1 MiB (256 pages) requests.
pub const QUEUE_SIZE: u16 = 1024;
/// Request queues announced in the config space (one; the worker pool gives
/// the concurrency that more queues would).
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// The high-priority queue plus the request queues.
pub const NUM_QUEUES: usize = 1 + NUM_REQUEST_QUEUES as usize;

// Queue 0 carries FORGET and INTERRUPT; queue 1 everything else.
const HIPRIO_QUEUE: usize = 0;
const REQUEST_QUEUE: usize = 1;

const AVAIL_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;

/// A virtio-fs device sharing one host directory under one tag.
pub struct Fs {
    state: DeviceState,
    tag: String,
    root: PathBuf,
    config: ConfigSpace,
    vfs: Arc<Vfs>,
    server: Arc<FsServer>,
}

impl Fs {
    /// Shares host directory `root` with the guest under `tag`
    /// (`mount -t virtiofs TAG /mnt` in the guest), to be cached in the
    /// guest as `caching` says.
    ///
    /// Validates the tag and that `root` is an existing directory, and sets up
    /// the passthrough file system with its root already imported, so every
    /// error surfaces while the VM is built. Several shares are several devices.
    pub fn new(tag: &str, root: impl Into<PathBuf>, caching: Caching) -> Result<Self, FsError> {
        let config = ConfigSpace::new(tag, NUM_REQUEST_QUEUES).map_err(|source| FsError::Tag {
            tag: tag.to_owned(),
            source,
        })?;
        let root = root.into();
        let vfs = passthrough::open(&root, caching)?;
        info!(tag, root = %root.display(), ?caching, "virtio-fs: sharing directory");
        Ok(Self {
            state: DeviceState::default(),
            tag: tag.to_owned(),
            root,
            config,
            server: Arc::new(Server::new(Arc::clone(&vfs))),
            vfs,
        })
    }

    /// The mount tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The shared host directory, as given.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Device for Fs {
    const NAME: &'static str = "virtio-fs";
    const TYPE: u32 = VIRTIO_ID_FS;
    const QUEUE_SIZES: &'static [u16] = &[QUEUE_SIZE; NUM_QUEUES];
    const FEATURES: u64 = AVAIL_FEATURES;
    const THREADS: usize = worker::WORKER_THREADS;
    // Its own umask and cwd, before the filter (which has no unshare).
    const PREPARE_THREAD: Option<fn()> = Some(passthrough::enter_worker_thread);

    fn state(&mut self) -> &mut DeviceState {
        &mut self.state
    }

    fn required_queues(_acked_features: u64) -> &'static [usize] {
        // Linux always enables the high-priority queue, but the device works
        // without it: FORGETs are an optimisation, INTERRUPTs advisory.
        &[REQUEST_QUEUE]
    }

    fn read_config_space(&self, offset: u64, data: &mut [u8]) {
        // Out-of-range parts read as zero; Linux never asks for them.
        read_config_bytes(self.config.as_bytes(), offset, data);
    }

    fn start_workers(&mut self, activation: Activation) -> Result<WorkerThreads, ActivateError> {
        let enabled: Vec<_> = activation
            .queues
            .into_iter()
            .filter(|active| active.ready)
            .collect();
        if enabled.iter().all(|q| q.index != HIPRIO_QUEUE) {
            info!(tag = %self.tag, "virtio-fs: driver left the high-priority queue disabled");
        }
        let server = Arc::clone(&self.server);
        worker::start(
            &activation.threads,
            server,
            activation.mem,
            activation.interrupt,
            enabled,
        )
        .map_err(ActivateError::Worker)
    }

    fn forget_driver_state(&mut self, workers_were_running: bool) {
        if workers_were_running {
            // The old driver's inodes and open files die with it; close their
            // host fds now rather than when (if ever) the guest says DESTROY.
            passthrough::forget_all(&self.vfs);
        }
    }
}
