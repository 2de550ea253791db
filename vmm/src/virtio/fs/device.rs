//! The virtio-fs device: identity, features, config space and lifecycle.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::Vfs;
use tracing::info;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::config_space::ConfigSpace;
use super::passthrough::{self, FsServer};
use super::worker::{VirtQueue, WorkerPool, WORKER_THREADS};
use crate::virtio::config::read_config_bytes;
use crate::virtio::interrupt::VirtioInterrupt;
use crate::virtio::warn_limit::{limited, WarnLimiter};
use crate::virtio::{
    ActivateError, GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_ID_FS,
    VIRTIO_RING_F_EVENT_IDX,
};

use super::error::FsError;

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

const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];
const AVAIL_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;

/// A virtio-fs device sharing one host directory under one tag.
pub struct Fs {
    tag: String,
    root: PathBuf,
    config: ConfigSpace,
    vfs: Arc<Vfs>,
    server: Arc<FsServer>,
    acked_features: u64,
    workers: Option<WorkerPool>,
    warn_limit: WarnLimiter,
}

impl Fs {
    /// Shares host directory `root` with the guest under `tag`
    /// (`mount -t virtiofs TAG /mnt` in the guest).
    ///
    /// Validates the tag and that `root` is an existing directory, and sets up
    /// the passthrough file system with its root already imported, so every
    /// error surfaces while the VM is built. Several shares are several devices.
    pub fn new(tag: &str, root: impl Into<PathBuf>) -> Result<Self, FsError> {
        let config = ConfigSpace::new(tag, NUM_REQUEST_QUEUES).map_err(|source| FsError::Tag {
            tag: tag.to_owned(),
            source,
        })?;
        let root = root.into();
        let vfs = passthrough::open(&root)?;
        info!(tag, root = %root.display(), "virtio-fs: sharing directory");
        Ok(Self {
            tag: tag.to_owned(),
            root,
            config,
            server: Arc::new(Server::new(Arc::clone(&vfs))),
            vfs,
            acked_features: 0,
            workers: None,
            warn_limit: WarnLimiter::default(),
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

    /// Stops the workers; returns whether any were running.
    fn stop_workers(&mut self) -> bool {
        match self.workers.take() {
            Some(mut workers) => {
                workers.stop();
                true
            }
            None => false,
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & AVAIL_FEATURES;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Out-of-range parts read as zero; Linux never asks for them.
        read_config_bytes(self.config.as_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        limited!(
            self.warn_limit,
            warn,
            offset,
            len = data.len(),
            "virtio-fs: ignoring write to read-only config space"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        if self.workers.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != NUM_QUEUES || queue_events.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                queues: queues.len(),
                events: queue_events.len(),
            });
        }
        if !queues[REQUEST_QUEUE].ready() {
            return Err(ActivateError::QueueNotReady(REQUEST_QUEUE));
        }
        // Linux always enables the high-priority queue, but the device works
        // without it: FORGETs are an optimisation, INTERRUPTs advisory.
        let enabled: Vec<VirtQueue> = queues
            .into_iter()
            .zip(queue_events)
            .enumerate()
            .filter(|(_, (queue, _))| queue.ready())
            .map(|(index, (queue, event))| VirtQueue {
                index,
                queue,
                event,
            })
            .collect();
        if enabled.iter().all(|q| q.index != HIPRIO_QUEUE) {
            info!(tag = %self.tag, "virtio-fs: driver left the high-priority queue disabled");
        }
        let workers = WorkerPool::start(
            Arc::clone(&self.server),
            mem,
            interrupt,
            enabled,
            WORKER_THREADS,
        )
        .map_err(ActivateError::Worker)?;
        self.workers = Some(workers);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if self.stop_workers() {
            // The old driver's inodes and open files die with it; close their
            // host fds now rather than when (if ever) the guest says DESTROY.
            passthrough::forget_all(&self.vfs);
        }
        self.acked_features = 0;
        true
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.stop_workers();
    }
}
