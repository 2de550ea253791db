//! The cap on the console file (`--console-limit BYTES`): a guest printing
//! without end fills the file up to the cap, then one line says the rest was
//! dropped, and nothing more is written. The guest never notices (its serial
//! port keeps draining), the VMM never blocks on it, and the node's /run
//! holds at most the cap. The in-memory tail ([`super::console_log`]) still
//! sees everything, for panic detection and error messages.

use std::io::Write;

/// A writer that passes on at most `limit` bytes, then the note, then nothing.
pub struct CappedSink<W> {
    inner: W,
    limit: u64,
    written: u64,
    noted: bool,
}

/// The line written once the cap is reached; it starts a line of its own.
pub fn dropped_note(limit: u64) -> String {
    format!("\n[cocoon-vmm: console output beyond {limit} bytes dropped]\n")
}

impl<W: Write> CappedSink<W> {
    pub fn new(inner: W, limit: u64) -> Self {
        Self {
            inner,
            limit,
            written: 0,
            noted: false,
        }
    }

    /// What was passed on to the inner writer so far (for tests).
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for CappedSink<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = self.limit.saturating_sub(self.written);
        let passed = usize::try_from(room).map_or(bytes.len(), |room| room.min(bytes.len()));
        if passed > 0 {
            self.inner.write_all(&bytes[..passed])?;
            self.written += passed as u64;
        }
        if passed < bytes.len() && !self.noted {
            self.noted = true;
            self.inner.write_all(dropped_note(self.limit).as_bytes())?;
            self.inner.flush()?;
        }
        // Dropped bytes count as written: the guest's output is consumed.
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_up_to_the_cap_then_one_note_then_nothing() {
        let mut sink = CappedSink::new(Vec::new(), 10);
        sink.write_all(b"0123").unwrap();
        assert_eq!(sink.write(b"456789abcdef").unwrap(), 12);
        for byte in b"more and more output" {
            assert_eq!(sink.write(std::slice::from_ref(byte)).unwrap(), 1);
        }
        let out = sink.into_inner();
        let expected = format!("0123456789{}", dropped_note(10));
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn output_within_the_cap_gets_no_note() {
        let mut sink = CappedSink::new(Vec::new(), 10);
        sink.write_all(b"0123456789").unwrap();
        assert_eq!(sink.into_inner(), b"0123456789");
    }

    #[test]
    fn a_zero_cap_writes_only_the_note() {
        let mut sink = CappedSink::new(Vec::new(), 0);
        sink.write_all(b"x").unwrap();
        sink.write_all(b"y").unwrap();
        assert_eq!(sink.into_inner(), dropped_note(0).as_bytes());
    }
}
