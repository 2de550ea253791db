//! The 44-byte virtio-vsock packet header, as the guest puts it in every TX
//! descriptor chain: parsing never panics, and whatever parses round-trips.
#![no_main]

use cocoon_vmm::virtio::vsock::header::MAX_PKT_LEN;
use cocoon_vmm::virtio::vsock::parse_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = parse_header(data) {
        assert!(header.len <= MAX_PKT_LEN);
        let bytes = header.to_bytes();
        assert_eq!(parse_header(&bytes), Ok(header));
        // The header is exactly the first HEADER_SIZE bytes, field for field.
        assert_eq!(bytes[..], data[..bytes.len()]);
    }
});
