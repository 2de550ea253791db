//! Everything the guest prints on its console goes to a sink (a file, stdout
//! or nowhere) and through this log, which keeps the last lines for error
//! messages and notices a kernel panic.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

const TAIL_BYTES: usize = 8 * 1024;
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

#[derive(Default)]
struct State {
    tail: VecDeque<u8>,
    /// How much of PANIC_MARKER the latest bytes spell out.
    matched: usize,
    panicked: bool,
}

/// Shared view of the console: the serial device writes, the VMM reads.
#[derive(Clone, Default)]
pub struct ConsoleLog {
    state: Arc<Mutex<State>>,
}

impl ConsoleLog {
    fn record(&self, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.tail.extend(bytes);
        let excess = state.tail.len().saturating_sub(TAIL_BYTES);
        state.tail.drain(..excess);
        // The serial device hands us one byte per guest exit: match the
        // marker incrementally, with no allocation or rescanning. Restarting
        // at the first byte on a mismatch is exact because no proper prefix
        // of the marker is also a suffix of it.
        for byte in bytes {
            if state.panicked {
                break;
            }
            state.matched = if *byte == PANIC_MARKER[state.matched] {
                state.matched + 1
            } else {
                usize::from(*byte == PANIC_MARKER[0])
            };
            state.panicked = state.matched == PANIC_MARKER.len();
        }
    }

    /// Whether the guest kernel has printed a panic.
    pub fn panicked(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .panicked
    }

    /// The last `lines` lines the guest printed.
    pub fn tail(&self, lines: usize) -> String {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(state.tail.make_contiguous()).replace('\r', "");
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The writer the serial device prints through.
pub struct ConsoleWriter {
    sink: Option<Box<dyn Write + Send>>,
    log: ConsoleLog,
}

impl ConsoleWriter {
    pub fn new(sink: Option<Box<dyn Write + Send>>, log: ConsoleLog) -> Self {
        Self { sink, log }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.log.record(bytes);
        if let Some(sink) = &mut self.sink {
            // A console sink that fails (full disk, closed pipe) must not stop
            // the guest: drop the output, keep the tail.
            if sink.write_all(bytes).is_err() {
                self.sink = None;
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(sink) = &mut self.sink {
            let _ = sink.flush();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_and_spots_a_panic_across_writes() {
        let log = ConsoleLog::default();
        let mut writer = ConsoleWriter::new(None, log.clone());
        for i in 0..2000 {
            writeln!(writer, "line {i}").unwrap();
        }
        assert!(log.tail(2).ends_with("line 1998\nline 1999"));
        assert!(!log.panicked());
        writer.write_all(b"[ 1.0] KKernel pan").unwrap();
        writer
            .write_all(b"ic - not syncing: Attempted to kill init!\r\n")
            .unwrap();
        assert!(log.panicked());
        assert!(log.tail(1).contains("Attempted to kill init!"));
    }
}
