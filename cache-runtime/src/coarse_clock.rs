//! Deadline checks without reading the precise clock on a hit.
//!
//! `Instant::now()` reads `CLOCK_MONOTONIC`, about 23 ns on a KVM guest (the vDSO reads the
//! TSC and scales it): a tenth of a local hit, which checks its entry's freshness on every
//! read. Linux's `CLOCK_MONOTONIC_COARSE` is the same clock as of the kernel's last tick
//! (one load from the vDSO page, about 5 ns), so it is never ahead of `Instant::now()` and
//! lags it by at most a tick (1–10 ms, by the kernel's `HZ`).
//!
//! A [`SurelyBefore`] is a deadline moved [`MAX_LAG`] earlier on the coarse clock: while the
//! coarse clock is before it, the precise clock is surely before the deadline, and the check
//! is one coarse read and one comparison. Within [`MAX_LAG`] of the deadline (and on
//! platforms without a coarse monotonic clock) it does not hold, and the caller compares the
//! deadline itself with `Instant::now()`: the answer is always the precise clock's, the
//! coarse clock only skips reading it while the deadline is far.

use std::time::{Duration, Instant};

/// How far the coarse clock may lag the precise one: two ticks of a `HZ = 100` kernel (the
/// coarsest in use), four of the common `HZ = 250`.
pub(crate) const MAX_LAG: Duration = Duration::from_millis(20);

/// A deadline checked on the coarse clock (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SurelyBefore(Option<imp::Stamp>);

impl SurelyBefore {
    /// Holds while the precise clock is surely before `deadline`; never, if `deadline` is
    /// less than [`MAX_LAG`] away now.
    pub(crate) fn new(deadline: Instant) -> Self {
        // The precise clock first: the coarse reading after it is not later than it, so the
        // coarse deadline is not later than `deadline` minus `MAX_LAG`.
        let now = Instant::now();
        Self(
            deadline
                .checked_duration_since(now)
                .and_then(|left| left.checked_sub(MAX_LAG))
                .and_then(imp::after),
        )
    }

    /// Whether the deadline is surely still ahead (`false` says nothing: check it precisely).
    #[inline]
    pub(crate) fn holds(self) -> bool {
        self.0.is_some_and(imp::before)
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::time::Duration;

    /// `CLOCK_MONOTONIC_COARSE`, read by coarsetime (without its shared "recent" cell,
    /// which every reading would otherwise write).
    pub(super) type Stamp = coarsetime::Instant;

    /// The coarse clock `left` from now, if representable.
    pub(super) fn after(left: Duration) -> Option<Stamp> {
        coarsetime::Instant::now_without_cache_update().checked_add(left.into())
    }

    #[inline]
    pub(super) fn before(stamp: Stamp) -> bool {
        coarsetime::Instant::now_without_cache_update() < stamp
    }
}

/// Elsewhere no coarse clock is known to lag the precise one by a bounded amount: every check
/// reads the precise clock.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use std::time::Duration;

    #[derive(Clone, Copy, Debug)]
    pub(super) enum Stamp {}

    pub(super) fn after(_left: Duration) -> Option<Stamp> {
        None
    }

    #[inline]
    pub(super) fn before(stamp: Stamp) -> bool {
        match stamp {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_far_deadline_holds_a_near_or_past_one_never() {
        let far = SurelyBefore::new(Instant::now() + Duration::from_secs(60));
        assert_eq!(
            far.holds(),
            cfg!(any(target_os = "linux", target_os = "android")),
            "a minute ahead is surely ahead where a coarse clock exists"
        );
        for near in [Duration::ZERO, Duration::from_millis(1), MAX_LAG] {
            assert!(
                !SurelyBefore::new(Instant::now() + near).holds(),
                "{near:?}"
            );
        }
        let past = Instant::now().checked_sub(Duration::from_secs(1));
        if let Some(past) = past {
            assert!(!SurelyBefore::new(past).holds());
        }
        // Beyond any coarse clock's range: never holds, never panics.
        if let Some(huge) = Instant::now().checked_add(Duration::from_secs(u64::MAX / 4)) {
            let _ = SurelyBefore::new(huge).holds();
        }
    }

    /// The guarantee: whenever the check holds, the precise clock is before the deadline.
    /// Deadlines from just inside to well past `MAX_LAG`, each polled until it passes.
    #[test]
    fn it_never_holds_once_the_deadline_has_passed() {
        let start = Instant::now();
        let deadlines: Vec<(Instant, SurelyBefore)> = (0..12)
            .map(|i| {
                let d = start + MAX_LAG + Duration::from_millis(i * 3);
                (d, SurelyBefore::new(d))
            })
            .collect();
        let mut held = 0;
        loop {
            // Coarse first: if it holds, the precise reading after it must still be before.
            let checks: Vec<bool> = deadlines.iter().map(|(_, s)| s.holds()).collect();
            let now = Instant::now();
            for ((deadline, _), holds) in deadlines.iter().zip(checks) {
                if holds {
                    held += 1;
                    assert!(
                        now < *deadline,
                        "held {:?} past its deadline",
                        now - *deadline
                    );
                }
            }
            if now > deadlines.last().unwrap().0 + MAX_LAG {
                break;
            }
            std::thread::yield_now();
        }
        if cfg!(any(target_os = "linux", target_os = "android")) {
            assert!(held > 0, "the later deadlines held for a while");
        }
    }
}
