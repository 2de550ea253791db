//! virtio-blk on a host file (`--disk-fd`): the guest's scratch disk, where
//! a sandbox keeps its containers' writable layers (docs/architecture.md).
//!
//! One request queue, one worker thread, synchronous I/O straight between
//! the file and guest memory. Offered: VERSION_1, EVENT_IDX and SEG_MAX (so
//! that Linux sends requests of many segments, not one page each). Not
//! offered: FLUSH, because the file is the sandbox's own scratch space that
//! no host crash needs to survive, so the device is write-through as far as
//! the guest can tell (a write is complete once the host page cache has it);
//! RO, DISCARD, WRITE_ZEROES and the rest. Every request is checked before
//! the file is touched (`request.rs`), and no request can reach past the
//! file's size, which the guest cannot change.

mod disk;
pub mod request;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::Bytes;

use super::device::{Activation, Device, DeviceState};
use super::epoll_worker::{EpollHandler, EpollWorker};
use super::interrupt::VirtioInterrupt;
use super::queue_drain::drain_queue;
use super::warn_limit::{limited, WarnLimiter};
use super::worker_thread::WorkerThreads;
use super::{
    ActivateError, GuestMemory, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VIRTIO_RING_F_EVENT_IDX,
};
use request::{Kind, Request, ID_LEN, S_IOERR, S_OK};

pub use disk::{DiskError, DiskFile};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most data buffers in one request (the header and the status take
/// two descriptors of the queue).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// `VIRTIO_BLK_F_SEG_MAX`.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// What GET_ID answers: the disk's serial, as the guest sees it in
/// /sys/block/vdX/serial.
pub const SERIAL: &[u8] = b"cocoon-scratch";

const NAME: &str = "virtio-blk";
const AVAIL_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_BLK_F_SEG_MAX;

/// The config space fields we fill (struct virtio_blk_config): capacity at
/// 0 (le64, in sectors), seg_max at 12 (le32); everything else reads zero.
const CONFIG_LEN: usize = 16;

/// The virtio block device.
pub struct Block {
    state: DeviceState,
    disk: Arc<DiskFile>,
    config: [u8; CONFIG_LEN],
}

impl Block {
    /// A new, not yet activated disk on `disk`.
    pub fn new(disk: DiskFile) -> Self {
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&disk.sectors().to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Block {
            state: DeviceState::default(),
            disk: Arc::new(disk),
            config,
        }
    }

    /// The disk's size in sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors()
    }
}

impl Device for Block {
    const NAME: &'static str = NAME;
    const TYPE: u32 = VIRTIO_ID_BLOCK;
    const QUEUE_SIZES: &'static [u16] = &[QUEUE_SIZE];
    const FEATURES: u64 = AVAIL_FEATURES;

    fn state(&mut self) -> &mut DeviceState {
        &mut self.state
    }

    fn required_queues(_acked_features: u64) -> &'static [usize] {
        &[0]
    }

    fn read_config_space(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start >= CONFIG_LEN {
            return;
        }
        let len = data.len().min(CONFIG_LEN - start);
        data[..len].copy_from_slice(&self.config[start..start + len]);
    }

    fn start_workers(
        &mut self,
        mut activation: Activation,
    ) -> Result<WorkerThreads, ActivateError> {
        let [request] = activation.take_queues()?;
        let worker = Worker {
            mem: activation.mem,
            interrupt: Arc::clone(&activation.interrupt),
            queue: request.queue,
            disk: Arc::clone(&self.disk),
            warn_limit: WarnLimiter::default(),
        };
        let queue_events = vec![(request.index, request.event)];
        EpollWorker::run_single(
            &activation.threads,
            activation.interrupt,
            queue_events,
            worker,
        )
        .map_err(ActivateError::Worker)
    }
}

// Everything the worker thread owns.
struct Worker {
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    queue: Queue,
    disk: Arc<DiskFile>,
    warn_limit: WarnLimiter,
}

impl EpollHandler for Worker {
    fn process_queue(&mut self, _index: usize) -> Result<(), virtio_queue::Error> {
        let Self {
            mem,
            interrupt,
            queue,
            disk,
            warn_limit,
        } = self;
        drain_queue(NAME, queue, mem, interrupt, |chain| {
            serve(mem, disk, warn_limit, chain)
        })
    }
}

/// Carries out one request and writes its status; returns how many bytes
/// went into device-writable buffers (the used length).
fn serve(
    mem: &GuestMemory,
    disk: &DiskFile,
    warn_limit: &mut WarnLimiter,
    chain: DescriptorChain<&GuestMemory>,
) -> u32 {
    let head = chain.head_index();
    let status_at = request::status_address(mem, chain.clone());
    let (status, written) = match request::parse(mem, chain, disk.sectors()) {
        Ok(request) => execute(mem, disk, &request).unwrap_or_else(|error| {
            limited!(warn_limit, warn, head, error = %error, "virtio-blk: I/O failed");
            (S_IOERR, 0)
        }),
        Err(error) => {
            limited!(
                warn_limit,
                warn,
                head,
                error = %error,
                "virtio-blk: refusing a request"
            );
            match error.status() {
                Some(status) => (status, 0),
                None => return 0,
            }
        }
    };
    match status_at {
        Some(at) if mem.write_obj(status, at).is_ok() => written.saturating_add(1),
        _ => 0,
    }
}

/// Does what `request` asks; returns its status and the bytes of data
/// written into guest buffers.
fn execute(mem: &GuestMemory, disk: &DiskFile, request: &Request) -> std::io::Result<(u8, u32)> {
    match request.kind {
        Kind::Read { sector } => {
            disk.read(mem, sector, &request.data)?;
            // At most SEG_MAX buffers of u32 lengths: a read this long would
            // not fit the used length; the parser's checks bound it anyway.
            Ok((S_OK, u32::try_from(request.data_len).unwrap_or(u32::MAX)))
        }
        Kind::Write { sector } => {
            disk.write(mem, sector, &request.data)?;
            Ok((S_OK, 0))
        }
        Kind::GetId => {
            let mut id = [0u8; ID_LEN as usize];
            id[..SERIAL.len()].copy_from_slice(SERIAL);
            let mut written = 0u32;
            for &(addr, len) in &request.data {
                let room = (ID_LEN - written).min(len);
                if room == 0 {
                    break;
                }
                let part = &id[written as usize..(written + room) as usize];
                mem.write_slice(part, addr).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                })?;
                written += room;
            }
            Ok((S_OK, written))
        }
    }
}
