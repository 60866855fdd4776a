//! Per-cache counters and the process-wide registry of caches.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Tier;

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

/// Live counters of one cache. Metric names follow Prometheus conventions (`_total`,
/// `_seconds`), with a `cache` label (and `tier` for hits).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub local_hits: Stat,
    pub redis_hits: Stat,
    pub misses: Stat,
    pub coalesced: Stat,
    pub body_calls: Stat,
    pub body_nanos: Stat,
    pub populates: Stat,
    pub invalidations: Stat,
    pub decode_failures: Stat,
    pub redis_errors: Stat,
    pub redis_timeouts: Stat,
    pub oversize: Stat,
    pub stale_rejected: Stat,
    pub superseded: Stat,
    pub lock_waits: Stat,
    pub lock_timeouts: Stat,
    pub stale_served: Stat,
    pub soft_timeouts: Stat,
    pub refreshes_ahead: Stat,
    body_seconds: Option<metrics::Histogram>,
}

impl Counters {
    pub fn new(cache: &str) -> Self {
        let l = |extra: Option<(&'static str, &'static str)>| {
            let mut v = vec![metrics::Label::new("cache", cache.to_string())];
            if let Some((k, val)) = extra {
                v.push(metrics::Label::new(k, val));
            }
            v
        };
        Self {
            local_hits: Stat::new("cache_hits_total", l(Some(("tier", "local")))),
            redis_hits: Stat::new("cache_hits_total", l(Some(("tier", "redis")))),
            misses: Stat::new("cache_misses_total", l(None)),
            coalesced: Stat::new("cache_singleflight_waits_total", l(None)),
            body_calls: Stat::new("cache_body_calls_total", l(None)),
            // Exported as the histogram below, not as a counter of nanoseconds.
            body_nanos: Stat::default(),
            populates: Stat::new("cache_populates_total", l(None)),
            invalidations: Stat::new("cache_invalidations_total", l(None)),
            decode_failures: Stat::new("cache_decode_failures_total", l(None)),
            redis_errors: Stat::new("cache_redis_errors_total", l(None)),
            redis_timeouts: Stat::new("cache_redis_timeouts_total", l(None)),
            oversize: Stat::new("cache_oversize_values_total", l(None)),
            stale_rejected: Stat::new("cache_stale_rejected_total", l(None)),
            superseded: Stat::new("cache_superseded_writes_total", l(None)),
            lock_waits: Stat::new("cache_lock_waits_total", l(None)),
            lock_timeouts: Stat::new("cache_lock_timeouts_total", l(None)),
            stale_served: Stat::new("cache_stale_served_total", l(None)),
            soft_timeouts: Stat::new("cache_soft_timeouts_total", l(None)),
            refreshes_ahead: Stat::new("cache_refreshes_ahead_total", l(None)),
            body_seconds: Some(metrics::histogram!("cache_body_duration_seconds", l(None))),
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

    pub fn snapshot(&self) -> Stats {
        Stats {
            local_hits: self.local_hits.get(),
            redis_hits: self.redis_hits.get(),
            misses: self.misses.get(),
            coalesced: self.coalesced.get(),
            body_calls: self.body_calls.get(),
            body_time: Duration::from_nanos(self.body_nanos.get()),
            populates: self.populates.get(),
            invalidations: self.invalidations.get(),
            decode_failures: self.decode_failures.get(),
            redis_errors: self.redis_errors.get(),
            redis_timeouts: self.redis_timeouts.get(),
            oversize: self.oversize.get(),
            stale_rejected: self.stale_rejected.get(),
            superseded: self.superseded.get(),
            lock_waits: self.lock_waits.get(),
            lock_timeouts: self.lock_timeouts.get(),
            stale_served: self.stale_served.get(),
            soft_timeouts: self.soft_timeouts.get(),
            refreshes_ahead: self.refreshes_ahead.get(),
        }
    }

    pub fn reset(&self) {
        for c in [
            &self.local_hits,
            &self.redis_hits,
            &self.misses,
            &self.coalesced,
            &self.body_calls,
            &self.body_nanos,
            &self.populates,
            &self.invalidations,
            &self.decode_failures,
            &self.redis_errors,
            &self.redis_timeouts,
            &self.oversize,
            &self.stale_rejected,
            &self.superseded,
            &self.lock_waits,
            &self.lock_timeouts,
            &self.stale_served,
            &self.soft_timeouts,
            &self.refreshes_ahead,
        ] {
            c.reset();
        }
    }
}

/// A snapshot of one cache's counters.
///
/// ```
/// use cache_runtime::Stats;
/// let s = Stats { local_hits: 3, redis_hits: 1, misses: 4, coalesced: 3, body_calls: 1,
///                 body_time: std::time::Duration::from_millis(20), ..Stats::default() };
/// assert_eq!(s.hits(), 4);
/// assert_eq!(s.hit_ratio(), 0.5);
/// assert_eq!(s.offload_ratio(), 7.0 / 8.0);
/// assert_eq!(s.estimated_time_saved(), std::time::Duration::from_millis(140));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls answered by the in-process tier.
    pub local_hits: u64,
    /// Calls answered by Redis (the value was then promoted to the local tier).
    pub redis_hits: u64,
    /// Calls that found no usable value in any tier (each led to a body run or joined one).
    pub misses: u64,
    /// Misses that waited for a concurrent call's body instead of running their own.
    pub coalesced: u64,
    /// Times the original function body ran (misses, `refresh_*`).
    pub body_calls: u64,
    /// Total wall time spent in the body.
    pub body_time: Duration,
    /// Values written into the cache (after a body run, `populate_*`, `refresh_*`).
    pub populates: u64,
    /// Calls to `invalidate_*`.
    pub invalidations: u64,
    /// Values found in Redis that did not decode (corrupt, foreign, another type or version).
    pub decode_failures: u64,
    /// Redis operations that failed or timed out (each one fell back to the source).
    pub redis_errors: u64,
    /// Of those, the ones that timed out.
    pub redis_timeouts: u64,
    /// Values not written to Redis because they exceeded `max_value_bytes`.
    pub oversize: u64,
    /// Values found in Redis but written before an invalidation, tag invalidation or clear
    /// that happened since (their stamps are outdated): misses.
    pub stale_rejected: u64,
    /// Body results not stored because a write happened while the body ran (the
    /// stale-write-back race, prevented).
    pub superseded: u64,
    /// Polls while another process held the single-flight lock (`lock = true`).
    pub lock_waits: u64,
    /// Times a caller stopped waiting for a lock holder after the lease and ran the body.
    pub lock_timeouts: u64,
    /// Stale values served because the body failed, panicked or timed out (`stale = ...`).
    pub stale_served: u64,
    /// Of those, the ones served because the body ran past `soft_timeout` (it finished in
    /// the background and updated the cache).
    pub soft_timeouts: u64,
    /// Background refreshes started by `refresh_ahead` (a read late in an entry's TTL).
    pub refreshes_ahead: u64,
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
    REGISTRY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(entry);
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
