//! The circuit breaker in front of Redis: after repeated failures (timeouts, lost
//! connections), Redis is skipped outright for a cool-down, so callers pay no timeout while
//! it is down or hung; then one probe decides whether to close again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics_shim as metrics;

/// The breaker's state, as reported by [`redis_status`](crate::redis_status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Redis is used.
    Closed,
    /// Redis is skipped until the cool-down ends.
    Open,
    /// One probe operation is deciding.
    HalfOpen,
}

enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

pub(crate) struct Breaker {
    state: Mutex<State>,
    /// `Closed` with no failure counted: the common case, answered without the lock (two
    /// lock round trips per Redis operation otherwise, contended under concurrent hits).
    healthy: AtomicBool,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            healthy: AtomicBool::new(true),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    /// Whether an operation may go to Redis now. In `Open`, the first call after the
    /// cool-down becomes the probe.
    pub(crate) fn allow(&self) -> bool {
        if self.healthy() {
            return true;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *s {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *s = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// Closed with no failure counted (no lock taken).
    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub(crate) fn success(&self) {
        if self.healthy() {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*s, State::Closed { .. }) {
            tracing::info!("redis answers again; circuit breaker closed");
            metrics::gauge!("cache_redis_breaker_open").set(0.0);
        }
        *s = State::Closed { failures: 0 };
        self.healthy.store(true, Ordering::Release);
    }

    /// Records a failed operation; `true` when it opened the breaker (the threshold reached,
    /// or the half-open probe failed).
    pub(crate) fn failure(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.healthy.store(false, Ordering::Release);
        let open = match *s {
            State::Closed { failures } if failures + 1 >= self.threshold => true,
            State::Closed { failures } => {
                *s = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::HalfOpen => true,
            State::Open { .. } => false,
        };
        if open {
            if matches!(*s, State::Closed { .. }) {
                tracing::warn!(
                    "cache_runtime: redis failed {} times in a row; circuit breaker open, \
                     skipping redis for {:?} at a time",
                    self.threshold,
                    self.cooldown
                );
            }
            metrics::gauge!("cache_redis_breaker_open").set(1.0);
            *s = State::Open {
                until: Instant::now() + self.cooldown,
            };
        }
        open
    }

    pub(crate) fn state(&self) -> BreakerState {
        match *self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_cooldown() {
        let b = Breaker::new(3, Duration::ZERO);
        b.failure();
        b.failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.success();
        b.failure();
        b.failure();
        assert_eq!(b.state(), BreakerState::Closed, "success resets the count");
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.allow(), "zero cool-down: the next call probes");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(), "one probe at a time");
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.allow());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn stays_open_during_the_cooldown() {
        let b = Breaker::new(1, Duration::from_secs(3600));
        b.failure();
        assert!(!b.allow());
        assert_eq!(b.state(), BreakerState::Open);
    }
}
