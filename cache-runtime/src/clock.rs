//! The wall clock, in the units the runtime stores: Unix milliseconds (envelopes, [`Meta`],
//! log limiting) and microseconds (bus messages). Intervals use `Instant` instead.
//!
//! [`Meta`]: crate::Meta

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` in Unix milliseconds (0 before 1970).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Now, in Unix milliseconds.
pub(crate) fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Now, in Unix microseconds.
pub(crate) fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
