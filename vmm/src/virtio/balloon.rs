//! virtio-balloon with free page reporting only (virtio 1.2, section 5.5).
//!
//! The guest's page allocator hands free page ranges to the driver, which posts
//! them on the reporting queue; we drop them from host memory with
//! `MADV_DONTNEED`, so memory the guest touched once and freed (the unpacked
//! initramfs, freed init memory) stops counting towards the VMM's resident
//! size. If the guest allocates a reported page again, it faults in a fresh
//! zero page.
//!
//! The first report also means the guest has booted: from then on the guest
//! RAM it has touched gets small pages (the switch the VM hands over at
//! construction, `memory::prefer_small_pages`), so that reports smaller than
//! a huge page free memory too. RAM it never touched keeps huge pages until
//! a report frees part of a 2 MiB chunk there: that chunk gets small pages
//! then, so khugepaged never collapses a chunk the guest uses in part back
//! into a whole resident huge page.
//!
//! No ballooning proper: `num_pages` stays 0, so the driver never inflates,
//! and whatever it still posts on the inflate and deflate queues is completed
//! untouched. With VIRTIO_BALLOON_F_REPORTING (and neither STATS_VQ nor
//! FREE_PAGE_HINT) the queues are inflateq (0), deflateq (1) and
//! reporting_vq (2).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::debug;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{GuestAddress, GuestMemory as _, GuestMemoryRegion};

use super::config::{read_config_bytes, write_config_bytes};
use super::device::{Activation, Device, DeviceState};
use super::epoll_worker::{EpollHandler, EpollWorker};
use super::interrupt::VirtioInterrupt;
use super::queue_drain::drain_queue;
use super::warn_limit::{limited, WarnLimiter};
use super::worker_thread::WorkerThreads;
use super::{
    ActivateError, GuestMemory, VIRTIO_F_VERSION_1, VIRTIO_ID_BALLOON, VIRTIO_RING_F_EVENT_IDX,
};
// The tests drive the device through the transport's interface.
#[cfg(test)]
use {
    super::VirtioDevice,
    vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK},
};

/// Feature bit of free page reporting (virtio 1.2, 5.5.3). virtio-bindings has
/// no balloon module, so the bit number comes from the spec.
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;
/// Size of each queue. Linux refuses a reporting queue smaller than its
/// PAGE_REPORTING_CAPACITY (32 ranges per report).
pub const QUEUE_SIZE: u16 = 256;
/// Reported ranges must be multiples of this, at addresses aligned to it (the
/// host page size; Linux reports whole 2 MiB pageblocks on x86).
pub const PAGE_SIZE: u64 = 4096;

const NAME: &str = "virtio-balloon";
const INFLATE_QUEUE: usize = 0;
const DEFLATE_QUEUE: usize = 1;
const REPORTING_QUEUE: usize = 2;
const AVAIL_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_BALLOON_F_REPORTING;

// struct virtio_balloon_config, little endian: num_pages, actual,
// free_page_hint_cmd_id, poison_val (le32 each). Only `actual` is ever nonzero.
const CONFIG_SIZE: usize = 16;
const ACTUAL_OFFSET: u64 = 4;

/// Switches guest RAM to small pages; the balloon calls it at the first
/// report of each activation.
pub type SmallPagesSwitch = fn(&GuestMemory);

/// The virtio memory balloon device, reduced to free page reporting.
pub struct Balloon {
    state: DeviceState,
    switch_to_small_pages: SmallPagesSwitch,
    // Pages the driver says it holds in the balloon (always 0 from Linux).
    actual: u32,
    reported: Arc<AtomicU64>,
}

impl Balloon {
    /// A new, not yet activated balloon device; `switch_to_small_pages`
    /// runs when the guest first reports free pages (it has booted).
    pub fn with_small_pages_switch(switch_to_small_pages: SmallPagesSwitch) -> Self {
        Self {
            state: DeviceState::default(),
            switch_to_small_pages,
            actual: 0,
            reported: Arc::default(),
        }
    }

    /// The balloon as the VM builds it.
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::with_small_pages_switch(crate::memory::prefer_small_pages)
    }

    /// Bytes of reported guest memory dropped from the host so far, across
    /// resets; the counter is shared with the device's worker.
    pub fn reported_bytes(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.reported)
    }

    fn config(&self) -> [u8; CONFIG_SIZE] {
        let mut config = [0; CONFIG_SIZE];
        config[4..8].copy_from_slice(&self.actual.to_le_bytes());
        config
    }
}

impl Device for Balloon {
    const NAME: &'static str = NAME;
    const TYPE: u32 = VIRTIO_ID_BALLOON;
    const QUEUE_SIZES: &'static [u16] = &[QUEUE_SIZE; 3];
    const FEATURES: u64 = AVAIL_FEATURES;

    fn state(&mut self) -> &mut DeviceState {
        &mut self.state
    }

    fn required_queues(acked_features: u64) -> &'static [usize] {
        // The reporting queue exists only if the driver took the feature.
        if acked_features & VIRTIO_BALLOON_F_REPORTING != 0 {
            &[INFLATE_QUEUE, DEFLATE_QUEUE, REPORTING_QUEUE]
        } else {
            &[INFLATE_QUEUE, DEFLATE_QUEUE]
        }
    }

    fn read_config_space(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn write_config_space(&mut self, offset: u64, data: &[u8]) -> bool {
        // Only `actual` is the driver's to write, and a write must fit in it.
        let mut actual = self.actual.to_le_bytes();
        let written = offset
            .checked_sub(ACTUAL_OFFSET)
            .is_some_and(|at| write_config_bytes(&mut actual, at, data));
        if written {
            self.actual = u32::from_le_bytes(actual);
        }
        written
    }

    fn start_workers(
        &mut self,
        mut activation: Activation,
    ) -> Result<WorkerThreads, ActivateError> {
        let reporting = activation.acked_features & VIRTIO_BALLOON_F_REPORTING != 0;
        let mut queues = Vec::new();
        let mut queue_events = Vec::new();
        for (kind, active) in QueueKind::ALL
            .into_iter()
            .zip(activation.take_queues::<3>()?)
        {
            if kind != QueueKind::Reporting || reporting {
                queues.push((kind, active.queue));
                queue_events.push((active.index, active.event));
            }
        }
        let worker = Worker {
            mem: activation.mem,
            interrupt: Arc::clone(&activation.interrupt),
            queues,
            reported: Arc::clone(&self.reported),
            warn_limit: WarnLimiter::default(),
            switch_to_small_pages: Some(self.switch_to_small_pages),
        };
        EpollWorker::run_single(
            &activation.threads,
            activation.interrupt,
            queue_events,
            worker,
        )
        .map_err(ActivateError::Worker)
    }

    fn forget_driver_state(&mut self, _workers_were_running: bool) {
        self.actual = 0;
    }
}

// A queue's kind; its discriminant is the virtio queue index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
enum QueueKind {
    Inflate = INFLATE_QUEUE,
    Deflate = DEFLATE_QUEUE,
    Reporting = REPORTING_QUEUE,
}

impl QueueKind {
    // In virtio queue index order.
    const ALL: [Self; 3] = [Self::Inflate, Self::Deflate, Self::Reporting];

    fn name(self) -> &'static str {
        match self {
            Self::Inflate => "inflateq",
            Self::Deflate => "deflateq",
            Self::Reporting => "reporting_vq",
        }
    }
}

// Why a report dropped nothing (or not everything).
#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error("descriptor {0:#x} is device-readable")]
    ReadOnly(u64),
    #[error("range {addr:#x}+{len:#x} {why}")]
    BadRange {
        addr: u64,
        len: u32,
        why: &'static str,
    },
    #[error("the chain has no descriptors")]
    Empty,
    #[error("the chain loops, exceeds 4 GiB or leaves the descriptor table")]
    Truncated,
    #[error("madvise of range {addr:#x}+{len:#x} failed: {source}")]
    Discard {
        addr: u64,
        len: u32,
        source: io::Error,
    },
}

// A reported range, checked to lie inside one region of guest memory.
struct FreeRange {
    guest: u64,
    len: u32,
    host: *mut u8,
    /// The host mapping of the guest memory region the range lies in.
    region_host: *mut u8,
    region_len: usize,
}

// Everything the worker thread owns.
struct Worker {
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    // The queues in use.
    queues: Vec<(QueueKind, Queue)>,
    reported: Arc<AtomicU64>,
    warn_limit: WarnLimiter,
    // Taken at the first report.
    switch_to_small_pages: Option<SmallPagesSwitch>,
}

impl EpollHandler for Worker {
    fn process_queue(&mut self, index: usize) -> Result<(), virtio_queue::Error> {
        let Self {
            mem,
            interrupt,
            queues,
            reported,
            warn_limit,
            switch_to_small_pages,
        } = self;
        let Some((kind, queue)) = queues.iter_mut().find(|(kind, _)| *kind as usize == index)
        else {
            return Ok(());
        };
        let kind = *kind;
        drain_queue(NAME, queue, mem, interrupt, |chain| {
            if kind == QueueKind::Reporting {
                if let Some(switch) = switch_to_small_pages.take() {
                    switch(mem);
                }
                report(reported, warn_limit, chain);
            } else {
                limited!(
                    warn_limit,
                    warn,
                    queue = kind.name(),
                    head = chain.head_index(),
                    "virtio-balloon: we never resize the balloon, completing the buffer untouched"
                );
            }
            // Nothing is ever written into the driver's buffers.
            0
        })
    }
}

// Drops the ranges of one report from host memory and counts them; a
// malformed report drops nothing.
fn report(
    reported: &AtomicU64,
    warn_limit: &mut WarnLimiter,
    chain: DescriptorChain<&GuestMemory>,
) {
    let head = chain.head_index();
    match discard_chain(chain) {
        Ok(bytes) => {
            let total = reported
                .fetch_add(bytes, Ordering::Relaxed)
                .saturating_add(bytes);
            debug!(head, bytes, total, "virtio-balloon: dropped free pages");
        }
        Err(e) => limited!(
            warn_limit,
            warn,
            head,
            error = %e,
            "virtio-balloon: malformed free page report, completing it"
        ),
    }
}

// Checks every range of the chain first, then drops them all. Returns the
// number of bytes dropped.
fn discard_chain(chain: DescriptorChain<&GuestMemory>) -> Result<u64, ReportError> {
    let mem = chain.memory();
    let mut ranges = Vec::new();
    // The iterator silently stops at a loop, at the queue size, at 4 GiB in
    // total or at a descriptor it cannot read: a chain that ends with a
    // descriptor pointing to a next one was cut short.
    let mut cut_short = false;
    for desc in chain.clone() {
        if !desc.is_write_only() {
            return Err(ReportError::ReadOnly(desc.addr().0));
        }
        ranges.push(free_range(mem, desc.addr().0, desc.len())?);
        cut_short = desc.has_next();
    }
    if ranges.is_empty() {
        return Err(ReportError::Empty);
    }
    if cut_short {
        return Err(ReportError::Truncated);
    }
    let mut bytes = 0u64;
    for range in &ranges {
        discard(range)?;
        bytes = bytes.saturating_add(u64::from(range.len));
    }
    Ok(bytes)
}

// Resolves one reported range to host memory: page aligned, not empty, not
// wrapping, and entirely inside one private region.
fn free_range(mem: &GuestMemory, addr: u64, len: u32) -> Result<FreeRange, ReportError> {
    let bad = |why| ReportError::BadRange { addr, len, why };
    if len == 0 {
        return Err(bad("is empty"));
    }
    if !addr.is_multiple_of(PAGE_SIZE) || !u64::from(len).is_multiple_of(PAGE_SIZE) {
        return Err(bad("is not page aligned"));
    }
    let last = addr
        .checked_add(u64::from(len) - 1)
        .map(GuestAddress)
        .ok_or_else(|| bad("wraps around"))?;
    let (region, offset) = mem
        .to_region_addr(GuestAddress(addr))
        .ok_or_else(|| bad("starts outside guest memory"))?;
    if region.to_region_addr(last).is_none() {
        return Err(if mem.address_in_range(last) {
            bad("straddles two memory regions")
        } else {
            bad("runs past guest memory")
        });
    }
    if region.flags() & libc::MAP_PRIVATE == 0 {
        return Err(bad("is not in private memory"));
    }
    let host = region
        .get_host_address(offset)
        .map_err(|_| bad("has no host mapping"))?;
    Ok(FreeRange {
        guest: addr,
        len,
        host,
        region_host: region.as_ptr(),
        region_len: region.len() as usize,
    })
}

fn discard(range: &FreeRange) -> Result<(), ReportError> {
    // SAFETY: free_range checked that [host, host + len) lies inside one region
    // of guest memory, a private mapping of this process that stays mapped
    // while the worker holds `mem` (the caller borrows it). The call affects
    // no Rust object: guest memory is only ever accessed through volatile
    // pointers, and once the pages are dropped every access reads fresh zero
    // pages (anonymous memory) or the snapshot's bytes again (a VM started
    // from a snapshot file, mapped privately). Either is what the guest
    // allowed by reporting the pages: we do not offer
    // VIRTIO_BALLOON_F_PAGE_POISON, so a reused page's content is undefined
    // (and a Linux guest that needs freed pages zeroed, init_on_free, does
    // not report without that feature).
    let result =
        unsafe { libc::madvise(range.host.cast(), range.len as usize, libc::MADV_DONTNEED) };
    if result == 0 {
        prefer_small_pages_around(range);
        Ok(())
    } else {
        Err(ReportError::Discard {
            addr: range.guest,
            len: range.len,
            source: io::Error::last_os_error(),
        })
    }
}

/// Gives small pages to the 2 MiB chunks that `range` covers only in part
/// (at most its first and last): the guest still uses the rest of them.
fn prefer_small_pages_around(range: &FreeRange) {
    let huge = crate::memory::HUGE_PAGE;
    let region_start = range.region_host as usize;
    let region_end = region_start + range.region_len;
    let start = range.host as usize;
    let end = start + range.len as usize;
    let chunk_of = |at: usize| {
        let chunk = region_start + (at - region_start) / huge * huge;
        (chunk, (chunk + huge).min(region_end))
    };
    let (head, tail) = (chunk_of(start), chunk_of(end - 1));
    let edges = if head == tail {
        vec![head]
    } else {
        vec![head, tail]
    };
    for (chunk_start, chunk_end) in edges {
        if start <= chunk_start && chunk_end <= end {
            continue; // freed whole
        }
        // SAFETY: the chunk lies inside the range's guest memory region (a
        // private mapping alive as long as the process: see discard);
        // MADV_NOHUGEPAGE only changes how the kernel backs it.
        unsafe {
            libc::madvise(
                chunk_start as *mut libc::c_void,
                chunk_end - chunk_start,
                libc::MADV_NOHUGEPAGE,
            )
        };
    }
}

#[cfg(test)]
mod tests;
