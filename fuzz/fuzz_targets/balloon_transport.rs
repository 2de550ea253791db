//! virtio-balloon behind the virtio-mmio transport: any sequence of guest
//! register accesses and guest memory writes never panics, in the transport
//! or in the device worker, whatever free page reports the rings hold
//! (unaligned, empty, wrapping, past or straddling the regions, read-only,
//! looping chains). A report that dropped host memory outside guest RAM
//! would zero the harness's own pages, which shows up as a crash only
//! indirectly.
//!
//! Inputs are the 8-byte operations of `mmio_transport` (see there):
//! `[kind, a, b, c, v0, v1, v2, v3]`, `kind & 3` = 32-bit register write at
//! `4 * a`, register read, raw access of any width at `[a, b]`, or a guest
//! memory write at offset `[a, b] & !3` of RAM region `(kind >> 4) & 1`.
//!
//! Guest RAM is two 64 KiB regions, at 0 and at 1 MiB, so that reported
//! ranges can straddle a hole. Each input gets a fresh transport, dropped at
//! the end, which stops and joins the device's worker thread.
#![no_main]

use std::sync::Arc;

use cocoon_vmm::virtio::balloon::Balloon;
use cocoon_vmm::virtio::interrupt::VirtioInterrupt;
use cocoon_vmm::virtio::mmio::MmioTransport;
use cocoon_vmm::virtio::GuestMemory;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const REGION_SIZE: u64 = 0x1_0000;
const REGIONS: [u64; 2] = [0, 0x10_0000];
const WIDTHS: [usize; 6] = [0, 1, 2, 3, 4, 8];
/// Most operations run per input.
const MAX_OPS: usize = 512;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemory::from_ranges(&[
        (GuestAddress(REGIONS[0]), REGION_SIZE as usize),
        (GuestAddress(REGIONS[1]), REGION_SIZE as usize),
    ])
    .expect("guest memory");
    let irq = EventFd::new(EFD_NONBLOCK).expect("irq eventfd");
    let interrupt = Arc::new(VirtioInterrupt::new(irq));
    // As the VM builds it: the first report switches guest RAM to small pages.
    let balloon = Balloon::with_small_pages_switch(cocoon_vmm::memory::prefer_small_pages);
    let mut transport =
        MmioTransport::new(Box::new(balloon), mem.clone(), interrupt).expect("transport");

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
    // Stops the device's worker, if the input started one.
    drop(transport);
});
