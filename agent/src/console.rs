//! The console input: cocoon-vmm asks for an orderly shutdown (on SIGTERM)
//! by writing `GUEST_SHUTDOWN_REQUEST` there.

use std::io::BufRead;
use std::sync::Arc;

use cocoon_protocol::GUEST_SHUTDOWN_REQUEST;
use tokio::sync::Notify;

/// Watches stdin on its own thread; a blocking read of a console has no
/// cheaper form.
pub fn watch_for_shutdown_request(shutdown: Arc<Notify>) {
    let spawned = std::thread::Builder::new()
        .name("console".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut line = Vec::new();
            loop {
                line.clear();
                match stdin.lock().read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if is_shutdown_request(&line) => shutdown.notify_one(),
                    Ok(_) => {}
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!("cannot watch the console for shutdown requests: {error}");
    }
}

/// A console in canonical mode may deliver the request after other input on
/// the same line, and with the newline turned into "\r\n".
fn is_shutdown_request(line: &[u8]) -> bool {
    let request = GUEST_SHUTDOWN_REQUEST
        .strip_suffix(b"\n")
        .unwrap_or(GUEST_SHUTDOWN_REQUEST);
    line.windows(request.len()).any(|window| window == request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_request_anywhere_on_a_line() {
        assert!(is_shutdown_request(GUEST_SHUTDOWN_REQUEST));
        assert!(is_shutdown_request(b"junk\x1b]cocoon;shutdown\x07\r\n"));
        assert!(!is_shutdown_request(b"shutdown\n"));
    }
}
