//! The header line that opens a stdio stream connection to the agent: parsing
//! never panics, and whatever is accepted encodes back to a header that
//! parses to the same thing.
#![no_main]

use cocoon_protocol::stream::StreamHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = StreamHeader::parse(data) {
        assert_eq!(StreamHeader::parse(header.encode().as_bytes()), Ok(header));
    }
});
