//! The virtio-mmio transport: any sequence of guest register accesses (any
//! offset, width and value, config space included) and guest memory writes
//! against the rng device behind `MmioTransport` never panics, in the
//! transport or in the device worker it may start (DRIVER_OK with garbage
//! queue addresses, notifications, resets).
//!
//! Inputs are the 8-byte operations of `cocoon_fuzz::transport_ops` (see
//! there), on two 64 KiB RAM regions at 0 and at 1 MiB.
#![no_main]

use cocoon_fuzz::transport_ops;
use cocoon_vmm::virtio::rng::Rng;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| transport_ops::run(Box::new(Rng::new()), data));
