//! A deterministic byte stream and a checksum over streams, so both ends of a
//! transfer (host test and guest probe) agree on what "intact" means without
//! holding the data.

use std::io::Read;

/// Yields `len` bytes of a fixed pseudo-random pattern; byte i depends only
/// on i, so how a reader chunks its reads does not matter.
pub struct PatternReader {
    offset: u64,
    len: u64,
}

impl PatternReader {
    pub fn new(len: u64) -> Self {
        Self { offset: 0, len }
    }
}

/// splitmix64 of the 8-byte block index.
fn block(index: u64) -> [u8; 8] {
    let mut z = index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).to_le_bytes()
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len - self.offset) as usize;
        for (i, byte) in buf[..n].iter_mut().enumerate() {
            let position = self.offset + i as u64;
            *byte = block(position / 8)[(position % 8) as usize];
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// FNV-1a over everything `reader` yields until EOF: (bytes, checksum).
pub fn checksum_stream(reader: &mut impl Read) -> std::io::Result<(u64, u64)> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok((total, hash)),
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        for byte in &buf[..n] {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        total += n as u64;
    }
}

/// The checksum of `len` bytes of the pattern.
pub fn pattern_checksum(len: u64) -> u64 {
    checksum_stream(&mut PatternReader::new(len))
        .map(|(_, sum)| sum)
        .unwrap_or(0)
}

/// Dials guest `port` through a cocoon-vmm hybrid vsock socket `uds`, sends
/// `bytes` of the pattern, half-closes, and returns the guest probe's
/// "<bytes> <checksum>" reply (see [`expected_reply`]).
pub fn send_to_guest(uds: &std::path::Path, port: u32, bytes: u64) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream =
        std::os::unix::net::UnixStream::connect(uds).expect("connect to the VMM's vsock socket");
    // A stuck guest fails the caller instead of hanging it.
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(600)))
        .expect("read timeout");
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ok = String::new();
    reader
        .read_line(&mut ok)
        .expect("handshake answer from the VMM");
    assert!(ok.starts_with("OK "), "handshake answer: {ok:?}");
    std::io::copy(&mut PatternReader::new(bytes), &mut stream).expect("send to the guest");
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    reader.read_line(&mut reply).expect("reply from the guest");
    reply.trim().to_string()
}

/// The guest probe's reply to `bytes` of the pattern.
pub fn expected_reply(bytes: u64) -> String {
    format!("{bytes} {:016x}", pattern_checksum(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_chunking_does_not_matter() {
        let mut whole = Vec::new();
        PatternReader::new(1000).read_to_end(&mut whole).unwrap();
        assert_eq!(whole.len(), 1000);
        let mut pieces = Vec::new();
        let mut reader = PatternReader::new(1000);
        let mut buf = [0u8; 7];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            pieces.extend_from_slice(&buf[..n]);
        }
        assert_eq!(whole, pieces);
        assert_eq!(
            checksum_stream(&mut &whole[..]).unwrap(),
            (1000, pattern_checksum(1000))
        );
    }
}
