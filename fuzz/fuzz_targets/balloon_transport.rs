//! virtio-balloon behind the virtio-mmio transport: any sequence of guest
//! register accesses and guest memory writes never panics, in the transport
//! or in the device worker, whatever free page reports the rings hold
//! (unaligned, empty, wrapping, past or straddling the regions, read-only,
//! looping chains). A report that dropped host memory outside guest RAM
//! would zero the harness's own pages, which shows up as a crash only
//! indirectly.
//!
//! Inputs are the 8-byte operations of `cocoon_fuzz::transport_ops` (see
//! there), on two 64 KiB RAM regions at 0 and at 1 MiB, so that reported
//! ranges can straddle a hole.
#![no_main]

use cocoon_fuzz::transport_ops;
use cocoon_vmm::memory::prefer_small_pages;
use cocoon_vmm::virtio::balloon::Balloon;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As the VM builds it: the first report switches guest RAM to small pages.
    let balloon = Balloon::with_small_pages_switch(prefer_small_pages);
    transport_ops::run(Box::new(balloon), data);
});
