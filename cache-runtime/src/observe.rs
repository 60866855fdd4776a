//! Measure before caching: a cache in observe mode runs the body on every call, serves
//! nothing, and estimates what it would have saved.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::tier::Tier;

/// What a cache does with calls. Switch it at run time with
/// [`Cache::set_mode`](crate::Cache::set_mode), or start in one with `mode = "..."`.
///
/// ```
/// use cache_runtime::Mode;
/// assert_eq!("observe".parse::<Mode>(), Ok(Mode::Observe));
/// assert_eq!(Mode::Bypass.to_string(), "bypass");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Serve from the tiers, fill on misses.
    Normal,
    /// Run the body on every call and serve nothing from the cache; record how often keys
    /// repeat within the TTL and how long the body takes, for [`ObserveReport`].
    Observe,
    /// Pass-through: run the body, touch no tier (for debugging).
    Bypass,
}

impl Mode {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Mode::Normal => 0,
            Mode::Observe => 1,
            Mode::Bypass => 2,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => Mode::Observe,
            2 => Mode::Bypass,
            _ => Mode::Normal,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Normal => "normal",
            Mode::Observe => "observe",
            Mode::Bypass => "bypass",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "normal" => Ok(Mode::Normal),
            "observe" => Ok(Mode::Observe),
            "bypass" => Ok(Mode::Bypass),
            other => Err(format!("unknown mode `{other}`: normal, observe or bypass")),
        }
    }
}

/// The recommendation of an [`ObserveReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fewer than 50 calls observed.
    NotEnoughData,
    /// Saves under 50 µs per call, or under 250 µs with a hit ratio under 30 %.
    NotWorthIt,
    /// Some gain; weigh it against staleness.
    Marginal,
    /// Hit ratio of at least 30 % and at least 1 ms saved per call.
    WorthIt,
}

/// What a cache in observe mode would have done.
///
/// ```
/// use cache_runtime::{ObserveReport, Verdict};
/// use std::time::Duration;
/// let r = ObserveReport::estimate(1_000, 120, Duration::from_secs(10), Duration::from_micros(1800),
///     Duration::from_micros(1800), Duration::from_micros(2500), Duration::from_micros(1));
/// assert_eq!(r.verdict, Verdict::NotWorthIt);
/// assert!(r.to_string().contains("estimated hit ratio 12 %"));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ObserveReport {
    /// Calls observed.
    pub calls: u64,
    /// Calls whose key was seen within the TTL before (bounded by the cache's capacity):
    /// the hits the cache would have had.
    pub would_be_hits: u64,
    /// Observation window.
    pub window: Duration,
    /// Median body time (sampled).
    pub body_p50: Duration,
    /// Mean body time.
    pub body_mean: Duration,
    /// 99th percentile body time (sampled).
    pub body_p99: Duration,
    /// Assumed cost of serving a hit from this cache's tiers.
    pub hit_cost: Duration,
    /// Estimated time saved per call: hit ratio × (mean body time − hit cost).
    pub saved_per_call: Duration,
    /// Estimated body time saved per second of traffic.
    pub saved_per_second: Duration,
    /// The recommendation.
    pub verdict: Verdict,
}

impl ObserveReport {
    /// Builds a report from raw measurements (what [`Cache::observe_report`] does).
    ///
    /// [`Cache::observe_report`]: crate::Cache::observe_report
    pub fn estimate(
        calls: u64,
        would_be_hits: u64,
        window: Duration,
        body_p50: Duration,
        body_mean: Duration,
        body_p99: Duration,
        hit_cost: Duration,
    ) -> Self {
        let ratio = if calls == 0 {
            0.0
        } else {
            would_be_hits as f64 / calls as f64
        };
        let gain = body_mean.saturating_sub(hit_cost).as_secs_f64() * ratio;
        let saved_per_call = Duration::from_secs_f64(gain.max(0.0));
        let per_second = if window.is_zero() {
            0.0
        } else {
            calls as f64 / window.as_secs_f64()
        };
        let saved_per_second = Duration::from_secs_f64((gain * per_second).max(0.0));
        let verdict = if calls < 50 {
            Verdict::NotEnoughData
        } else if saved_per_call < Duration::from_micros(50)
            || (saved_per_call < Duration::from_micros(250) && ratio < 0.3)
        {
            // Saving microseconds is not worth serving stale data.
            Verdict::NotWorthIt
        } else if ratio >= 0.3 && saved_per_call >= Duration::from_millis(1) {
            Verdict::WorthIt
        } else {
            Verdict::Marginal
        };
        Self {
            calls,
            would_be_hits,
            window,
            body_p50,
            body_mean,
            body_p99,
            hit_cost,
            saved_per_call,
            saved_per_second,
            verdict,
        }
    }

    /// Would-be hits / calls.
    pub fn hit_ratio(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.would_be_hits as f64 / self.calls as f64
        }
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else if ms >= 0.1 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    }
}

impl fmt::Display for ObserveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 body time {}; estimated hit ratio {:.0} %; caching would save ~{} per call ({} of body time per second): {}",
            ms(self.body_p50),
            self.hit_ratio() * 100.0,
            ms(self.saved_per_call),
            ms(self.saved_per_second),
            match self.verdict {
                Verdict::NotEnoughData => "not enough calls yet to tell",
                Verdict::NotWorthIt => "probably not worth it",
                Verdict::Marginal => "a modest gain; weigh it against serving stale data",
                Verdict::WorthIt => "worth caching",
            }
        )
    }
}

const SAMPLES: usize = 2048;

/// The bookkeeping of observe mode. Memory is bounded: a moka set of at most `capacity` key
/// hashes (expiring after the TTL), and a reservoir of 2048 body-time samples.
pub(crate) struct Observer {
    seen: moka::sync::Cache<u64, ()>,
    hasher: std::collections::hash_map::RandomState,
    calls: AtomicU64,
    would_be_hits: AtomicU64,
    body_nanos: AtomicU64,
    samples: Mutex<Vec<u64>>,
    started: Instant,
    hit_cost: Duration,
}

impl Observer {
    pub(crate) fn new(ttl: Duration, capacity: u64, tier: Tier) -> Self {
        Self {
            seen: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            hasher: Default::default(),
            calls: AtomicU64::new(0),
            would_be_hits: AtomicU64::new(0),
            body_nanos: AtomicU64::new(0),
            samples: Mutex::new(Vec::with_capacity(SAMPLES)),
            started: Instant::now(),
            // Assumptions (see docs/BENCHMARKS.md): a local hit costs about a microsecond,
            // a Redis hit a loopback round trip plus decoding.
            hit_cost: match tier {
                Tier::Local => Duration::from_micros(1),
                Tier::LocalRedis => Duration::from_micros(5),
                Tier::Redis => Duration::from_micros(100),
            },
        }
    }

    pub(crate) fn record(&self, key: &str, body: Duration) {
        let mut h = self.hasher.build_hasher();
        h.write(key.as_bytes());
        let hash = h.finish();
        let n = self.calls.fetch_add(1, Relaxed);
        if self.seen.contains_key(&hash) {
            self.would_be_hits.fetch_add(1, Relaxed);
        } else {
            self.seen.insert(hash, ());
        }
        let nanos = body.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.body_nanos.fetch_add(nanos, Relaxed);
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < SAMPLES {
            samples.push(nanos);
        } else {
            // Reservoir sampling: keep each call with probability SAMPLES / (n + 1).
            let slot = (hash ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % (n + 1);
            if (slot as usize) < SAMPLES {
                samples[slot as usize] = nanos;
            }
        }
    }

    pub(crate) fn report(&self) -> ObserveReport {
        let calls = self.calls.load(Relaxed);
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        samples.sort_unstable();
        let pick = |p: f64| {
            samples
                .get(((samples.len().saturating_sub(1)) as f64 * p).round() as usize)
                .map_or(Duration::ZERO, |n| Duration::from_nanos(*n))
        };
        let mean = Duration::from_nanos(
            self.body_nanos
                .load(Relaxed)
                .checked_div(calls)
                .unwrap_or(0),
        );
        ObserveReport::estimate(
            calls,
            self.would_be_hits.load(Relaxed),
            self.started.elapsed(),
            pick(0.5),
            mean,
            pick(0.99),
            self.hit_cost,
        )
    }
}
