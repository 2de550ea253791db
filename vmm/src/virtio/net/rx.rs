//! The rx queue: frames from the tap, into buffers the guest posted.
//!
//! Back-pressure without host buffering: a frame is read from the tap only
//! once the guest has posted a buffer, and at most one frame read from the
//! tap waits in the VMM (for the rest of the buffers it needs). When the
//! guest has no buffers, the worker stops watching the tap (frames wait in
//! the tap's own kernel queue, which drops beyond its length) and resumes
//! on the guest's next rx notification: rx notifications are never
//! suppressed by flags, and with EVENT_IDX avail_event is set to the next
//! buffer whenever rx runs out, so the driver kicks when it posts one.
//!
//! With VIRTIO_NET_F_MRG_RXBUF a frame spans as many chains as it needs (the
//! header's num_buffers says how many; the first must hold the header);
//! without it, it must fit one chain, or it is dropped and the chain kept for
//! the next frame. Chains that can never be used (a device-readable or
//! out-of-memory descriptor, too small for a header) are completed empty.

use std::io;

use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::chain::RxChain;
use super::header::{NetHeader, HEADER_SIZE, MAX_PACKET_SIZE};
use super::tap::Tap;
use super::NAME;
use crate::virtio::interrupt::VirtioInterrupt;
use crate::virtio::queue_drain::notify_driver;
use crate::virtio::warn_limit::{limited, WarnLimiter};
use crate::virtio::GuestMemory;

/// What rx waits for once it has done what it could.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RxWait {
    /// The tap is empty: watch it.
    Tap,
    /// The guest has no (more) buffers: leave the tap alone until it kicks.
    Guest,
}

/// The rx side of one activation.
pub(super) struct RxPath {
    // One packet read from the tap; one byte more than the largest, to
    // recognise a frame the read had to cut.
    buf: Vec<u8>,
    // Length in `buf` of the frame waiting for buffers, its header rewritten.
    pending: Option<usize>,
    // Chains taken for the pending (or next) frame, in avail order.
    held: Vec<RxChain>,
    max_held: usize,
    acked: u64,
    mergeable: bool,
    warn_limit: WarnLimiter,
}

impl RxPath {
    /// `queue_size`: the most chains a frame may span.
    pub(super) fn new(acked: u64, queue_size: u16) -> Self {
        Self {
            buf: vec![0; MAX_PACKET_SIZE + 1],
            pending: None,
            held: Vec::new(),
            max_held: usize::from(queue_size.max(1)),
            acked,
            mergeable: super::features::mergeable_rx(acked),
            warn_limit: WarnLimiter::default(),
        }
    }

    /// Moves frames from the tap to the guest while both have some. An error
    /// means the queue itself is corrupt.
    pub(super) fn process(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        interrupt: &VirtioInterrupt,
        tap: &Tap,
    ) -> Result<RxWait, virtio_queue::Error> {
        let mut used_any = false;
        let wait = loop {
            let Some(len) = self.pending else {
                // A buffer first: until the guest has one, frames stay in the tap.
                if self.held.is_empty() && !self.take_chain(queue, mem, &mut used_any)? {
                    break RxWait::Guest;
                }
                match tap.read_frame(&mut self.buf) {
                    Ok(n) => self.accept_frame(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break RxWait::Tap,
                    Err(e) => {
                        // Not retried until the guest kicks: no spinning on a broken tap.
                        limited!(self.warn_limit, warn, error = %e, "virtio-net: cannot read the tap");
                        break RxWait::Guest;
                    }
                }
                continue;
            };
            if !self.deliver(queue, mem, len, &mut used_any)? {
                break RxWait::Guest;
            }
        };
        if used_any {
            notify_driver(NAME, queue, mem, interrupt)?;
        }
        Ok(wait)
    }

    // Checks a frame of `n` bytes just read into `buf`: keeps it pending with
    // the header the driver gets, or drops it.
    fn accept_frame(&mut self, n: usize) {
        let header = self
            .buf
            .get(..HEADER_SIZE)
            .and_then(|raw| <&[u8; HEADER_SIZE]>::try_from(raw).ok())
            .map(NetHeader::parse);
        let header = match header {
            Some(_) if n > MAX_PACKET_SIZE || n <= HEADER_SIZE => None,
            Some(header) => header.for_rx(self.acked),
            None => None,
        };
        match header {
            Some(header) => {
                self.buf[..HEADER_SIZE].copy_from_slice(&header.to_bytes());
                self.pending = Some(n);
            }
            None => {
                limited!(
                    self.warn_limit,
                    warn,
                    len = n,
                    "virtio-net: dropping a frame from the tap the guest cannot take"
                );
            }
        }
    }

    // Takes chains until the pending frame (`len` bytes) fits, then writes
    // and completes them. Returns false if the guest ran out of buffers first.
    fn deliver(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        len: usize,
        used_any: &mut bool,
    ) -> Result<bool, virtio_queue::Error> {
        loop {
            let have: usize = self.held.iter().map(|chain| chain.capacity).sum();
            if have >= len {
                break;
            }
            let full = if self.mergeable {
                self.held.len() >= self.max_held
            } else {
                !self.held.is_empty()
            };
            if full {
                // No single buffer (or, merged, no queue's worth) holds it.
                limited!(
                    self.warn_limit,
                    warn,
                    len,
                    have,
                    "virtio-net: rx buffers too small, dropping frame"
                );
                self.pending = None;
                if self.mergeable {
                    self.complete_held_empty(queue, mem, used_any)?;
                }
                return Ok(true);
            }
            if !self.take_chain(queue, mem, used_any)? {
                return Ok(false);
            }
        }
        let count = u16::try_from(self.held.len()).unwrap_or(u16::MAX);
        // num_buffers is the header's last field.
        self.buf[HEADER_SIZE - 2..HEADER_SIZE].copy_from_slice(&count.to_le_bytes());
        let mut rest = &self.buf[..len];
        for chain in self.held.drain(..) {
            let (now, later) = rest.split_at(chain.capacity.min(rest.len()));
            rest = later;
            let written = match chain.write(mem, now) {
                Ok(()) => now.len(),
                Err(e) => {
                    // Checked when taken; only a memory map change gets here.
                    limited!(self.warn_limit, warn, error = %e, "virtio-net: rx write failed");
                    0
                }
            };
            // At most MAX_PACKET_SIZE, far below u32::MAX.
            queue.add_used(mem, chain.head, u32::try_from(written).unwrap_or(0))?;
            *used_any = true;
        }
        self.pending = None;
        Ok(true)
    }

    // Takes the next usable chain into `held`; completes unusable ones empty
    // on the way. Returns false when the guest has none left.
    fn take_chain(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        used_any: &mut bool,
    ) -> Result<bool, virtio_queue::Error> {
        loop {
            let next = queue.iter(mem)?.next();
            let Some(chain) = next else {
                // Out of buffers: ask for a kick at the next one (with
                // EVENT_IDX, avail_event := next_avail), then look again for
                // one posted in between.
                if queue.enable_notification(mem)? {
                    continue;
                }
                return Ok(false);
            };
            let head = chain.head_index();
            // The first chain of a frame carries the header.
            let needed = if self.held.is_empty() { HEADER_SIZE } else { 1 };
            match RxChain::new(mem, chain) {
                Ok(chain) if chain.capacity >= needed => {
                    self.held.push(chain);
                    return Ok(true);
                }
                Ok(chain) => limited!(
                    self.warn_limit,
                    warn,
                    head,
                    capacity = chain.capacity,
                    "virtio-net: rx buffer too small, returning it empty"
                ),
                Err(e) => limited!(
                    self.warn_limit,
                    warn,
                    head,
                    error = %e,
                    "virtio-net: unusable rx buffer, returning it empty"
                ),
            }
            queue.add_used(mem, head, 0)?;
            *used_any = true;
        }
    }

    fn complete_held_empty(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        used_any: &mut bool,
    ) -> Result<(), virtio_queue::Error> {
        for chain in self.held.drain(..) {
            queue.add_used(mem, chain.head, 0)?;
            *used_any = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::net::UnixDatagram;

    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::virtio::test_driver::SplitRing;

    // Whether a frame is waiting on the device's end of the stand-in tap.
    fn frame_waiting(tap: &Tap) -> bool {
        let mut byte = 0u8;
        // SAFETY: recv writes at most one byte into `byte`; MSG_PEEK leaves
        // the frame where it is.
        let n = unsafe {
            libc::recv(
                tap.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n > 0
    }

    #[test]
    fn without_guest_buffers_frames_stay_in_the_tap() {
        let (ours, host) = UnixDatagram::pair().expect("socket pair");
        let tap = Tap::from_socket(OwnedFd::from(ours)).expect("stand-in tap");
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        let ring = SplitRing::new(0x1000, 16);
        let mut queue = ring.queue(16);
        let interrupt = VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).expect("irq"));
        let mut rx = RxPath::new(super::super::features::AVAIL_FEATURES, 16);
        // No buffer: rx waits for the guest, whatever the tap holds.
        assert_eq!(
            rx.process(&mut queue, &mem, &interrupt, &tap).ok(),
            Some(RxWait::Guest)
        );
        host.send(&[0u8; HEADER_SIZE + 60]).expect("send");
        // A frame but no buffer: it is not read, and rx waits for the guest.
        for _ in 0..3 {
            assert_eq!(
                rx.process(&mut queue, &mem, &interrupt, &tap).ok(),
                Some(RxWait::Guest)
            );
            assert!(frame_waiting(&tap), "the frame left the tap");
            assert!(rx.pending.is_none() && rx.held.is_empty());
        }
        assert_eq!(ring.used_idx(&mem), 0);
        // Two buffers: the frame goes in the first, and with the second
        // in hand rx waits for the tap.
        let mut ring = ring;
        let write = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
        for head in 0..2 {
            ring.set_desc(
                &mem,
                head,
                0x8000 + u64::from(head) * 0x1000,
                4096,
                write,
                0,
            );
            ring.push(&mem, head);
        }
        assert_eq!(
            rx.process(&mut queue, &mem, &interrupt, &tap).ok(),
            Some(RxWait::Tap)
        );
        assert_eq!(ring.used_elem(&mem, 0), (0, (HEADER_SIZE + 60) as u32));
        assert!(!frame_waiting(&tap));
    }
}
