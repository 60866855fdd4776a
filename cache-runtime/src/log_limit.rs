//! Rate-limited warnings: a failing Redis or edge must not flood the logs.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock;

/// At most one warning per interval; the rest are counted and reported with the next one.
#[derive(Default)]
pub(crate) struct LogLimiter {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

const LOG_INTERVAL_MS: u64 = 10_000;

impl LogLimiter {
    /// Logs `message` about `subject` unless a line was logged in the last interval.
    pub(crate) fn warn(&self, subject: &str, message: &str) {
        if let Some(suppressed) = self.turn() {
            tracing::warn!(suppressed, subject, "{message}");
        }
    }

    /// [`warn`](Self::warn) with the error as a field (`error = %e`), about one cache (or
    /// the connection, `cache = "redis"`).
    pub(crate) fn warn_error(&self, cache: &str, message: &str, error: &dyn Display) {
        if let Some(suppressed) = self.turn() {
            tracing::warn!(suppressed, cache, error = %error, "{message}");
        }
    }

    /// Whether this call may log; if so, how many lines were suppressed since the last one.
    fn turn(&self) -> Option<u64> {
        let now = clock::now_unix_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_INTERVAL_MS
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}
