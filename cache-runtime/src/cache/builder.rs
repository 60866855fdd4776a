//! [`CacheBuilder`]: a cache's options, and how they become a [`Cache`] (its tiers, its
//! registration with the bus and the stats registry).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::codec;
use crate::flight::Flights;
use crate::key::KeySchema;
use crate::local::LocalTier;
use crate::log_limit::LogLimiter;
use crate::observe::Mode;
use crate::runtime::{runtime, Runtime};
use crate::stats::{self, Counters};
use crate::tier::Tier;

use super::background::FailSafe;
use super::local_side::{self, FlightSide, Generations, LocalSide};
use super::redis_side::{DecodeFn, EncodeFn, KeyScheme, RedisSide};
use super::{Cache, EtagFn, WeighFn};

/// Builds a [`Cache`]. TTL is required; everything else has a default.
///
/// ```
/// use cache_runtime::{Cache, Tier};
/// use std::time::Duration;
/// let cache: Cache<u64> = Cache::builder("app::answer")
///     .tier(Tier::LocalRedis)
///     .ttl(Duration::from_secs(300))
///     .local_ttl(Duration::from_secs(10))
///     .capacity(1_000)
///     .version(2)
///     .build();
/// assert_eq!(cache.local_ttl(), Duration::from_secs(10));
/// ```
pub struct CacheBuilder<V> {
    name: String,
    tier: Tier,
    ttl: Duration,
    local_ttl: Option<Duration>,
    none_ttl: Option<Duration>,
    capacity: u64,
    version: u32,
    tagged: bool,
    lock_lease: Option<Duration>,
    mode: Mode,
    jitter: f64,
    stale: Option<(Duration, Duration, Option<Duration>)>,
    soft_timeout: Option<Duration>,
    refresh_ahead: Option<f64>,
    max_bytes: Option<(u64, WeighFn<V>)>,
    /// The value's codec, and its schema hash (folded into the envelope's fingerprint).
    redis: Option<(EncodeFn<V>, DecodeFn<V>, SchemaFn)>,
    etag: Option<EtagFn<V>>,
    key_space: Option<String>,
    _v: PhantomData<fn() -> V>,
}

/// `codec::schema_hash` of the value type.
type SchemaFn = fn() -> u64;

/// Local copies in `local+redis` live at most this long unless `local_ttl` says otherwise.
pub const DEFAULT_LOCAL_TTL_CAP: Duration = Duration::from_secs(30);
/// Default maximum number of local entries.
pub const DEFAULT_CAPACITY: u64 = 10_000;
/// Default lease of the distributed single-flight lock.
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(10);

impl<V> CacheBuilder<V> {
    /// The key template this cache's keys come from (`#[cached(key = ...)]` passes it).
    /// Caches with the same template, schema version and value type read and write the
    /// same Redis entries (e.g. the same function in two services), so they share one
    /// **clear scope**: [`Cache::clear`] of one clears those entries for all of them, in
    /// every process. Without it the clear scope is the cache's name.
    ///
    /// ```
    /// use cache_runtime::Cache;
    /// let a = Cache::<u64>::builder("svc_a::user").key_space("user:<id>").build();
    /// let b = Cache::<u64>::builder("svc_b::user").key_space("user:<id>").build();
    /// assert_eq!(a.clear_scope(), b.clear_scope());
    /// ```
    pub fn key_space(mut self, template: impl Into<String>) -> Self {
        self.key_space = Some(template.into());
        self
    }

    /// Time to live in Redis (and locally for a `local` cache). Millisecond precision.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Time to live of local copies in `local+redis` (clamped to `ttl`). Default:
    /// `min(ttl, 30s)`: the bound on staleness when an invalidation message is lost.
    pub fn local_ttl(mut self, ttl: Duration) -> Self {
        self.local_ttl = Some(ttl);
        self
    }

    /// Time to live of cached `None`s (negative caching). Default: `ttl`.
    pub fn none_ttl(mut self, ttl: Duration) -> Self {
        self.none_ttl = Some(ttl);
        self
    }

    /// Maximum number of entries in the local tier (default 10 000).
    pub fn capacity(mut self, entries: u64) -> Self {
        self.capacity = entries;
        self
    }

    /// Schema version of the value type; bump it when the type changes. It is part of the
    /// Redis key and of the value's type fingerprint.
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Entries carry tags (`Key::with_tags`), so `invalidate_tag` can reach them.
    pub fn tagged(mut self) -> Self {
        self.tagged = true;
        self
    }

    /// Spreads each entry's TTL uniformly by ± `fraction` (clamped to 0–0.5), so entries
    /// written together do not expire together (default 0).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 0.5)
        } else {
            0.0
        };
        self
    }

    /// Fail-safe: keep each value `stale` past its TTL as a fallback. When the body fails
    /// (`Err`, a panic, or running past `timeout`) and a fallback exists, the fallback is
    /// returned instead (and counted in `Stats::stale_served`), and the body is retried at
    /// most once per `retry` for that key. A fallback is never served as a hit otherwise,
    /// and is never re-stored with a fresh TTL.
    pub fn stale(mut self, stale: Duration, retry: Duration, timeout: Option<Duration>) -> Self {
        self.stale = Some((stale, retry, timeout));
        self
    }

    /// With [`stale`](Self::stale): when a stale value exists and the body has not answered
    /// within `soft`, return the stale value and let the body finish in the background to
    /// update the cache (counted in `Stats::soft_timeouts`). Applies to the
    /// [`get_or_load_detached`](Cache::get_or_load_detached) family, which can keep a body
    /// running after its caller returned.
    pub fn soft_timeout(mut self, soft: Duration) -> Self {
        self.soft_timeout = Some(soft);
        self
    }

    /// Refresh ahead: a read of an entry older than `fraction` (0–1, exclusive) of its TTL
    /// starts one background refresh of that entry (per process; across processes with
    /// `lock`), while readers keep getting the current value. No timer per key: only reads
    /// trigger it. Applies to the [`get_or_load_detached`](Cache::get_or_load_detached) family.
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead =
            (fraction.is_finite() && fraction > 0.0 && fraction < 1.0).then_some(fraction);
        self
    }

    /// The mode the cache starts in (default [`Mode::Normal`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Distributed single-flight: on a miss in every tier, one process (holding a Redis
    /// lease of `lease`) runs the body while the others poll for its value. If the holder
    /// dies, its lease expires and a waiter takes over; a waiter gives up and runs the body
    /// itself after `2 × lease`.
    pub fn lock(mut self, lease: Duration) -> Self {
        self.lock_lease = Some(lease.max(Duration::from_millis(1)));
        self
    }
}

impl<V: crate::__private::RedisValue + 'static> CacheBuilder<V> {
    /// Bounds the local tier by memory instead of entries: each entry weighs its key, its
    /// encoded size and a fixed overhead, and the least valuable entries are evicted past
    /// `bytes`. Needs a serde value (the size is measured without allocating).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some((bytes, codec::encoded_size::<V> as WeighFn<V>));
        self
    }

    /// Chooses the tiers (default [`Tier::Local`]). Redis tiers need a serde value, and
    /// give every entry an [`ETag`](crate::ETag) (see [`etag`](Self::etag)).
    pub fn tier(mut self, tier: Tier) -> Self {
        self.tier = tier;
        self.redis = tier.has_redis().then_some((
            codec::encode_sized::<V> as EncodeFn<V>,
            codec::decode_checked::<V> as DecodeFn<V>,
            codec::schema_hash_memoized::<V> as SchemaFn,
        ));
        if tier.has_redis() {
            self = self.etag();
        }
        self
    }

    /// Gives every entry a strong [`ETag`](crate::ETag) (the hash of its encoding, computed
    /// once when the value is stored), for HTTP conditional requests. Automatic with a Redis
    /// tier; for a local-only cache it costs one encoding per stored value. Only once the
    /// cache's first entry call (`get_or_load_entry`, a generated `<fn>_entry`) was made:
    /// plain calls do not pay for a hash they never see.
    ///
    /// ```
    /// use cache_runtime::{Cache, Plain, Sharing};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache: Cache<String> = Cache::builder("doc::etag").etag().build();
    /// let e = cache.get_or_load_entry::<_, Plain>("k", async { "v".to_string() }, &Sharing::none()).await;
    /// assert_eq!(e.etag(), cache_runtime::codec::payload_etag(&"v".to_string()));
    /// # });
    /// ```
    pub fn etag(mut self) -> Self {
        self.etag = Some(codec::payload_etag::<V> as EtagFn<V>);
        self
    }
}

impl<V: crate::__private::CacheValue> CacheBuilder<V> {
    /// Builds the cache and registers it (see [`caches`](crate::caches)). Reads the runtime
    /// configuration (initialising it from the environment if needed).
    pub fn build(self) -> Cache<V> {
        let rt = runtime();
        let ttl = self.ttl.max(Duration::from_millis(1));
        let fingerprint = codec::fingerprint(std::any::type_name::<V>(), self.version);
        // Envelopes also name the type's shape: a type changed without a `version` bump is
        // another type to a reader, never bytes read into the wrong fields.
        let envelope_fingerprint = match &self.redis {
            Some((_, _, schema)) => codec::with_schema(fingerprint, schema()),
            None => fingerprint,
        };
        // What `clear()` covers: every cache over the same entries (see `key_space`).
        let clear_scope = match &self.key_space {
            Some(template) => format!("{template}#{fingerprint:016x}"),
            None => self.name.clone(),
        };
        let local_ttl = match self.tier {
            Tier::LocalRedis => self.local_ttl.unwrap_or(DEFAULT_LOCAL_TTL_CAP).min(ttl),
            _ => ttl,
        };
        let key_schema = KeySchema::from_fingerprint(self.version, envelope_fingerprint);
        let redis = self.redis_side(rt, ttl, &clear_scope, key_schema);
        let counters = Arc::new(Counters::new(&self.name));
        stats::register(stats::Registered {
            name: self.name.clone(),
            tier: self.tier,
            ttl,
            counters: counters.clone(),
        });
        let flights = Arc::new(Flights::new());
        let local = self.local_side(&flights, redis.is_some(), &clear_scope);
        let flight_target = (local.is_none() && redis.is_some()).then(|| {
            let side = Arc::new(FlightSide {
                clear_scope: clear_scope.clone(),
                flights: flights.clone(),
                tagged: self.tagged,
            });
            local_side::register(&side);
            side
        });
        Cache {
            fingerprint: envelope_fingerprint,
            clear_scope,
            max_value_bytes: rt.config.max_value_bytes,
            lock_lease: self.lock_lease.filter(|_| redis.is_some()),
            local,
            name: self.name,
            tier: self.tier,
            ttl,
            local_ttl,
            none_ttl: self.none_ttl.unwrap_or(ttl).max(Duration::from_millis(1)),
            redis,
            counters,
            _flight_target: flight_target,
            flights,
            decode_log: LogLimiter::default(),
            mode: AtomicU8::new(self.mode.to_u8()),
            observer: OnceLock::new(),
            capacity: self.capacity,
            weigh: self.max_bytes.map(|(_, f)| f),
            etag: self.etag,
            etags_wanted: AtomicBool::new(false),
            jitter: self.jitter,
            soft_timeout: self.soft_timeout.filter(|_| self.stale.is_some()),
            refresh_ahead: self.refresh_ahead,
            fail_safe: self
                .stale
                .map(|(stale, retry, timeout)| FailSafe::new(stale, retry, timeout)),
        }
    }

    /// The Redis side, if the tier includes Redis and Redis is configured.
    fn redis_side(
        &self,
        rt: &'static Runtime,
        ttl: Duration,
        clear_scope: &str,
        key_schema: KeySchema,
    ) -> Option<RedisSide<V>> {
        match (self.redis, &rt.redis) {
            (Some((encode, decode, _)), Some(tier)) => Some(RedisSide {
                tier,
                encode,
                decode,
                keys: KeyScheme::new(&rt.config.key_prefix, clear_scope, key_schema),
                // As `build` sets the cache's `none_ttl` and stale window.
                ticket_px: super::redis_side::ticket_px_for(
                    ttl,
                    self.none_ttl.unwrap_or(ttl).max(Duration::from_millis(1)),
                    self.stale.map_or(Duration::ZERO, |(stale, ..)| stale),
                ),
                ticketless: Default::default(),
                lock_misses: Default::default(),
                last_envelope_len: Default::default(),
            }),
            (Some(_), None) => {
                // The runtime already warned once that Redis is not configured.
                tracing::debug!(
                    cache = %self.name,
                    tier = %self.tier,
                    "no Redis configured; the cache runs without its Redis tier"
                );
                None
            }
            _ => None,
        }
    }

    /// The local side (registered with the bus), if the tier includes the local tier.
    fn local_side(
        &self,
        flights: &Arc<Flights<super::flow::Got<V>>>,
        shared: bool,
        clear_scope: &str,
    ) -> Option<Arc<LocalSide<V>>> {
        if !self.tier.has_local() {
            return None;
        }
        let tier = match self.max_bytes {
            Some((bytes, _)) => LocalTier::new(bytes, true),
            None => LocalTier::new(self.capacity, false),
        };
        let side = Arc::new(LocalSide {
            flights: flights.clone(),
            clear_scope: clear_scope.to_string(),
            tier,
            generations: Generations::new(),
            shared,
            tagged: self.tagged,
        });
        local_side::register(&side);
        // Local copies need the subscription: its messages evict them, its trust serves them.
        crate::bus::want();
        Some(side)
    }
}

impl<V> CacheBuilder<V> {
    /// The defaults: a local cache, 60 s TTL, 10 000 entries, schema version 1.
    pub(super) fn new(name: String) -> Self {
        CacheBuilder {
            name,
            tier: Tier::Local,
            ttl: Duration::from_secs(60),
            local_ttl: None,
            none_ttl: None,
            capacity: DEFAULT_CAPACITY,
            version: 1,
            tagged: false,
            lock_lease: None,
            mode: Mode::Normal,
            jitter: 0.0,
            stale: None,
            soft_timeout: None,
            refresh_ahead: None,
            max_bytes: None,
            redis: None,
            etag: None,
            key_space: None,
            _v: PhantomData,
        }
    }
}
