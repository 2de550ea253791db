//! Rate limiting for warnings a guest can trigger at will.
//!
//! A hostile guest can poke bad registers millions of times a second; logging
//! each one would turn the VMM log into a denial-of-service vector.

use std::time::{Duration, Instant};

/// Lets through at most `BURST` warnings per `WINDOW` and counts the rest.
#[derive(Debug, Default)]
pub(crate) struct WarnLimiter {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl WarnLimiter {
    const BURST: u32 = 10;
    const WINDOW: Duration = Duration::from_secs(5);

    /// Returns `Some(n)` if a warning may be logged now, `n` being how many were
    /// suppressed since the last one let through; `None` to stay quiet.
    pub(crate) fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        let window_over = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= Self::WINDOW);
        if window_over {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < Self::BURST {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

/// Logs at `$level` through `$limiter` (a [`WarnLimiter`]), adding a
/// `suppressed` field with the number of messages swallowed since the last one.
macro_rules! limited {
    ($limiter:expr, $level:ident, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.check() {
            tracing::$level!(suppressed, $($arg)+);
        }
    };
}
pub(crate) use limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_suppressed() {
        let mut limiter = WarnLimiter::default();
        for _ in 0..WarnLimiter::BURST {
            assert_eq!(limiter.check(), Some(0));
        }
        assert_eq!(limiter.check(), None);
        assert_eq!(limiter.check(), None);
        // A new window reports what was swallowed.
        limiter.window_start = Instant::now().checked_sub(WarnLimiter::WINDOW);
        assert_eq!(limiter.check(), Some(2));
    }
}
