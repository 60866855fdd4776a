//! Time as the runtime stores it: Unix milliseconds (envelopes, [`Meta`], log limiting) and
//! microseconds (bus messages), read from the **reference clock**: Redis's own `TIME`,
//! estimated in this process (docs/PROTOCOL.md §6). Intervals use `Instant` instead.
//!
//! Every process that shares a Redis stamps and judges expiry on the same clock, so a host
//! whose wall clock is minutes off still reads the others' values as fresh for exactly their
//! TTL (with the wall clock, a host 301 s ahead treated every `ttl = 300` value as expired).
//! The estimate: each `TIME` answer gives `offset = server time − (send + receive) / 2` on
//! this process's monotonic clock, with error `(receive − send) / 2`; the sample of smallest
//! error wins, its error aging by [`DRIFT_PPM`], and a sample that disagrees beyond both
//! errors replaces it at once (the reference moved: a failover to another host, a step of
//! the server's clock). Reading the estimate is one atomic load and one `Instant::now()`.
//! Before the first sample (no Redis tier, or not connected yet) the wall clock stands in.
//!
//! [`Meta`]: crate::Meta

// Without the `redis` feature nothing samples a reference: the estimate stays unset and the
// wall clock stands in.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics_shim as metrics;

/// How fast this host's monotonic clock may drift from the reference, in parts per million:
/// the error a sample gains per second of age (NTP-disciplined clocks drift far less).
pub(crate) const DRIFT_PPM: u64 = 100;

/// A sample disagreeing with the current estimate by more than both errors plus this is a
/// move of the reference itself, taken at once.
const MOVE_SLACK_US: u64 = 1_000;

/// Above this difference from the wall clock, this host's clock is reported as off.
const SKEW_WARN_US: u64 = 1_000_000;

/// The process's estimate of the reference clock.
static REFERENCE: Estimate = Estimate::new();

/// An estimate of a remote clock from `TIME` samples.
struct Estimate {
    /// `reference µs − µs since [`base`]`; `NONE` until the first sample. Read on every
    /// clock read, without the lock.
    offset_us: AtomicI64,
    /// The sample the estimate follows (updates only).
    sample: Mutex<Option<Sample>>,
}

const NONE: i64 = i64::MIN;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    offset_us: i64,
    error_us: u64,
    at: Instant,
}

impl Sample {
    /// Its error now: the round trip's half plus the drift since it was taken.
    fn error_at(&self, now: Instant) -> u64 {
        let age_us = now.saturating_duration_since(self.at).as_micros() as u64;
        self.error_us + age_us * DRIFT_PPM / 1_000_000
    }
}

/// The origin of this process's monotonic microseconds.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// `t` in µs on this process's monotonic clock (since an origin fixed at the first use).
pub(crate) fn mono_us(t: Instant) -> i64 {
    t.saturating_duration_since(base()).as_micros() as i64
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `t` in Unix milliseconds (0 before 1970).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Now on the reference clock, in Unix microseconds.
pub(crate) fn now_unix_us() -> u64 {
    REFERENCE.now_us().unwrap_or_else(wall_us)
}

/// Now on the reference clock, in Unix milliseconds.
pub(crate) fn now_unix_ms() -> u64 {
    now_unix_us() / 1000
}

/// Now on the reference clock, as a `SystemTime` (for HTTP validators and lifetimes, which
/// compare with times stamped by other processes).
pub(crate) fn now_system() -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(now_unix_us())
}

/// What a sample did to the estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observed {
    /// The first sample: the estimate starts.
    First,
    /// More precise than the estimate (or the estimate aged): taken.
    Refined,
    /// Disagreed with the estimate beyond both errors: the reference moved, taken.
    Moved,
    /// Less precise than the estimate: ignored.
    Kept,
}

/// Feeds one `TIME` answer to the process's estimate: `server_us` (Unix µs on the server)
/// answered a request sent at `sent` and received at `received` (this process's `Instant`s).
pub(crate) fn observe(sent: Instant, server_us: u64, received: Instant) -> Observed {
    let observed = REFERENCE.observe(sent, server_us, received);
    if observed != Observed::Kept {
        report_skew(REFERENCE.offset_us.load(Ordering::Relaxed), observed);
    }
    observed
}

impl Estimate {
    const fn new() -> Self {
        Estimate {
            offset_us: AtomicI64::new(NONE),
            sample: Mutex::new(None),
        }
    }

    /// Now on the estimated clock, in Unix µs; `None` before the first sample.
    fn now_us(&self) -> Option<u64> {
        let offset = self.offset_us.load(Ordering::Relaxed);
        (offset != NONE).then(|| (mono_us(Instant::now()) + offset).max(0) as u64)
    }

    fn observe(&self, sent: Instant, server_us: u64, received: Instant) -> Observed {
        let rtt = received.saturating_duration_since(sent);
        let mid = sent + rtt / 2;
        let new = Sample {
            offset_us: server_us as i64 - mono_us(mid),
            error_us: (rtt / 2).as_micros() as u64,
            at: mid,
        };
        let mut current = self.sample.lock().unwrap_or_else(|p| p.into_inner());
        let observed = match *current {
            None => Observed::First,
            Some(old) => {
                let old_error = old.error_at(mid);
                let apart = new.offset_us.abs_diff(old.offset_us);
                if apart > new.error_us + old_error + MOVE_SLACK_US {
                    Observed::Moved
                } else if new.error_us <= old_error {
                    Observed::Refined
                } else {
                    Observed::Kept
                }
            }
        };
        if observed != Observed::Kept {
            *current = Some(new);
            self.offset_us.store(new.offset_us, Ordering::Relaxed);
        }
        observed
    }
}

/// Tells the operator when this host's wall clock is off the reference: harmless to the
/// cache (it does not read the wall clock), but worth fixing for everything else.
fn report_skew(offset_us: i64, observed: Observed) {
    // This host's wall clock minus the reference.
    let skew_us = wall_us() as i64 - (mono_us(Instant::now()) + offset_us);
    metrics::gauge!("cache_clock_skew_seconds").set(skew_us as f64 / 1e6);
    if skew_us.unsigned_abs() > SKEW_WARN_US && observed != Observed::Refined {
        tracing::warn!(
            skew_ms = skew_us / 1000,
            "this host's wall clock differs from Redis's; cached values' expiry follows \
             Redis's clock"
        );
    } else if observed == Observed::Moved {
        tracing::info!("Redis's clock moved (failover or clock step); following it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The estimate's distance from this host's wall clock.
    fn skew(e: &Estimate) -> Duration {
        let (r, w) = (e.now_us().expect("sampled"), wall_us());
        Duration::from_micros(r.abs_diff(w))
    }

    #[test]
    fn the_estimate_follows_the_most_precise_sample_and_a_moved_reference() {
        let e = Estimate::new();
        assert_eq!(e.now_us(), None, "no estimate before a sample");
        let now = Instant::now();
        let us = Duration::from_micros;
        // A server 301 s ahead of this host, answering in 2 ms.
        let ahead = wall_us() + 301_000_000;
        assert_eq!(
            e.observe(now, ahead + 1_000, now + us(2_000)),
            Observed::First
        );
        let off = skew(&e);
        assert!(
            off > Duration::from_secs(300) && off < Duration::from_secs(302),
            "{off:?}"
        );

        // A sloppier sample (10 ms round trip) agreeing within its error is ignored; a
        // tighter one is taken.
        let later = now + us(50_000);
        assert_eq!(
            e.observe(later, ahead + 55_000 + 3_000, later + us(10_000)),
            Observed::Kept
        );
        assert_eq!(
            e.observe(later, ahead + 50_000 + 100, later + us(200)),
            Observed::Refined
        );
        assert_eq!(e.sample.lock().unwrap().unwrap().error_us, 100);

        // The reference steps back 5 s (a failover to a host behind): followed at once,
        // whatever the precision.
        let step = later + us(1_000_000);
        let behind = ahead + 1_050_000 - 5_000_000;
        assert_eq!(
            e.observe(step, behind + 10_000, step + us(20_000)),
            Observed::Moved
        );
        let off = skew(&e);
        assert!(
            off > Duration::from_secs(295) && off < Duration::from_secs(297),
            "{off:?}"
        );

        // An old sample's error grows with its age, so a later, less precise one replaces
        // it eventually (here after 1,000 s at 100 ppm: 100 ms).
        let old = e.sample.lock().unwrap().unwrap();
        assert_eq!(
            old.error_at(old.at + Duration::from_secs(1_000)),
            10_000 + 100_000
        );
    }
}
