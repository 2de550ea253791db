//! Serving a virtqueue the usual way: take every chain the driver made
//! available with notifications suppressed meanwhile, complete each one, then
//! interrupt the driver once, if it asked to be.

use tracing::error;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::interrupt::VirtioInterrupt;
use super::GuestMemory;

/// Completes every available chain of `queue` with what `serve` returns for
/// it: the number of bytes it wrote into the chain. An error means the queue
/// itself is corrupt; a bad request is `serve`'s to answer.
pub(crate) fn drain_queue(
    device: &str,
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &VirtioInterrupt,
    mut serve: impl FnMut(DescriptorChain<&GuestMemory>) -> u32,
) -> Result<(), virtio_queue::Error> {
    let mut used_any = false;
    loop {
        queue.disable_notification(mem)?;
        loop {
            let next = queue.iter(mem)?.next();
            let Some(chain) = next else {
                break;
            };
            let head = chain.head_index();
            let len = serve(chain);
            queue.add_used(mem, head, len)?;
            used_any = true;
        }
        // Re-check after re-enabling notifications so a chain posted in
        // between is not left waiting for a kick that never comes.
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    if used_any {
        notify_driver(device, queue, mem, interrupt)?;
    }
    Ok(())
}

/// Interrupts the driver about chains just used on `queue`, unless it
/// suppressed the interrupt (used_event with EVENT_IDX, or the ring's flags).
pub(crate) fn notify_driver(
    device: &str,
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &VirtioInterrupt,
) -> Result<(), virtio_queue::Error> {
    if queue.needs_notification(mem)? {
        if let Err(e) = interrupt.signal_used_queue() {
            error!(error = %e, "{device}: cannot signal used queue");
        }
    }
    Ok(())
}
