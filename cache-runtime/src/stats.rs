//! Per-cache counters and the process-wide registry of caches.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics_shim as metrics;
use crate::tier::Tier;

/// One counter: a relaxed atomic for [`Stats`], mirrored to a `metrics` counter handle
/// (a no-op unless the application installed a recorder before the cache was created).
#[derive(Debug, Default)]
pub(crate) struct Stat {
    value: AtomicU64,
    metric: Option<metrics::Counter>,
}

impl Stat {
    fn new(name: &'static str, labels: Vec<metrics::Label>) -> Self {
        Self {
            value: AtomicU64::new(0),
            metric: Some(metrics::counter!(name, labels)),
        }
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Relaxed);
        if let Some(m) = &self.metric {
            m.increment(n);
        }
    }

    fn get(&self) -> u64 {
        self.value.load(Relaxed)
    }

    fn reset(&self) {
        self.value.store(0, Relaxed);
    }
}

/// Declares every counter once: its [`Stats`] field (with its doc), its `metrics` name and
/// labels. Generates `Counters` (the live atomics), its snapshot and reset, and `Stats`.
macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $field:ident => $metric:literal $(, $label:literal = $value:literal)?; )*) => {
        /// Live counters of one cache. Metric names follow Prometheus conventions (`_total`,
        /// `_seconds`), with a `cache` label (and `tier` for hits).
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub $field: Stat,)*
            /// Exported as the `body_seconds` histogram, not as a counter of nanoseconds.
            body_nanos: Stat,
            body_seconds: Option<metrics::Histogram>,
        }

        impl Counters {
            pub fn new(cache: &str) -> Self {
                let cache = metrics::Label::new("cache", cache.to_string());
                Self {
                    $($field: Stat::new(
                        $metric,
                        vec![cache.clone() $(, metrics::Label::new($label, $value))?],
                    ),)*
                    body_nanos: Stat::default(),
                    body_seconds: Some(metrics::histogram!(
                        "cache_body_duration_seconds",
                        vec![cache]
                    )),
                }
            }

            pub fn snapshot(&self) -> Stats {
                Stats {
                    $($field: self.$field.get(),)*
                    body_time: Duration::from_nanos(self.body_nanos.get()),
                }
            }

            pub fn reset(&self) {
                $(self.$field.reset();)*
                self.body_nanos.reset();
            }
        }

        /// A snapshot of one cache's counters.
        ///
        /// ```
        /// use cache_runtime::Stats;
        /// // `Stats` is `#[non_exhaustive]` (counters get added): build one field by field.
        /// let mut s = Stats::default();
        /// (s.local_hits, s.redis_hits, s.misses, s.coalesced, s.body_calls) = (3, 1, 4, 3, 1);
        /// s.body_time = std::time::Duration::from_millis(20);
        /// assert_eq!(s.hits(), 4);
        /// assert_eq!(s.hit_ratio(), 0.5);
        /// assert_eq!(s.offload_ratio(), 7.0 / 8.0);
        /// assert_eq!(s.estimated_time_saved(), std::time::Duration::from_millis(140));
        /// ```
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $($(#[doc = $doc])* pub $field: u64,)*
            /// Total wall time spent in the body.
            pub body_time: Duration,
        }
    };
}

counters! {
    /// Calls answered by the in-process tier.
    local_hits => "cache_hits_total", "tier" = "local";
    /// Calls answered by Redis (the value was then promoted to the local tier).
    redis_hits => "cache_hits_total", "tier" = "redis";
    /// Calls that found no usable value in any tier (each led to a body run or joined one).
    /// A call that joined a concurrent call's load is counted by what that load found: a
    /// Redis hit, a local hit, or (the body ran) a miss.
    misses => "cache_misses_total";
    /// Misses that waited for a concurrent call's body instead of running their own.
    coalesced => "cache_singleflight_waits_total";
    /// Calls that joined a concurrent call's load of the same key instead of starting their
    /// own, counted as they join (then as hits or misses, by what that load found).
    joined => "cache_singleflight_joins_total";
    /// Times the original function body ran (misses, `refresh_*`).
    body_calls => "cache_body_calls_total";
    /// Values written into the cache (after a body run, `populate_*`, `refresh_*`).
    populates => "cache_populates_total";
    /// Calls to `invalidate_*`.
    invalidations => "cache_invalidations_total";
    /// Values found in Redis that did not decode (corrupt, foreign, another type or version).
    decode_failures => "cache_decode_failures_total";
    /// Values not written to Redis because they did not encode (their `Serialize` failed in
    /// bincode and in MessagePack): kept in the local tier only, logged.
    encode_failures => "cache_encode_failures_total";
    /// Redis operations that failed or timed out (each one fell back to the source).
    redis_errors => "cache_redis_errors_total";
    /// Of those, the ones that timed out.
    redis_timeouts => "cache_redis_timeouts_total";
    /// Values not written to Redis because they exceeded `max_value_bytes`.
    oversize => "cache_oversize_values_total";
    /// Values found in Redis but written before an invalidation, tag invalidation or clear
    /// that happened since (their stamps are outdated): misses.
    stale_rejected => "cache_stale_rejected_total";
    /// Body results not stored because a write happened while the body ran (the
    /// stale-write-back race, prevented). A Redis-only cache does not read its ticket back
    /// after a plain store (it keeps no local copy to protect), so there it counts the
    /// writes its body heard of; those behind its back it stores and every reader refuses.
    superseded => "cache_superseded_writes_total";
    /// Polls while another process held the single-flight lock (`lock = true`).
    lock_waits => "cache_lock_waits_total";
    /// Times a caller stopped waiting for a lock holder after the lease and ran the body.
    lock_timeouts => "cache_lock_timeouts_total";
    /// Stale values served because the body failed, panicked or timed out (`stale = ...`).
    stale_served => "cache_stale_served_total";
    /// Of those, the ones served because the body ran past `soft_timeout` (it finished in
    /// the background and updated the cache).
    soft_timeouts => "cache_soft_timeouts_total";
    /// Background refreshes started by `refresh_ahead` (a read late in an entry's TTL).
    refreshes_ahead => "cache_refreshes_ahead_total";
    /// Key invalidations Redis did not take that were folded into a pending clear of the
    /// cache (past `max_pending` pending writes; docs/RESILIENCE.md).
    pending_folded => "cache_pending_folded_total";
}

impl Counters {
    /// Counts one failed Redis operation by its kind.
    pub fn redis_failed(&self, e: &crate::error::CacheError) {
        use crate::error::CacheError;
        match e {
            CacheError::TooLarge { .. } => self.oversize.add(1),
            CacheError::Encode(_) => self.encode_failures.add(1),
            CacheError::Timeout(_) => {
                self.redis_errors.add(1);
                self.redis_timeouts.add(1);
            }
            _ => self.redis_errors.add(1),
        }
    }

    /// Records one body run.
    pub fn body(&self, elapsed: Duration) {
        self.body_calls.add(1);
        self.body_nanos
            .add(elapsed.as_nanos().min(u128::from(u64::MAX)) as u64);
        if let Some(h) = &self.body_seconds {
            h.record(elapsed.as_secs_f64());
        }
    }
}

impl Stats {
    /// Hits in any tier.
    pub fn hits(&self) -> u64 {
        self.local_hits + self.redis_hits
    }

    /// Hits / (hits + misses); 0 when the cache was never read.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits() + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits() as f64 / total as f64
        }
    }

    /// Mean duration of one body run.
    pub fn avg_body_time(&self) -> Option<Duration> {
        (self.body_calls > 0)
            .then(|| self.body_time / self.body_calls.min(u64::from(u32::MAX)) as u32)
    }

    /// Reads of the cache: hits plus misses (`refresh_*` and `populate_*` are not reads).
    pub fn calls(&self) -> u64 {
        self.hits() + self.misses
    }

    /// Fraction of reads that did not reach the source: hits, and misses that shared another
    /// call's body run. What the cache spares the database; 0 when never read.
    pub fn offload_ratio(&self) -> f64 {
        if self.calls() == 0 {
            0.0
        } else {
            (self.hits() + self.coalesced) as f64 / self.calls() as f64
        }
    }

    /// Calls that did not run the body × mean body time: what the source would have spent
    /// without the cache.
    pub fn estimated_time_saved(&self) -> Duration {
        let spared = (self.hits() + self.coalesced).min(u64::from(u32::MAX)) as u32;
        self.avg_body_time().unwrap_or_default() * spared
    }
}

/// Description of one cache in the process, as listed by [`caches`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheInfo {
    /// The cache's name (`name = ".."`, default: module path + function).
    pub name: String,
    /// Its tiers.
    pub tier: Tier,
    /// The Redis TTL (or local TTL for a local cache).
    pub ttl: Duration,
    /// Its counters at the time of the call.
    pub stats: Stats,
}

pub(crate) struct Registered {
    pub name: String,
    pub tier: Tier,
    pub ttl: Duration,
    pub counters: Arc<Counters>,
}

static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

pub(crate) fn register(entry: Registered) {
    let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    if name_taken(&registry, &entry.name) {
        // Values never mix (each cache's keys are its own), but the name is the clear scope
        // and the metrics' label: `clear()` of either clears both, and their counters share
        // a series.
        tracing::warn!(
            subject = "cache",
            cache = %entry.name,
            "two caches share this name: `clear()` of either clears both and their metrics \
             mix; give each its own `name`"
        );
    }
    registry.push(entry);
}

/// Whether a cache named `name` is registered already.
fn name_taken(registry: &[Registered], name: &str) -> bool {
    registry.iter().any(|r| r.name == name)
}

/// Every cache created so far in this process (a `#[cached]` cache is created on its first
/// use), with a snapshot of its stats.
///
/// ```
/// use cache_runtime::cached;
///
/// #[cached(ttl = 60)]
/// fn square(x: u64) -> u64 { x * x }
///
/// square(3);
/// square(3);
/// let info = cache_runtime::caches().into_iter().find(|c| c.name.ends_with("::square")).unwrap();
/// assert_eq!(info.stats.local_hits, 1);
/// ```
pub fn caches() -> Vec<CacheInfo> {
    REGISTRY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|r| CacheInfo {
            name: r.name.clone(),
            tier: r.tier,
            ttl: r.ttl,
            stats: r.counters.snapshot(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_cache_of_a_name_is_noticed() {
        let entry = |name: &str| Registered {
            name: name.into(),
            tier: Tier::Local,
            ttl: Duration::from_secs(1),
            counters: Arc::new(Counters::new("t::dup")),
        };
        let registry = vec![entry("app::a"), entry("dup")];
        assert!(name_taken(&registry, "dup"));
        assert!(!name_taken(&registry, "app::b"));
        assert!(!name_taken(&registry, "du"), "the whole name");
    }

    #[test]
    fn every_counter_reaches_the_snapshot_and_is_reset() {
        let c = Counters::new("t::stats");
        let names = [
            &c.local_hits,
            &c.redis_hits,
            &c.misses,
            &c.coalesced,
            &c.body_calls,
            &c.populates,
            &c.invalidations,
            &c.decode_failures,
            &c.redis_errors,
            &c.redis_timeouts,
            &c.oversize,
            &c.stale_rejected,
            &c.superseded,
            &c.lock_waits,
            &c.lock_timeouts,
            &c.stale_served,
            &c.soft_timeouts,
            &c.refreshes_ahead,
        ];
        for (i, stat) in names.iter().enumerate() {
            stat.add(i as u64 + 1);
        }
        c.body(Duration::from_millis(5));
        let s = c.snapshot();
        assert_eq!((s.local_hits, s.redis_hits, s.misses), (1, 2, 3));
        assert_eq!(s.body_calls, 5 + 1, "add(5) and one body run");
        assert_eq!(s.refreshes_ahead, 18);
        assert_eq!(s.body_time, Duration::from_millis(5));
        c.reset();
        assert_eq!(c.snapshot(), Stats::default());
    }
}
