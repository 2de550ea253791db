//! The `CONNECT <port>` line a host client sends on the vsock device's Unix
//! socket: parsing never panics, and an accepted port is what the line says.
#![no_main]

use cocoon_vmm::virtio::vsock::unix_backend::parse_connect_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(port) = parse_connect_line(data) {
        assert_eq!(
            parse_connect_line(format!("CONNECT {port}\n").as_bytes()),
            Ok(port)
        );
        let text = std::str::from_utf8(data).expect("accepted lines are UTF-8");
        let mut words = text.split_ascii_whitespace();
        assert!(words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("connect")));
        assert_eq!(words.next().and_then(|w| w.parse().ok()), Some(port));
        assert_eq!(words.next(), None);
    }
});
