//! The op interpreter of the virtio-mmio transport targets (`mmio_transport`,
//! `balloon_transport`): guest register accesses and guest memory writes
//! against one device behind `MmioTransport`.
//!
//! An input is a sequence of 8-byte operations `[kind, a, b, c, v0, v1, v2, v3]`,
//! with `v = u32::from_le_bytes([v0, v1, v2, v3])`; `kind & 3` selects:
//!
//! - 0: 32-bit register write of `v` at offset `4 * a` (0..0x3fc: the
//!   registers and the start of config space);
//! - 1: 32-bit register read at offset `4 * a`;
//! - 2: raw access at offset `u16::from_le_bytes([a, b])` (also past the
//!   4 KiB window) of width `[0, 1, 2, 3, 4, 8][c % 6]`, a write (of `v`
//!   repeated) if `kind & 0x10`, else a read;
//! - 3: guest memory write of `v` at offset `u16::from_le_bytes([a, b]) & !3`
//!   of RAM region `(kind >> 4) & 1` (rings and descriptors for the worker).
//!
//! Guest RAM is two 64 KiB regions, at 0 and at 1 MiB, so that rings (and
//! whatever addresses the device reads from them) can also straddle a hole.
//! Each input gets a fresh transport, dropped at the end, which stops and
//! joins the device's worker threads.

use std::sync::Arc;

use cocoon_vmm::virtio::interrupt::VirtioInterrupt;
use cocoon_vmm::virtio::mmio::MmioTransport;
use cocoon_vmm::virtio::{GuestMemory, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const REGION_SIZE: u64 = 0x1_0000;
const REGIONS: [u64; 2] = [0, 0x10_0000];
const WIDTHS: [usize; 6] = [0, 1, 2, 3, 4, 8];
/// Most operations run per input.
const MAX_OPS: usize = 512;

/// Runs the operations in `data` against `device` behind a fresh transport.
pub fn run(mut device: Box<dyn VirtioDevice>, data: &[u8]) {
    // As the VM does before the guest runs (without seccomp filters).
    device.threads().start(None).expect("device threads");
    let mem = GuestMemory::from_ranges(&[
        (GuestAddress(REGIONS[0]), REGION_SIZE as usize),
        (GuestAddress(REGIONS[1]), REGION_SIZE as usize),
    ])
    .expect("guest memory");
    let irq = EventFd::new(EFD_NONBLOCK).expect("irq eventfd");
    let interrupt = Arc::new(VirtioInterrupt::new(irq));
    let mut transport = MmioTransport::new(device, mem.clone(), interrupt).expect("transport");

    for op in data.chunks_exact(8).take(MAX_OPS) {
        let [kind, a, b, c, v0, v1, v2, v3] = op.try_into().expect("8 bytes");
        let value = [v0, v1, v2, v3];
        match kind & 3 {
            0 => transport.write(4 * u64::from(a), &value),
            1 => transport.read(4 * u64::from(a), &mut [0; 4]),
            2 => {
                let offset = u64::from(u16::from_le_bytes([a, b]));
                let width = WIDTHS[usize::from(c) % WIDTHS.len()];
                if kind & 0x10 != 0 {
                    let bytes = [value, value].concat();
                    transport.write(offset, &bytes[..width]);
                } else {
                    transport.read(offset, &mut [0; 8][..width]);
                }
            }
            _ => {
                let region = REGIONS[usize::from((kind >> 4) & 1)];
                let offset = u64::from(u16::from_le_bytes([a, b]) & !3);
                mem.write_slice(&value, GuestAddress(region + offset))
                    .expect("write inside guest memory");
            }
        }
    }
    // Stops the device's workers, if the input started any.
    drop(transport);
}
