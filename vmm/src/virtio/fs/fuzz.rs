//! A self-contained entry point for fuzz targets.
//!
//! [`handle_request_bytes`] runs one raw FUSE request through exactly the code
//! the device worker uses (`request::handle_chain`): it lays
//! the bytes out in a private guest memory as a two-descriptor chain (request
//! readable, reply writable) on a private split queue, pops the chain and
//! serves it. A fuzz target needs nothing else:
//!
//! ```ignore
//! let dir = tempfile::tempdir()?;
//! let server = cocoon_vmm::virtio::fs::new_server(dir.path(), Caching::Coherent)?;
//! fuzz_target!(|data: &[u8]| {
//!     let reply = cocoon_vmm::virtio::fs::handle_request_bytes(&server, data);
//!     assert!(!reply.panicked);
//! });
//! ```
//!
//! Requests are independent but the file system is stateful (INIT, LOOKUP
//! counts, open handles), so a target may feed several requests per input.
//! A FUSE_DESTROY makes PassthroughFs re-import its root, which sets the
//! umask of the calling thread's fs context to 0 (the device's workers have a
//! private one); run the target in a process where that does not matter.

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::request::{self, MAX_REQUEST_LEN};
use crate::virtio::warn_limit::WarnLimiter;
use crate::virtio::GuestMemory;

/// Room for the reply: enough for any metadata reply and reads up to 256 KiB.
pub const FUZZ_REPLY_CAPACITY: u32 = 256 * 1024;
/// Longer requests are cut here (the device refuses them anyway).
pub const FUZZ_MAX_REQUEST: usize = MAX_REQUEST_LEN as usize + 4096;

const PAGE: u64 = 4096;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x100;
const USED_RING: u64 = 0x200;
const REQUEST: u64 = PAGE;

/// The device's answer to one request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FuzzReply {
    /// What the device wrote into the reply buffers (the used length's worth).
    pub bytes: Vec<u8>,
    /// The file system panicked; the device would now need a reset.
    /// Fuzz targets should treat this as a finding.
    pub panicked: bool,
}

/// Serves one raw FUSE request (`InHeader` + arguments) with `server`.
/// Never panics; failures of the harness itself yield an empty reply.
pub fn handle_request_bytes<F: FileSystem + Sync>(server: &Server<F>, request: &[u8]) -> FuzzReply {
    let request = request.get(..FUZZ_MAX_REQUEST).unwrap_or(request);
    serve(server, request).unwrap_or_default()
}

fn serve<F: FileSystem + Sync>(server: &Server<F>, request: &[u8]) -> Option<FuzzReply> {
    let request_len = u32::try_from(request.len()).ok()?;
    let reply = REQUEST + u64::from(request_len.max(1)).next_multiple_of(PAGE);
    let size = usize::try_from(reply + u64::from(FUZZ_REPLY_CAPACITY)).ok()?;
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), size)]).ok()?;
    mem.write_slice(request, GuestAddress(REQUEST)).ok()?;
    write_desc(&mem, 0, REQUEST, request_len, VRING_DESC_F_NEXT as u16, 1)?;
    write_desc(
        &mem,
        1,
        reply,
        FUZZ_REPLY_CAPACITY,
        VRING_DESC_F_WRITE as u16,
        0,
    )?;
    // avail: flags, idx = 1, ring[0] = head 0.
    mem.write_obj(1u16.to_le(), GuestAddress(AVAIL_RING + 2))
        .ok()?;
    mem.write_obj(0u16.to_le(), GuestAddress(AVAIL_RING + 4))
        .ok()?;

    let mut queue = Queue::new(2).ok()?;
    queue.set_size(2);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_ready(true);
    let chain = queue.iter(&mem).ok()?.next()?;

    let done = request::handle_chain(server, &mem, chain, &mut WarnLimiter::default());
    let mut bytes = vec![0; usize::try_from(done.len).ok()?];
    mem.read_slice(&mut bytes, GuestAddress(reply)).ok()?;
    Some(FuzzReply {
        bytes,
        panicked: done.panicked,
    })
}

fn write_desc(
    mem: &GuestMemory,
    index: u64,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) -> Option<()> {
    let at = DESC_TABLE + 16 * index;
    mem.write_obj(addr.to_le(), GuestAddress(at)).ok()?;
    mem.write_obj(len.to_le(), GuestAddress(at + 8)).ok()?;
    mem.write_obj(flags.to_le(), GuestAddress(at + 12)).ok()?;
    mem.write_obj(next.to_le(), GuestAddress(at + 14)).ok()
}
