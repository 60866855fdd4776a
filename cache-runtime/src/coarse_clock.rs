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
//!
//! The lag bound is checked where it can be: every new check reads both clocks, and if the
//! coarse clock has moved [`LAG_ALARM`] more or less than the precise one since the first
//! reading (a kernel whose coarse clock stalls, or is another clock), the coarse path is
//! switched off for the process and every check reads the precise clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How far the coarse clock may lag the precise one: three ticks of a `HZ = 100` kernel (the
/// coarsest in use), seven of the common `HZ = 250`.
pub(crate) const MAX_LAG: Duration = Duration::from_millis(30);

/// A change of the two clocks' difference that turns the coarse path off: with the first
/// reading's own lag (at most a tick, 10 ms), still below [`MAX_LAG`].
pub(crate) const LAG_ALARM: Duration = Duration::from_millis(15);

/// A deadline checked on the coarse clock (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SurelyBefore(
    /// The coarse clock's reading (coarsetime's ticks) before which the check holds; 0 never.
    u64,
);

/// Both clocks read at once, the coarse one first: the coarse reading is then not later than
/// the precise one, whatever happens between this reading and its use (see
/// [`SurelyBefore::stamped`]). A store reads one when its value is ready and builds its
/// entry's deadline check from it, instead of reading the clocks again at the insert.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stamp {
    /// The precise clock, read second.
    precise: Instant,
    /// The coarse clock (coarsetime's ticks; 0 where there is none), read first.
    coarse: u64,
}

impl Stamp {
    /// Reads the coarse clock, then the precise one.
    #[inline]
    pub(crate) fn now() -> Self {
        let coarse = imp::ticks();
        Self {
            precise: Instant::now(),
            coarse,
        }
    }

    /// The precise clock's reading.
    #[inline]
    pub(crate) fn instant(self) -> Instant {
        self.precise
    }
}

impl SurelyBefore {
    /// Holds while the precise clock is surely before `deadline`; never, if `deadline` is
    /// less than [`MAX_LAG`] away now.
    pub(crate) fn new(deadline: Instant) -> Self {
        Self::stamped(deadline, Stamp::now())
    }

    /// [`new`](Self::new) with both clocks as `stamp` read them, at any time before. The coarse
    /// reading `c` was taken first, so `c ≤ p` (`p`: the precise reading); the check holds at
    /// a later coarse reading `c'` while `c' < c + (deadline − p − MAX_LAG)`, and then the
    /// precise clock, at most a tick (≤ 10 ms) ahead of `c'`, is before
    /// `c + deadline − p − MAX_LAG + tick ≤ deadline − (MAX_LAG − tick)`: before the
    /// deadline, however long ago the stamp was read. (An older stamp only shortens the span
    /// the check holds for.)
    pub(crate) fn stamped(deadline: Instant, stamp: Stamp) -> Self {
        Self(
            deadline
                .checked_duration_since(stamp.precise)
                .and_then(|left| left.checked_sub(MAX_LAG))
                .map_or(0, |left| imp::after(stamp, left)),
        )
    }

    /// A check that never holds.
    pub(crate) const NEVER: Self = Self(0);

    /// Whether the deadline is surely still ahead (`false` says nothing: check it precisely).
    #[inline]
    pub(crate) fn holds(self) -> bool {
        imp::before(self.0)
    }
}

/// A [`SurelyBefore`] shared between threads: one writer moves it, any thread checks it.
pub(crate) struct AtomicSurelyBefore(AtomicU64);

impl AtomicSurelyBefore {
    pub(crate) const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    #[inline]
    pub(crate) fn load(&self) -> SurelyBefore {
        SurelyBefore(self.0.load(Ordering::Acquire))
    }

    pub(crate) fn store(&self, check: SurelyBefore) {
        self.0.store(check.0, Ordering::Release);
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use super::LAG_ALARM;

    /// Set once the clocks were seen to disagree beyond [`LAG_ALARM`]; never cleared.
    static OFF: AtomicBool = AtomicBool::new(false);

    /// `CLOCK_MONOTONIC_COARSE`, read by coarsetime without its shared "recent" cell, which
    /// every reading would otherwise write.
    #[inline]
    fn coarse() -> coarsetime::Instant {
        coarsetime::Instant::now_without_cache_update()
    }

    /// The coarse clock's ticks now.
    #[inline]
    pub(super) fn ticks() -> u64 {
        coarse().as_ticks()
    }

    /// The coarse reading `left` after `stamp`'s; 0 (never holds) if not representable or
    /// the coarse path is off (or the stamp's two readings disagree beyond the alarm).
    pub(super) fn after(stamp: super::Stamp, left: Duration) -> u64 {
        let c = coarsetime::Instant::from_ticks(stamp.coarse);
        if !consistent(stamp.precise, c) {
            return 0;
        }
        c.checked_add(left.into()).map_or(0, |at| at.as_ticks())
    }

    /// Whether both clocks moved alike (within [`LAG_ALARM`]) since the process's first
    /// reading of both; turns the coarse path off for good when they did not.
    fn consistent(now: Instant, c: coarsetime::Instant) -> bool {
        static FIRST: OnceLock<(Instant, coarsetime::Instant)> = OnceLock::new();
        let &(p0, c0) = FIRST.get_or_init(|| (now, c));
        let apart = apart_ns((p0, c0.as_ticks()), (now, c.as_ticks()));
        if apart > LAG_ALARM.as_nanos() && !OFF.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                apart_ms = (apart / 1_000_000) as u64,
                "the coarse monotonic clock strays from the precise one: local hits read the \
                 precise clock from now on"
            );
        }
        !OFF.load(Ordering::Relaxed)
    }

    /// How much more or less one clock moved than the other between two readings of both
    /// (precise, coarse ticks), in nanoseconds.
    pub(super) fn apart_ns(first: (Instant, u64), then: (Instant, u64)) -> u128 {
        // Signed: another thread's first reading may be later than this one's.
        let precise = match then.0.checked_duration_since(first.0) {
            Some(d) => d.as_nanos() as i128,
            None => -((first.0 - then.0).as_nanos() as i128),
        };
        // coarsetime's ticks are 32.32 fixed-point seconds.
        let coarse = ((i128::from(then.1) - i128::from(first.1)) * 1_000_000_000) >> 32;
        (precise - coarse).unsigned_abs()
    }

    #[inline]
    pub(super) fn before(ticks: u64) -> bool {
        !OFF.load(Ordering::Relaxed) && coarse().as_ticks() < ticks
    }

    #[cfg(test)]
    pub(super) fn off() -> bool {
        OFF.load(Ordering::Relaxed)
    }
}

/// Elsewhere no coarse clock is known to lag the precise one by a bounded amount: every check
/// reads the precise clock. (Compiled and tested on Linux too.)
#[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
mod precise_only {
    use std::time::Duration;

    pub(super) fn ticks() -> u64 {
        0
    }

    pub(super) fn after(_stamp: super::Stamp, _left: Duration) -> u64 {
        0
    }

    #[inline]
    pub(super) fn before(_ticks: u64) -> bool {
        false
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
use precise_only as imp;

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
        assert!(!SurelyBefore::NEVER.holds());
        let shared = AtomicSurelyBefore::new();
        assert!(!shared.load().holds());
        shared.store(far);
        assert_eq!(shared.load().holds(), far.holds());
        // Beyond any coarse clock's range: never holds, never panics.
        if let Some(huge) = Instant::now().checked_add(Duration::from_secs(u64::MAX / 4)) {
            let _ = SurelyBefore::new(huge).holds();
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_coarse_clock_that_strays_is_detected() {
        let ms = |n: u64| (n << 32) / 1_000; // coarsetime ticks of n milliseconds
        let p0 = Instant::now();
        let first = (p0, ms(1_000_000));
        let later = |precise_ms: u64, coarse_ms: u64| {
            imp::apart_ns(
                first,
                (
                    p0 + Duration::from_millis(precise_ms),
                    ms(1_000_000 + coarse_ms),
                ),
            )
        };
        let alarm = LAG_ALARM.as_nanos();
        assert!(later(500, 496) < alarm, "a tick behind: fine");
        assert!(later(500, 500) < 1_000_000);
        assert!(later(500, 480) > alarm, "20 ms behind");
        assert!(later(500, 520) > alarm, "ahead of the precise clock");
        // A first reading later than this one (another thread's): signed, not an underflow.
        assert!(imp::apart_ns((p0 + Duration::from_millis(5), ms(1_000_005)), first) < alarm);
    }

    #[test]
    fn without_a_coarse_clock_no_check_holds() {
        let stamp = precise_only::after(Stamp::now(), Duration::from_secs(60));
        assert!(!precise_only::before(stamp));
        assert!(!precise_only::before(u64::MAX));
    }

    /// A check built from a stamp read long before (a store's stamp read when its value was
    /// ready, the insert later): still never holds once the deadline has passed.
    #[test]
    fn a_check_from_an_old_stamp_never_holds_past_its_deadline() {
        let stamp = Stamp::now();
        // Older than the margin by the time the checks are built.
        while Instant::now() < stamp.instant() + MAX_LAG * 2 {
            std::thread::yield_now();
        }
        let start = Instant::now();
        let deadlines: Vec<(Instant, SurelyBefore)> = (0..8)
            .map(|i| {
                let d = start + MAX_LAG + Duration::from_millis(i * 5);
                (d, SurelyBefore::stamped(d, stamp))
            })
            .collect();
        loop {
            let checks: Vec<bool> = deadlines.iter().map(|(_, s)| s.holds()).collect();
            let now = Instant::now();
            for ((deadline, _), holds) in deadlines.iter().zip(checks) {
                assert!(!holds || now < *deadline, "held past its deadline");
            }
            if now > deadlines.last().unwrap().0 + MAX_LAG {
                break;
            }
            std::thread::yield_now();
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
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert!(
            !imp::off(),
            "the coarse clock kept within LAG_ALARM of the precise one"
        );
    }
}
