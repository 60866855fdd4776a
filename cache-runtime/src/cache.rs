//! [`Cache`]: one cached function's tiers, single-flight, generations and stats.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::bus;
use crate::codec::{self, DecodeError, Decoded};
use crate::config::runtime;
use crate::entry::{unix_ms, ETag, Meta, Source};
use crate::flight::{Flights, Joined, Leader, Outcome};
use crate::key::KeyWriter;
use crate::local::LocalTier;
use crate::observe::{Mode, ObserveReport, Observer};
use crate::pending::PendingOp;
use crate::redis_tier::{Fetched, LogLimiter, ReadRequest, RedisTier};
use crate::shape::{EntryShape, Shape, Sharing};
use crate::stats::{self, Counters, Stats};
use crate::CacheError;
use tracing::Instrument;

/// Where a cache keeps its values.
///
/// ```
/// use cache_runtime::Tier;
/// assert!(Tier::LocalRedis.has_local() && Tier::LocalRedis.has_redis());
/// assert_eq!(Tier::Redis.to_string(), "redis");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// In process only (moka).
    Local,
    /// Redis only, shared by every process.
    Redis,
    /// Both; local first.
    LocalRedis,
}

impl Tier {
    /// Whether the tier includes the in-process cache.
    pub fn has_local(self) -> bool {
        matches!(self, Tier::Local | Tier::LocalRedis)
    }
    /// Whether the tier includes Redis.
    pub fn has_redis(self) -> bool {
        matches!(self, Tier::Redis | Tier::LocalRedis)
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tier::Local => "local",
            Tier::Redis => "redis",
            Tier::LocalRedis => "local+redis",
        })
    }
}

type EncodeFn<V> = fn(&V, u64, u64, Duration, &[u64]) -> Result<Vec<u8>, String>;
type EtagFn<V> = fn(&V) -> Option<ETag>;
type WeighFn<V> = fn(&V) -> usize;
type DecodeFn<V> = fn(&[u8], u64, usize, Duration) -> Result<Decoded<V>, DecodeError>;

/// The key of one entry: the template's output, plus the entry's tags.
///
/// ```
/// use cache_runtime::Key;
/// let k = Key::new("user:42").with_tags(vec!["tenant:7".into()]);
/// assert_eq!(k.as_str(), "user:42");
/// assert_eq!(k.tags(), ["tenant:7".to_string()]);
/// let plain: Key = "user:42".into();
/// assert!(plain.tags().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    logical: String,
    tags: Vec<String>,
}

impl Key {
    /// A key without tags.
    pub fn new(logical: impl Into<String>) -> Self {
        Self {
            logical: logical.into(),
            tags: Vec::new(),
        }
    }

    /// The same key with tags (see `tags = [...]` on the attribute).
    pub fn with_tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    /// The logical key (without prefix and versions).
    pub fn as_str(&self) -> &str {
        &self.logical
    }

    /// The entry's tags.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }
}

impl From<String> for Key {
    fn from(logical: String) -> Self {
        Key::new(logical)
    }
}

impl From<&str> for Key {
    fn from(logical: &str) -> Self {
        Key::new(logical)
    }
}

impl From<&String> for Key {
    fn from(logical: &String) -> Self {
        Key::new(logical.clone())
    }
}

struct RedisSide<V> {
    tier: &'static RedisTier,
    encode: EncodeFn<V>,
    decode: DecodeFn<V>,
    /// `{prefix}:w1:v{version}:`
    value_head: String,
    /// `{prefix}:lock:v{version}:`
    lock_head: String,
    /// `{prefix}:gen:` (shared by every schema version, so an invalidation reaches all)
    gen_head: String,
    /// `{prefix}:tag:`
    tag_head: String,
    /// `{prefix}:clear:{name}`
    cache_clear_key: String,
    /// `{prefix}:clear`
    all_clear_key: String,
    channel: String,
    /// How long a generation counter outlives its last bump (≥ 2 × ttl, ≥ 1 day).
    retention: Duration,
}

impl<V> RedisSide<V> {
    fn value_key(&self, key: &Key) -> String {
        format!("{}{}", self.value_head, key.logical)
    }

    fn lock_key(&self, key: &Key) -> String {
        format!("{}{}", self.lock_head, key.logical)
    }

    /// Generation, cache clear, global clear, then one per tag: the counters an entry is
    /// stamped with. A value is current only while all of them are unchanged.
    fn stamp_keys(&self, key: &Key) -> Vec<String> {
        let mut keys = Vec::with_capacity(3 + key.tags.len());
        keys.push(format!("{}{}", self.gen_head, key.logical));
        keys.push(self.cache_clear_key.clone());
        keys.push(self.all_clear_key.clone());
        keys.extend(key.tags.iter().map(|t| format!("{}{t}", self.tag_head)));
        keys
    }
}

/// Striped generation counters. Every explicit write (invalidate, populate, refresh, clear,
/// a bus eviction) bumps the key's stripe under its lock; a body result or a Redis promotion
/// is stored locally only if the stripe did not move since the lookup started, so a value
/// computed before an invalidation is never stored after it.
struct Generations {
    stripes: Box<[Mutex<u64>]>,
}

const STRIPES: usize = 64;

impl Generations {
    fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
        }
    }

    fn stripe(&self, key: &str) -> &Mutex<u64> {
        // Cheap and good enough to spread keys over stripes.
        let h = codec::fnv1a(key.bytes());
        &self.stripes[(h % STRIPES as u64) as usize]
    }

    fn current(&self, key: &str) -> u64 {
        *self.stripe(key).lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bumps the generation and runs `f` while holding the stripe.
    fn bump_with(&self, key: &str, f: impl FnOnce()) {
        let mut g = self.stripe(key).lock().unwrap_or_else(|p| p.into_inner());
        *g += 1;
        f();
    }

    /// Runs `f` only if the generation is still `seen`.
    fn if_current(&self, key: &str, seen: u64, f: impl FnOnce()) -> bool {
        let g = self.stripe(key).lock().unwrap_or_else(|p| p.into_inner());
        let current = *g == seen;
        if current {
            f();
        }
        current
    }

    fn bump_all(&self) {
        for s in self.stripes.iter() {
            *s.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        }
    }
}

/// A value as single-flight hands it to waiters: with its metadata and where it came from.
#[derive(Clone)]
struct Got<V> {
    value: V,
    meta: Meta,
    source: Source,
}

/// The local tier with its generations; registered with the bus.
struct LocalSide<V> {
    name: String,
    tier: LocalTier<V>,
    generations: Generations,
    shared: bool,
    /// Whether entries carry tags: an untagged cache ignores tag invalidations.
    tagged: bool,
    flights: Arc<Flights<Got<V>>>,
}

/// A Redis-only cache's in-flight bodies, registered with the bus so that a write elsewhere
/// keeps later callers from joining a body that started before it.
struct FlightSide<V> {
    name: String,
    flights: Arc<Flights<Got<V>>>,
    tagged: bool,
}

impl<V: Send + Sync + 'static> bus::Target for FlightSide<V> {
    fn name(&self) -> &str {
        &self.name
    }
    fn shared(&self) -> bool {
        false
    }
    fn evict(&self, key: &str, _generation: u64) {
        self.flights.detach(key);
    }
    fn evict_tag(&self, tag: &str) {
        if self.tagged {
            self.flights.detach_tagged(tag);
        }
    }
    fn clear(&self) {
        self.flights.detach_all();
    }
}

impl<V: Clone + Send + Sync + 'static> bus::Target for LocalSide<V> {
    fn name(&self) -> &str {
        &self.name
    }

    fn shared(&self) -> bool {
        self.shared
    }

    fn evict(&self, key: &str, generation: u64) {
        self.flights.detach(key);
        self.generations
            .bump_with(key, || self.tier.remove_older_than(key, generation));
    }

    /// Only loads and entries that carry `tag` are affected: their flights are detached and
    /// their keys' generations bumped (so a value read before the tag's bump is not stored),
    /// then tagged entries are removed. Other keys keep caching through a tag storm.
    fn evict_tag(&self, tag: &str) {
        if !self.tagged {
            return;
        }
        for key in self.flights.detach_tagged(tag) {
            self.generations.bump_with(&key, || {});
        }
        self.tier.remove_tagged(tag);
    }

    fn clear(&self) {
        self.flights.detach_all();
        self.generations.bump_all();
        self.tier.clear();
    }
}

/// One cache: the tiers of one cached function. `#[cached]` creates one per function and
/// exposes it through `<fn>_cache()`; it can also be built and used by hand.
///
/// ```
/// use cache_runtime::{Cache, Plain, Sharing};
/// use std::time::Duration;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let cache: Cache<String> = Cache::builder("greetings").ttl(Duration::from_secs(60)).build();
/// let v = cache.get_or_load::<_, Plain>("hello", async { "hi".to_string() }, &Sharing::none()).await;
/// assert_eq!(v, "hi");
/// assert_eq!(cache.lookup("hello").await.as_deref(), Some("hi"));
/// assert_eq!(cache.stats().body_calls, 1);
/// # });
/// ```
pub struct Cache<V> {
    name: String,
    tier: Tier,
    ttl: Duration,
    local_ttl: Duration,
    none_ttl: Duration,
    fingerprint: u64,
    max_value_bytes: usize,
    lock_lease: Option<Duration>,
    local: Option<Arc<LocalSide<V>>>,
    redis: Option<RedisSide<V>>,
    counters: Arc<Counters>,
    flights: Arc<Flights<Got<V>>>,
    /// Registered with the bus for Redis-only caches (which have no local side to register).
    _flight_target: Option<Arc<FlightSide<V>>>,
    decode_log: LogLimiter,
    mode: AtomicU8,
    observer: OnceLock<Observer>,
    capacity: u64,
    weigh: Option<WeighFn<V>>,
    /// Computes a value's ETag when it is stored without a Redis encoding at hand.
    etag: Option<EtagFn<V>>,
    jitter: f64,
    fail_safe: Option<FailSafe>,
    /// `soft_timeout`: with a stale value at hand, a slower body finishes in the background.
    soft_timeout: Option<Duration>,
    /// `refresh_ahead`: the fraction of an entry's TTL after which a read refreshes it.
    refresh_ahead: Option<f64>,
}

/// `stale = ...`: expired values kept as a fallback for failing bodies.
struct FailSafe {
    stale: Duration,
    timeout: Option<Duration>,
    /// Keys whose body failed recently: served stale without retrying until this expires.
    failed: moka::sync::Cache<String, ()>,
}

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
    redis: Option<(EncodeFn<V>, DecodeFn<V>)>,
    etag: Option<EtagFn<V>>,
    _v: PhantomData<fn() -> V>,
}

/// Local copies in `local+redis` live at most this long unless `local_ttl` says otherwise.
pub const DEFAULT_LOCAL_TTL_CAP: Duration = Duration::from_secs(30);
/// Default maximum number of local entries.
pub const DEFAULT_CAPACITY: u64 = 10_000;
/// Default lease of the distributed single-flight lock.
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(10);

impl<V> CacheBuilder<V> {
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

impl<V: crate::__private::RedisValue> CacheBuilder<V> {
    /// Bounds the local tier by memory instead of entries: each entry weighs its key, its
    /// encoded size and a fixed overhead, and the least valuable entries are evicted past
    /// `bytes`. Needs a serde value (the size is measured without allocating).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some((bytes, codec::encoded_size::<V> as WeighFn<V>));
        self
    }

    /// Chooses the tiers (default [`Tier::Local`]). Redis tiers need a serde value, and
    /// give every entry an [`ETag`] (see [`etag`](Self::etag)).
    pub fn tier(mut self, tier: Tier) -> Self {
        self.tier = tier;
        self.redis = tier.has_redis().then_some((
            codec::encode_at::<V> as EncodeFn<V>,
            codec::decode_with_grace::<V> as DecodeFn<V>,
        ));
        if tier.has_redis() {
            self = self.etag();
        }
        self
    }

    /// Gives every entry a strong [`ETag`] (the hash of its encoding, computed once when the
    /// value is stored), for HTTP conditional requests. Automatic with a Redis tier; for a
    /// local-only cache it costs one encoding per stored value.
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
        let prefix = &rt.config.key_prefix;
        let ttl = self.ttl.max(Duration::from_millis(1));
        let local_ttl = match self.tier {
            Tier::LocalRedis => self.local_ttl.unwrap_or(DEFAULT_LOCAL_TTL_CAP).min(ttl),
            _ => ttl,
        };
        let redis = match (self.redis, &rt.redis) {
            (Some((encode, decode)), Some(tier)) => Some(RedisSide {
                tier,
                encode,
                decode,
                value_head: format!("{prefix}:w{}:v{}:", codec::WIRE_VERSION, self.version),
                lock_head: format!("{prefix}:lock:v{}:", self.version),
                gen_head: format!("{prefix}:gen:"),
                tag_head: format!("{prefix}:tag:"),
                cache_clear_key: format!("{prefix}:clear:{}", self.name),
                all_clear_key: format!("{prefix}:clear"),
                channel: bus::channel(prefix),
                retention: (ttl * 2).max(Duration::from_secs(86_400)),
            }),
            (Some(_), None) => {
                // The runtime already warned once that Redis is not configured.
                tracing::debug!(
                    cache = %self.name,
                    "cache_runtime: no Redis configured; `{}` runs without its Redis tier",
                    self.tier
                );
                None
            }
            _ => None,
        };
        let counters = Arc::new(Counters::new(&self.name));
        stats::register(stats::Registered {
            name: self.name.clone(),
            tier: self.tier,
            ttl,
            counters: counters.clone(),
        });
        let flights = Arc::new(Flights::new());
        let local = self.tier.has_local().then(|| {
            let side = Arc::new(LocalSide {
                flights: flights.clone(),
                name: self.name.clone(),
                tier: {
                    let uniform = (self.tier == Tier::Local
                        && self.jitter == 0.0
                        && self.stale.is_none()
                        && self
                            .none_ttl
                            .is_none_or(|n| n.max(Duration::from_millis(1)) == ttl))
                    .then_some(ttl);
                    match self.max_bytes {
                        Some((bytes, _)) => {
                            LocalTier::new(&self.name, bytes, self.tagged, true, uniform)
                        }
                        None => {
                            LocalTier::new(&self.name, self.capacity, self.tagged, false, uniform)
                        }
                    }
                },
                generations: Generations::new(),
                shared: redis.is_some(),
                tagged: self.tagged,
            });
            let weak: std::sync::Weak<dyn bus::Target> =
                Arc::downgrade(&side) as std::sync::Weak<dyn bus::Target>;
            bus::register(weak);
            side
        });
        let flight_target = (local.is_none() && redis.is_some()).then(|| {
            let side = Arc::new(FlightSide {
                name: self.name.clone(),
                flights: flights.clone(),
                tagged: self.tagged,
            });
            let weak: std::sync::Weak<dyn bus::Target> =
                Arc::downgrade(&side) as std::sync::Weak<dyn bus::Target>;
            bus::register(weak);
            side
        });
        Cache {
            fingerprint: codec::fingerprint(std::any::type_name::<V>(), self.version),
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
            jitter: self.jitter,
            soft_timeout: self.soft_timeout.filter(|_| self.stale.is_some()),
            refresh_ahead: self.refresh_ahead,
            fail_safe: self.stale.map(|(stale, retry, timeout)| FailSafe {
                stale,
                timeout,
                failed: moka::sync::Cache::builder()
                    .max_capacity(10_000)
                    .time_to_live(retry.max(Duration::from_millis(1)))
                    .build(),
            }),
        }
    }
}

impl<V> Cache<V> {
    /// A builder for a cache named `name` (the name used in stats and logs).
    pub fn builder(name: impl Into<String>) -> CacheBuilder<V> {
        CacheBuilder {
            name: name.into(),
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
            _v: PhantomData,
        }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configured tiers.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Whether this cache is really using Redis (tier includes it and Redis is configured).
    pub fn redis_active(&self) -> bool {
        self.redis.is_some()
    }

    /// TTL of entries (in Redis, or locally for a `local` cache).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Upper bound of a local copy's lifetime.
    pub fn local_ttl(&self) -> Duration {
        self.local_ttl
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Resets the counters to zero.
    pub fn reset_stats(&self) {
        self.counters.reset();
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Relaxed))
    }

    /// Switches the mode at run time (e.g. from an admin endpoint): `Observe` to measure
    /// whether caching pays off, `Bypass` to rule the cache out while debugging.
    ///
    /// ```
    /// use cache_runtime::{Cache, Mode};
    /// let cache: Cache<u8> = Cache::builder("m").build();
    /// cache.set_mode(Mode::Bypass);
    /// assert_eq!(cache.mode(), Mode::Bypass);
    /// ```
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode.to_u8(), Ordering::Relaxed);
    }

    /// What observe mode measured so far (`None` if this cache never observed a call).
    pub fn observe_report(&self) -> Option<ObserveReport> {
        self.observer.get().map(Observer::report)
    }

    /// Starts a key. Generated code appends the template's parts.
    pub fn key_writer(&self) -> KeyWriter {
        KeyWriter::with_head("")
    }

    /// The Redis key of `key`'s value (`{prefix}:w1:v{version}:{key}`), if this cache uses
    /// Redis. For operators and tests.
    pub fn redis_key(&self, key: &str) -> Option<String> {
        self.redis.as_ref().map(|r| r.value_key(&Key::new(key)))
    }
}

/// The result of the Redis side of a miss.
enum Fill<V> {
    /// A current value was found (and promoted).
    Found(V, Meta),
    /// Nothing usable: run the body, then store under these stamps (`None`: Redis could not
    /// be read, so nothing is written there) and release this lock token. `fallback`: a
    /// stale value from Redis (fail-safe).
    Compute {
        stamps: Option<Vec<u64>>,
        token: Option<String>,
        fallback: Option<(V, Meta)>,
    },
}

impl<V: Clone + Send + Sync + 'static> Cache<V> {
    /// Entries in the local tier (after pending maintenance).
    pub fn local_entry_count(&self) -> u64 {
        self.local.as_ref().map_or(0, |l| l.tier.entry_count())
    }

    /// Drops every local entry of this cache, in this process only.
    pub fn clear_local(&self) {
        if let Some(local) = &self.local {
            bus::Target::clear(local.as_ref());
        }
    }

    /// Drops every entry of this cache in every tier and process: local copies here now,
    /// Redis entries by bumping the cache's clear version (one `INCR`, no key scan), and
    /// other processes' local copies through the bus.
    pub async fn clear(&self) -> Result<(), CacheError> {
        self.clear_local();
        let res = match &self.redis {
            Some(r) => {
                let res = r
                    .tier
                    .bump_version(
                        r.cache_clear_key.clone(),
                        r.channel.clone(),
                        bus::message_prefix(bus::Action::ClearCache, &self.name),
                    )
                    .await
                    .map(drop);
                if res.is_err() {
                    r.tier.defer(PendingOp::Bump {
                        key: r.cache_clear_key.clone(),
                        channel: r.channel.clone(),
                        action: bus::Action::ClearCache,
                        target: self.name.clone(),
                    });
                }
                res
            }
            None => Ok(()),
        };
        self.count_redis(res)
    }

    /// Blocking [`clear`](Self::clear).
    pub fn clear_blocking(&self) -> Result<(), CacheError> {
        pollster::block_on(self.clear())
    }

    /// The waterfall: local → Redis (promoting the value) → `body` (once per key across
    /// concurrent callers in this process, and across processes with a lock) → store in every
    /// tier. Redis failures are misses.
    pub async fn get_or_load<R, S>(
        &self,
        key: impl Into<Key>,
        body: impl Future<Output = R>,
        sharing: &Sharing<R>,
    ) -> R
    where
        S: Shape<R, Value = V>,
    {
        self.load::<R, S, _>(&key.into(), &mut Some(body), sharing)
            .await
            .0
    }

    /// [`get_or_load`](Self::get_or_load), with the value wrapped in an [`Entry`](crate::Entry):
    /// its ETag, creation time, tags and where it came from, for HTTP responses. A hit
    /// returns what was computed when the value was stored; nothing is hashed again.
    ///
    /// ```
    /// use cache_runtime::{Cache, OkOnly, Sharing, Source};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache: Cache<u32> = Cache::builder("doc::entry").etag().build();
    /// let load = || async { Ok::<u32, String>(7) };
    /// let first = cache.get_or_load_entry::<_, OkOnly>("k", load(), &Sharing::none()).await.unwrap();
    /// let again = cache.get_or_load_entry::<_, OkOnly>("k", load(), &Sharing::none()).await.unwrap();
    /// assert_eq!((first.source(), again.source()), (Source::Body, Source::Local));
    /// assert_eq!(first.etag(), again.etag());
    /// assert_eq!(first.created(), again.created());
    /// # });
    /// ```
    pub async fn get_or_load_entry<R, S>(
        &self,
        key: impl Into<Key>,
        body: impl Future<Output = R>,
        sharing: &Sharing<R>,
    ) -> S::Entries
    where
        S: EntryShape<R, Value = V>,
    {
        let key = key.into();
        let (r, meta, source) = self.load::<R, S, _>(&key, &mut Some(body), sharing).await;
        S::with_entry(r, meta, key.tags.into(), source)
    }

    /// Blocking [`get_or_load_entry`](Self::get_or_load_entry).
    pub fn get_or_load_entry_blocking<R, S>(
        &self,
        key: impl Into<Key>,
        body: impl FnOnce() -> R,
        sharing: &Sharing<R>,
    ) -> S::Entries
    where
        S: EntryShape<R, Value = V>,
    {
        pollster::block_on(self.get_or_load_entry::<R, S>(key, async move { body() }, sharing))
    }

    /// [`get_or_load`](Self::get_or_load) for a cache that lives for the whole program, with
    /// a body that can outlive its caller (owned arguments, `Send`): needed for
    /// [`soft_timeout`](CacheBuilder::soft_timeout) and
    /// [`refresh_ahead`](CacheBuilder::refresh_ahead), which keep or start a body in the
    /// background. `#[cached]` uses it when either option is set. Background work runs on the
    /// caller's Tokio runtime (or the runtime's Redis thread outside one).
    ///
    /// ```
    /// use cache_runtime::{Cache, Plain, Sharing};
    /// use std::sync::OnceLock;
    /// use std::time::Duration;
    ///
    /// fn cache() -> &'static Cache<u64> {
    ///     static C: OnceLock<Cache<u64>> = OnceLock::new();
    ///     C.get_or_init(|| Cache::builder("doc::detached").ttl(Duration::from_secs(60)).refresh_ahead(0.8).build())
    /// }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let v = cache().get_or_load_detached::<_, Plain, _>("k".into(), async { 42 }, Sharing::none()).await;
    /// assert_eq!(v, 42);
    /// # });
    /// ```
    pub async fn get_or_load_detached<R, S, B>(
        &'static self,
        key: Key,
        body: B,
        sharing: Sharing<R>,
    ) -> R
    where
        S: Shape<R, Value = V> + 'static,
        R: Send + 'static,
        B: Future<Output = R> + Send + 'static,
    {
        self.load_detached::<R, S, B>(key, body, sharing).await.0
    }

    /// [`get_or_load_detached`](Self::get_or_load_detached) returning an
    /// [`Entry`](crate::Entry) (see [`get_or_load_entry`](Self::get_or_load_entry)).
    pub async fn get_or_load_entry_detached<R, S, B>(
        &'static self,
        key: Key,
        body: B,
        sharing: Sharing<R>,
    ) -> S::Entries
    where
        S: EntryShape<R, Value = V> + 'static,
        R: Send + 'static,
        B: Future<Output = R> + Send + 'static,
    {
        let tags: Arc<[String]> = key.tags.clone().into();
        let (r, meta, source) = self.load_detached::<R, S, B>(key, body, sharing).await;
        S::with_entry(r, meta, tags, source)
    }

    async fn load_detached<R, S, B>(
        &'static self,
        key: Key,
        body: B,
        sharing: Sharing<R>,
    ) -> (R, Meta, Source)
    where
        S: Shape<R, Value = V> + 'static,
        R: Send + 'static,
        B: Future<Output = R> + Send + 'static,
    {
        let normal = self.mode.load(Ordering::Relaxed) == 0;
        if normal {
            // The hit is handled here (one local lookup), so a miss can go to `load_soft`.
            if let Some((v, meta)) = self.local_hit(&key.logical) {
                if self.refresh_due(&meta) {
                    self.refresh_in_background::<R, S, B>(key, body, sharing);
                }
                return (S::rebuild(v), meta, Source::Local);
            }
            if let Some(soft) = self.soft_timeout {
                return self
                    .load_soft::<R, S, B>(key, Some(body), sharing, soft)
                    .await;
            }
        }
        let mut body = Some(body);
        let out = self.load::<R, S, B>(&key, &mut body, &sharing).await;
        if let (Some(body), true, Source::Local | Source::Redis) = (body, normal, out.2) {
            if self.refresh_due(&out.1) {
                self.refresh_in_background::<R, S, B>(key, body, sharing);
            }
        }
        out
    }

    /// The miss path in a task, raced against `soft`: past it, a stale value (local, or
    /// Redis's) is returned and the task completes in the background, storing its result.
    async fn load_soft<R, S, B>(
        &'static self,
        key: Key,
        body: Option<B>,
        sharing: Sharing<R>,
        soft: Duration,
    ) -> (R, Meta, Source)
    where
        S: Shape<R, Value = V> + 'static,
        R: Send + 'static,
        B: Future<Output = R> + Send + 'static,
    {
        use futures_util::future::{select, Either};
        let task_key = key.clone();
        let task = async move {
            let mut body = body;
            self.load::<R, S, B>(&task_key, &mut body, &sharing).await
        };
        let mut handle = match spawn_task(task) {
            Ok(handle) => handle,
            // No runtime to finish a body in: wait for it here.
            Err(task) => return task.await,
        };
        let timer = std::pin::pin!(sleep_anywhere(soft));
        let handle = match select(&mut handle, timer).await {
            Either::Left((done, _)) => return joined(done),
            Either::Right(((), _)) => handle,
        };
        if let Some((v, meta)) = self.stale_fallback(&key).await {
            self.counters.soft_timeouts.add(1);
            self.counters.stale_served.add(1);
            tracing::debug!(cache = %self.name, "body past soft_timeout; serving stale");
            return (S::rebuild(v), meta, Source::Stale);
        }
        joined(handle.await)
    }

    /// A fallback for a soft timeout: a local copy (fresh if a write landed meanwhile, else
    /// stale), or a stale one still in Redis.
    async fn stale_fallback(&self, key: &Key) -> Option<(V, Meta)> {
        if let Some(local) = &self.local {
            return local.tier.get_stale(&key.logical);
        }
        let seen = self.local_generation(&key.logical);
        match self.redis_read(key, seen, None, false).await {
            Read::Found(v, meta)
            | Read::Stale {
                value: (v, meta), ..
            } => Some((v, meta)),
            _ => None,
        }
    }

    /// Whether a value read now is late enough in its TTL for a refresh ahead.
    fn refresh_due(&self, meta: &Meta) -> bool {
        let Some(fraction) = self.refresh_ahead else {
            return false;
        };
        let span = meta.expires_unix_ms.saturating_sub(meta.created_unix_ms);
        let age = unix_ms(std::time::SystemTime::now()).saturating_sub(meta.created_unix_ms);
        span > 0 && age as f64 >= fraction * span as f64
    }

    /// Starts one background refresh of `key` unless one (or any load) is already running:
    /// the flight is joined here, so concurrent readers do not start a second one.
    fn refresh_in_background<R, S, B>(&'static self, key: Key, body: B, sharing: Sharing<R>)
    where
        S: Shape<R, Value = V> + 'static,
        R: Send + 'static,
        B: Future<Output = R> + Send + 'static,
    {
        let Joined::Leader(leader) = self.flights.join(&key.logical, &key.tags) else {
            return;
        };
        let task = async move {
            let mut body = Some(body);
            self.lead::<R, S, B>(&key, leader, &mut body, &sharing, true)
                .await;
        };
        // Without a runtime the leader is dropped here, which releases the flight.
        if spawn_task(task).is_ok() {
            self.counters.refreshes_ahead.add(1);
        }
    }

    /// The waterfall, returning the value's metadata and source too. `body` is taken only
    /// if it runs (a caller may still use it for a refresh ahead).
    async fn load<R, S, B>(
        &self,
        key: &Key,
        body: &mut Option<B>,
        sharing: &Sharing<R>,
    ) -> (R, Meta, Source)
    where
        S: Shape<R, Value = V>,
        B: Future<Output = R>,
    {
        if self.mode.load(Ordering::Relaxed) != 0 {
            let body = body.take().expect("the body future is used at most once");
            let r = self.unserved(key, body).await;
            return (r, Meta::fresh(Duration::ZERO, None), Source::Body);
        }
        if let Some((v, meta)) = self.local_hit(&key.logical) {
            return (S::rebuild(v), meta, Source::Local);
        }
        let mut counted_miss = false;
        loop {
            match self.flights.join(&key.logical, &key.tags) {
                Joined::Follower(flight) => {
                    if !counted_miss {
                        counted_miss = true;
                        self.counters.misses.add(1);
                        self.counters.coalesced.add(1);
                    }
                    let waited = flight
                        .wait(
                            |g: Got<V>| (S::rebuild(g.value), g.meta, g.source),
                            |b| {
                                (sharing.unshare)(b)
                                    .map(|r| (r, Meta::fresh(Duration::ZERO, None), Source::Body))
                            },
                        )
                        .await;
                    if let Some(r) = waited {
                        return r;
                    }
                    // The leader gave up or could not share its result: try again.
                    if let Some((v, meta)) = self.local_peek(&key.logical) {
                        return (S::rebuild(v), meta, Source::Local);
                    }
                }
                Joined::Leader(leader) => {
                    // A flight may have completed between our local miss and the join.
                    if let Some((v, meta)) = self.local_peek(&key.logical) {
                        return hand_over::<R, S, V>(leader, v, meta, Source::Local);
                    }
                    if !counted_miss {
                        self.counters.misses.add(1);
                    }
                    // Boxed: the miss path's state (Redis, lock, body, store) stays off the
                    // stack of callers that only hit; a miss allocates anyway.
                    return Box::pin(self.lead::<R, S, B>(key, leader, body, sharing, false)).await;
                }
            }
        }
    }

    /// A leader's work: Redis (with the lock, if any), then the body under the fail-safe,
    /// then the store. `refresh`: a refresh ahead, for which a value that is itself due for
    /// refresh does not count as found.
    async fn lead<R, S, B>(
        &self,
        key: &Key,
        leader: Leader<'_, Got<V>>,
        body: &mut Option<B>,
        sharing: &Sharing<R>,
        refresh: bool,
    ) -> (R, Meta, Source)
    where
        S: Shape<R, Value = V>,
        B: Future<Output = R>,
    {
        let seen_local = self.local_generation(&key.logical);
        let (stamps, token, fallback) = match self.redis_fill(key, seen_local, refresh).await {
            Fill::Found(v, meta) => return hand_over::<R, S, V>(leader, v, meta, Source::Redis),
            Fill::Compute {
                stamps,
                token,
                fallback,
            } => (stamps, token, fallback),
        };
        let body = body.take().expect("the body future is used at most once");
        let fallback = match &self.fail_safe {
            Some(_) => fallback.or_else(|| {
                self.local
                    .as_ref()
                    .and_then(|l| l.tier.get_stale(&key.logical))
            }),
            None => None,
        };
        let r = match (fallback, &self.fail_safe) {
            (Some((fb, fb_meta)), Some(fs)) => match self.guarded(key, body, fs).await {
                Some(r) if !S::is_failure(&r) => r,
                failed => {
                    // `Err`, panic or timeout: serve the stale value, and do not retry this
                    // key's body before `stale_retry`.
                    if let Some(r) = failed {
                        drop(r);
                    }
                    fs.failed.insert(key.logical.clone(), ());
                    self.counters.stale_served.add(1);
                    self.release(key, token).await;
                    return hand_over::<R, S, V>(leader, fb, fb_meta, Source::Stale);
                }
            },
            _ => self.timed(body).await,
        };
        match S::cacheable(&r) {
            Some((v, negative)) => {
                // A failed Redis write is counted and logged; the caller still gets the value.
                let (_, meta) = self
                    .store_fresh(key, v.clone(), negative, seen_local, stamps, token)
                    .await;
                leader.finish(Outcome::Value(Got {
                    value: v,
                    meta,
                    source: Source::Body,
                }));
                (r, meta, Source::Body)
            }
            None => {
                self.release(key, token).await;
                leader.finish(match (sharing.share)(&r) {
                    Some(b) => Outcome::Shared(b),
                    None => Outcome::Unshareable,
                });
                (r, Meta::fresh(Duration::ZERO, None), Source::Body)
            }
        }
    }

    /// [`get_or_load`](Self::get_or_load) for a blocking body, from synchronous code.
    pub fn get_or_load_blocking<R, S>(
        &self,
        key: impl Into<Key>,
        body: impl FnOnce() -> R,
        sharing: &Sharing<R>,
    ) -> R
    where
        S: Shape<R, Value = V>,
    {
        let key = key.into();
        if self.mode.load(Ordering::Relaxed) == 0 {
            if let Some((v, _)) = self.local_hit(&key.logical) {
                return S::rebuild(v);
            }
        }
        pollster::block_on(self.get_or_load::<R, S>(key, async move { body() }, sharing))
    }

    /// The cached value, from the local tier or Redis (promoting it), without running the body.
    pub async fn lookup(&self, key: impl Into<Key>) -> Option<V> {
        let key = key.into();
        if let Some((v, _)) = self.local_hit(&key.logical) {
            return Some(v);
        }
        // A tagged value is promoted only under a flight (which a tag invalidation detaches);
        // a lookup has none, so it does not promote (no generation equals `u64::MAX`).
        let seen_local = match key.tags.is_empty() {
            true => self.local_generation(&key.logical),
            false => u64::MAX,
        };
        match self.redis_read(&key, seen_local, None, false).await {
            Read::Found(v, _) => Some(v),
            _ => {
                self.counters.misses.add(1);
                None
            }
        }
    }

    /// Blocking [`lookup`](Self::lookup).
    pub fn lookup_blocking(&self, key: impl Into<Key>) -> Option<V> {
        pollster::block_on(self.lookup(key))
    }

    /// Removes the entry from every tier and, through the bus, from other processes' local
    /// tiers. The local tier is always cleared; the result says whether Redis confirmed
    /// (`Ok` too when this cache has no Redis tier). One round trip.
    pub async fn invalidate(&self, key: impl Into<Key>) -> Result<(), CacheError> {
        let key = key.into();
        self.counters.invalidations.add(1);
        self.drop_local(&key.logical);
        let res = match &self.redis {
            Some(r) => {
                let res = r
                    .tier
                    .invalidate(
                        r.value_key(&key),
                        format!("{}{}", r.gen_head, key.logical),
                        r.retention,
                        r.channel.clone(),
                        bus::message_prefix(bus::Action::Invalidated, &key.logical),
                    )
                    .await
                    .map(|generation| {
                        // Other caches of this process over the same key (e.g. another schema
                        // version) drop their copies too, as remote processes do.
                        bus::apply_locally(bus::Action::Invalidated, &key.logical, generation)
                    });
                if res.is_err() {
                    self.defer_invalidation(r, &key);
                }
                res
            }
            None => Ok(()),
        };
        // Again after Redis: a concurrent miss may have promoted the old value meanwhile.
        self.drop_local(&key.logical);
        self.count_redis(res)
    }

    /// Blocking [`invalidate`](Self::invalidate).
    pub fn invalidate_blocking(&self, key: impl Into<Key>) -> Result<(), CacheError> {
        pollster::block_on(self.invalidate(key))
    }

    /// Writes `value` into every tier (write-through after an update) and evicts other
    /// processes' local copies. Local is always written; the result says whether Redis
    /// accepted it. Two round trips.
    pub async fn populate(&self, key: impl Into<Key>, value: V) -> Result<(), CacheError> {
        self.store_explicit(&key.into(), value, false).await
    }

    /// Blocking [`populate`](Self::populate).
    pub fn populate_blocking(&self, key: impl Into<Key>, value: V) -> Result<(), CacheError> {
        pollster::block_on(self.populate(key, value))
    }

    /// Runs `body` now (no lookup) and stores a cacheable result like [`populate`](Self::populate).
    pub async fn refresh<R, S>(&self, key: impl Into<Key>, body: impl Future<Output = R>) -> R
    where
        S: Shape<R, Value = V>,
    {
        let key = key.into();
        let r = self.timed(body).await;
        if let Some((v, negative)) = S::cacheable(&r) {
            let _ = self.store_explicit(&key, v, negative).await;
        }
        r
    }

    /// Blocking [`refresh`](Self::refresh).
    pub fn refresh_blocking<R, S>(&self, key: impl Into<Key>, body: impl FnOnce() -> R) -> R
    where
        S: Shape<R, Value = V>,
    {
        pollster::block_on(self.refresh::<R, S>(key, async move { body() }))
    }

    /// The local tier's copy of `key`, if any: no Redis, no stats. For tests and debugging.
    pub fn peek_local(&self, key: &str) -> Option<V> {
        self.local_peek(key).map(|(v, _)| v)
    }

    /// Redis did not take an invalidation (or a write): retry it in the background, and
    /// meanwhile do not read this key from Redis, where a stale value may remain.
    fn defer_invalidation(&self, r: &RedisSide<V>, key: &Key) {
        bus::apply_locally(bus::Action::Invalidated, &key.logical, u64::MAX);
        r.tier.defer(PendingOp::Invalidate {
            value_key: r.value_key(key),
            gen_key: format!("{}{}", r.gen_head, key.logical),
            retention: r.retention,
            channel: r.channel.clone(),
            logical: key.logical.clone(),
        });
    }

    /// Runs the body for the fail-safe: `None` if it panicked or ran past the timeout. A key
    /// that failed within `stale_retry` is not run at all (`None`).
    async fn guarded<R>(
        &self,
        key: &Key,
        body: impl Future<Output = R>,
        fs: &FailSafe,
    ) -> Option<R> {
        use futures_util::FutureExt;
        if fs.failed.contains_key(&key.logical) {
            return None;
        }
        let run = std::panic::AssertUnwindSafe(self.timed(body)).catch_unwind();
        let outcome = match fs.timeout {
            None => run.await,
            Some(t) => {
                let timer = std::pin::pin!(sleep_anywhere(t));
                let run = std::pin::pin!(run);
                match futures_util::future::select(run, timer).await {
                    futures_util::future::Either::Left((r, _)) => r,
                    futures_util::future::Either::Right(_) => {
                        tracing::debug!(cache = %self.name, "body timed out; serving stale");
                        return None;
                    }
                }
            }
        };
        match outcome {
            Ok(r) => Some(r),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::warn!(cache = %self.name, "body panicked ({msg}); serving stale");
                None
            }
        }
    }

    /// An entry's weight: 1, or its estimated bytes when bounded by `max_bytes`. A value in
    /// memory (headers, heap blocks) is about 3 × its compact encoding, and moka's bookkeeping
    /// plus ours is about 480 bytes per entry: calibrated with `examples/bounded_memory.rs`
    /// (see docs/BENCHMARKS.md), so that `max_bytes` approximates resident memory.
    fn weight_of(&self, key: &str, value: &V) -> u32 {
        const ENTRY_OVERHEAD: usize = 480;
        match self.weigh {
            Some(size) => {
                (key.len() + 3 * size(value) + ENTRY_OVERHEAD).min(u32::MAX as usize) as u32
            }
            None => 1,
        }
    }

    /// Bytes (estimated) in the local tier of a `max_bytes` cache; entries otherwise.
    pub fn local_weighted_size(&self) -> u64 {
        self.local.as_ref().map_or(0, |l| l.tier.weighted_size())
    }

    fn stale_window(&self) -> Duration {
        self.fail_safe.as_ref().map_or(Duration::ZERO, |f| f.stale)
    }

    /// Observe and bypass modes: the body runs; nothing is served or stored.
    async fn unserved<R>(&self, key: &Key, body: impl Future<Output = R>) -> R {
        let start = Instant::now();
        let r = self.timed(body).await;
        if self.mode() == Mode::Observe {
            let ttl = self.ttl;
            let capacity = if self.tier.has_local() {
                self.capacity
            } else {
                DEFAULT_CAPACITY * 5
            };
            self.observer
                .get_or_init(|| Observer::new(ttl, capacity, self.tier))
                .record(&key.logical, start.elapsed());
        }
        r
    }

    fn local_peek(&self, key: &str) -> Option<(V, Meta)> {
        self.local.as_ref()?.tier.get(key)
    }

    fn local_hit(&self, key: &str) -> Option<(V, Meta)> {
        let hit = self.local_peek(key)?;
        self.counters.local_hits.add(1);
        Some(hit)
    }

    fn local_generation(&self, key: &str) -> u64 {
        self.local
            .as_ref()
            .map_or(0, |l| l.generations.current(key))
    }

    fn drop_local(&self, key: &str) {
        self.flights.detach(key);
        if let Some(local) = &self.local {
            local.generations.bump_with(key, || local.tier.remove(key));
        }
    }

    /// Inserts a value just stored (by a body or an explicit write, whose Redis write began
    /// at `start`): fresh for `min(local_ttl, ttl)`, kept as a stale fallback as long as
    /// Redis keeps it. Called under the key's generation stripe.
    #[allow(clippy::too_many_arguments)]
    fn insert_stored(
        &self,
        local: &LocalSide<V>,
        key: &Key,
        value: V,
        weight: u32,
        start: Instant,
        ttl: Duration,
        generation: u64,
        meta: Meta,
    ) {
        local.tier.insert(
            key.logical.clone(),
            value,
            start + self.local_ttl.min(ttl),
            start + ttl + self.stale_window(),
            generation,
            key.tags.clone().into(),
            weight,
            meta,
        );
    }

    async fn timed<R>(&self, body: impl Future<Output = R>) -> R {
        let start = Instant::now();
        let r = body
            .instrument(tracing::debug_span!("cache.body", cache = %self.name))
            .await;
        self.counters.body(start.elapsed());
        r
    }

    fn count_redis<T>(&self, res: Result<T, CacheError>) -> Result<T, CacheError> {
        if let Err(e) = &res {
            match e {
                CacheError::TooLarge { .. } => self.counters.oversize.add(1),
                CacheError::Encode(_) => {}
                CacheError::Timeout(_) => {
                    self.counters.redis_errors.add(1);
                    self.counters.redis_timeouts.add(1);
                }
                _ => self.counters.redis_errors.add(1),
            }
        }
        res
    }

    /// A miss's Redis side: read; with a lock, wait for the holder (polling, bounded by
    /// the lease) unless this call gets the lock. A stale fallback found on the way is kept.
    async fn redis_fill(&self, key: &Key, seen_local: u64, refresh: bool) -> Fill<V> {
        let Some(redis) = &self.redis else {
            return Fill::Compute {
                stamps: None,
                token: None,
                fallback: None,
            };
        };
        let Some(lease) = self.lock_lease else {
            return match self.redis_read(key, seen_local, None, refresh).await {
                Read::Found(v, meta) => Fill::Found(v, meta),
                Read::Missing { stamps, .. } => Fill::Compute {
                    stamps: Some(stamps),
                    token: None,
                    fallback: None,
                },
                Read::Stale { stamps, value } => Fill::Compute {
                    stamps: Some(stamps),
                    token: None,
                    fallback: Some(value),
                },
                Read::Failed => Fill::Compute {
                    stamps: None,
                    token: None,
                    fallback: None,
                },
            };
        };
        let mut fallback = None;
        let token = lock_token();
        let lease_ms = lease.as_millis().max(1) as u64;
        // Long enough for a crashed holder's lease to expire and a waiter to take over.
        let deadline = Instant::now() + lease * 2;
        let mut pause = Duration::from_millis(2);
        loop {
            let lock = Some((token.clone(), lease_ms));
            let (stamps, locked, unusable) =
                match self.redis_read(key, seen_local, lock, refresh).await {
                    Read::Found(v, meta) => return Fill::Found(v, meta),
                    Read::Missing {
                        stamps,
                        locked,
                        unusable,
                    } => (stamps, locked, unusable),
                    // A stale value blocks the script's lock attempt like any unusable value.
                    Read::Stale { stamps, value } => {
                        fallback = Some(value);
                        (stamps, false, true)
                    }
                    Read::Failed => {
                        return Fill::Compute {
                            stamps: None,
                            token: None,
                            fallback,
                        }
                    }
                };
            let locked = locked
                || (unusable
                    && matches!(
                        redis
                            .tier
                            .try_lock(redis.lock_key(key), token.clone(), lease_ms)
                            .await,
                        Ok(true)
                    ));
            if locked {
                return Fill::Compute {
                    stamps: Some(stamps),
                    token: Some(token),
                    fallback,
                };
            }
            if Instant::now() >= deadline {
                self.counters.lock_timeouts.add(1);
                return Fill::Compute {
                    stamps: Some(stamps),
                    token: None,
                    fallback,
                };
            }
            self.counters.lock_waits.add(1);
            redis.tier.sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// One read of Redis: the value and its stamps in one round trip. A value is used only
    /// if it decodes and its stamps are current; it is then promoted to the local tier for at
    /// most its remaining Redis lifetime (measured from before the request), unless a local
    /// write happened meanwhile.
    /// `refresh`: a value that is itself due for a refresh ahead is returned as stale.
    async fn redis_read(
        &self,
        key: &Key,
        seen_local: u64,
        lock: Option<(String, u64)>,
        refresh: bool,
    ) -> Read<V> {
        let Some(redis) = &self.redis else {
            return Read::Failed;
        };
        if redis
            .tier
            .pending
            .blocks(&key.logical, &key.tags, &self.name)
        {
            return Read::Failed;
        }
        let sent = Instant::now();
        let req = ReadRequest {
            value_key: redis.value_key(key),
            lock_key: redis.lock_key(key),
            try_lock: lock,
            stamp_keys: redis.stamp_keys(key),
        };
        let (bytes, pttl, stamps) = match redis.tier.read(req).await {
            Ok(Fetched::Found {
                bytes,
                pttl,
                stamps,
            }) => (bytes, pttl, stamps),
            Ok(Fetched::Missing { stamps, locked }) => {
                return Read::Missing {
                    stamps,
                    locked,
                    unusable: false,
                }
            }
            Ok(Fetched::WrongType { stamps }) => {
                self.counters.decode_failures.add(1);
                self.decode_log.warn(
                    &self.name,
                    "a redis key holds another Redis type; treated as a miss",
                );
                return Read::Missing {
                    stamps,
                    locked: false,
                    unusable: true,
                };
            }
            Err(e) => {
                let _ = self.count_redis::<()>(Err(e));
                return Read::Failed;
            }
        };
        let decoded = match (redis.decode)(
            &bytes,
            self.fingerprint,
            self.max_value_bytes,
            self.stale_window(),
        ) {
            Ok(d) => d,
            Err(e) => {
                self.counters.decode_failures.add(1);
                self.decode_log.warn(
                    &self.name,
                    &format!("undecodable redis value ({e}); treated as a miss"),
                );
                return Read::Missing {
                    stamps,
                    locked: false,
                    unusable: true,
                };
            }
        };
        if decoded.stamps != stamps {
            // Written before an invalidation, tag invalidation or clear that happened since.
            self.counters.stale_rejected.add(1);
            return Read::Missing {
                stamps,
                locked: false,
                unusable: true,
            };
        }
        let meta = Meta {
            created_unix_ms: decoded.created_unix_ms,
            expires_unix_ms: decoded.expires_unix_ms,
            etag: Some(decoded.etag),
        };
        if !decoded.fresh || (refresh && self.refresh_due(&meta)) {
            if let (Some(local), Some(pttl), false, Some(_)) =
                (&self.local, pttl, decoded.fresh, &self.fail_safe)
            {
                // Kept as this process's fallback (soft timeout, failing body); never a hit.
                let value = decoded.value.clone();
                let generation = stamps.first().copied().unwrap_or(0);
                let weight = self.weight_of(&key.logical, &value);
                local.generations.if_current(&key.logical, seen_local, || {
                    local.tier.insert(
                        key.logical.clone(),
                        value,
                        sent,
                        sent + pttl,
                        generation,
                        key.tags.clone().into(),
                        weight,
                        meta,
                    )
                });
            }
            return Read::Stale {
                stamps,
                value: (decoded.value, meta),
            };
        }
        self.counters.redis_hits.add(1);
        if let Some(local) = &self.local {
            // Redis keeps the value `stale` past its TTL: only the rest is fresh.
            let until_stale_end = pttl.unwrap_or(self.local_ttl + self.stale_window());
            let fresh = until_stale_end
                .saturating_sub(self.stale_window())
                .min(self.local_ttl);
            let value = decoded.value.clone();
            let generation = stamps.first().copied().unwrap_or(0);
            let weight = self.weight_of(&key.logical, &value);
            local.generations.if_current(&key.logical, seen_local, || {
                local.tier.insert(
                    key.logical.clone(),
                    value,
                    sent + fresh,
                    sent + until_stale_end.max(fresh),
                    generation,
                    key.tags.clone().into(),
                    weight,
                    meta,
                )
            });
        }
        Read::Found(decoded.value, meta)
    }

    async fn release(&self, key: &Key, token: Option<String>) {
        if let (Some(redis), Some(token)) = (&self.redis, token) {
            let res = redis.tier.release_lock(redis.lock_key(key), token).await;
            let _ = self.count_redis(res);
        }
    }

    /// Stores a body result: in Redis only if the stamps read at lookup are still current
    /// (one round trip, which also releases the lock), then locally only if Redis did not
    /// refuse it and no local write happened since the lookup. Returns Redis's answer and
    /// the value's metadata.
    async fn store_fresh(
        &self,
        key: &Key,
        value: V,
        negative: bool,
        seen_local: u64,
        stamps: Option<Vec<u64>>,
        token: Option<String>,
    ) -> (Result<(), CacheError>, Meta) {
        let ttl = self.entry_ttl(negative);
        // Taken before the Redis write: the local deadline then never passes Redis's expiry,
        // which starts when Redis receives the SET.
        let start = Instant::now();
        let mut meta = Meta::fresh(ttl, None);
        let mut res = Ok(());
        let mut generation = 0;
        if let (Some(redis), Some(stamps)) = (&self.redis, stamps) {
            generation = stamps.first().copied().unwrap_or(0);
            res = match self.encode_for_redis(&value, meta.created_unix_ms, ttl, &stamps) {
                Err(e) => {
                    self.release(key, token).await;
                    Err(e)
                }
                Ok(bytes) => {
                    meta.etag = codec::envelope_etag(&bytes);
                    let written = self
                        .write_entry(redis, key, bytes, ttl, stamps, token)
                        .await;
                    match written {
                        Ok(true) => Ok(()),
                        Ok(false) => {
                            // A write happened while the body ran: this value is stale.
                            self.counters.superseded.add(1);
                            return (Ok(()), meta);
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            res = self.count_redis(res);
        }
        if meta.etag.is_none() {
            meta.etag = self.etag.and_then(|etag_of| etag_of(&value));
        }
        // Weighed before taking the stripe: nothing but the insert runs under it.
        let weight = self.weight_of(&key.logical, &value);
        let stored = match &self.local {
            Some(local) => local.generations.if_current(&key.logical, seen_local, || {
                self.insert_stored(local, key, value, weight, start, ttl, generation, meta)
            }),
            None => res.is_ok() && self.redis.is_some(),
        };
        if stored {
            self.counters.populates.add(1);
        } else if self.local.is_some() {
            self.counters.superseded.add(1);
        }
        (res, meta)
    }

    /// An explicit write (populate, refresh): bumps the generation (evicting other
    /// processes' copies, failing in-flight stale writes), then writes under the new stamps.
    async fn store_explicit(&self, key: &Key, value: V, negative: bool) -> Result<(), CacheError> {
        let ttl = self.entry_ttl(negative);
        self.flights.detach(&key.logical);
        if let Some(local) = &self.local {
            local.generations.bump_with(&key.logical, || {});
        }
        let start = Instant::now();
        let mut meta = Meta::fresh(ttl, None);
        let mut generation = 0;
        let mut res = Ok(());
        if let Some(redis) = &self.redis {
            res = async {
                let stamps = redis
                    .tier
                    .bump_generation(
                        redis.stamp_keys(key),
                        redis.retention,
                        redis.channel.clone(),
                        bus::message_prefix(bus::Action::Updated, &key.logical),
                    )
                    .await?;
                generation = stamps.first().copied().unwrap_or(0);
                // Other caches of this process over the same key drop their copies.
                bus::apply_locally(bus::Action::Updated, &key.logical, generation);
                // Encoded after the bump: the envelope carries the new stamps. (If it is too
                // large, the bump alone still invalidated the old value everywhere.)
                let bytes = self.encode_for_redis(&value, meta.created_unix_ms, ttl, &stamps)?;
                meta.etag = codec::envelope_etag(&bytes);
                let written = self
                    .write_entry(redis, key, bytes, ttl, stamps, None)
                    .await?;
                if !written {
                    // Another write landed between the bump and the SET: it is newer.
                    self.counters.superseded.add(1);
                }
                Ok(())
            }
            .await;
            if matches!(
                res,
                Err(CacheError::Timeout(_)
                    | CacheError::Unavailable(_)
                    | CacheError::CircuitOpen
                    | CacheError::Redis(_))
            ) {
                // Other processes may still read the old value: invalidate it as soon as
                // Redis is back.
                self.defer_invalidation(redis, key);
            }
            res = self.count_redis(res);
        }
        if meta.etag.is_none() {
            meta.etag = self.etag.and_then(|etag_of| etag_of(&value));
        }
        if let Some(local) = &self.local {
            let weight = self.weight_of(&key.logical, &value);
            local.generations.bump_with(&key.logical, || {
                self.insert_stored(local, key, value, weight, start, ttl, generation, meta)
            });
        }
        self.counters.populates.add(1);
        res
    }

    /// The TTL of one new entry: `ttl` (or `none_ttl`), spread by ± `jitter` so that entries
    /// written together do not expire together.
    fn entry_ttl(&self, negative: bool) -> Duration {
        let base = if negative { self.none_ttl } else { self.ttl };
        if self.jitter <= 0.0 {
            return base;
        }
        let u = (random_u64() >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        let factor = 1.0 + self.jitter * (2.0 * u - 1.0);
        base.mul_f64(factor).max(Duration::from_millis(1))
    }

    /// The conditional write of an entry (kept `stale` past its TTL for the fail-safe).
    async fn write_entry(
        &self,
        redis: &RedisSide<V>,
        key: &Key,
        bytes: Vec<u8>,
        ttl: Duration,
        stamps: Vec<u64>,
        token: Option<String>,
    ) -> Result<bool, CacheError> {
        redis
            .tier
            .write_if(
                redis.value_key(key),
                redis.lock_key(key),
                bytes,
                ttl + self.stale_window(),
                redis.stamp_keys(key),
                stamps,
                token,
            )
            .await
    }

    fn encode_for_redis(
        &self,
        value: &V,
        created_unix_ms: u64,
        ttl: Duration,
        stamps: &[u64],
    ) -> Result<Vec<u8>, CacheError> {
        let Some(redis) = &self.redis else {
            return Err(CacheError::Encode("no redis tier".into()));
        };
        let bytes = (redis.encode)(value, self.fingerprint, created_unix_ms, ttl, stamps)
            .map_err(CacheError::Encode)?;
        if bytes.len() > self.max_value_bytes {
            return Err(CacheError::TooLarge {
                size: bytes.len(),
                limit: self.max_value_bytes,
            });
        }
        Ok(bytes)
    }
}

enum Read<V> {
    Found(V, Meta),
    /// `unusable`: a value was there but stale, undecodable or of another type, so the read
    /// script did not try the lock.
    Missing {
        stamps: Vec<u64>,
        locked: bool,
        unusable: bool,
    },
    /// Past its TTL but within `stale`, and current: a fallback, not a hit.
    Stale {
        stamps: Vec<u64>,
        value: (V, Meta),
    },
    Failed,
}

/// A fast, per-thread pseudo-random number (xorshift64*, seeded from the OS-randomised
/// `RandomState`): for TTL jitter only.
fn random_u64() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x5EED);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// Sleeps on the caller's Tokio runtime, or on the Redis thread, or (outside both) never
/// wakes, which disables the timeout rather than panicking.
async fn sleep_anywhere(d: Duration) {
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::time::sleep(d).await;
    } else if let Some(r) = &runtime().redis {
        r.sleep(d).await;
    } else {
        std::future::pending::<()>().await;
    }
}

/// A leader's answer that is a value (found, or a fallback): to the waiters, then to the
/// caller.
fn hand_over<R, S, V>(
    leader: Leader<'_, Got<V>>,
    value: V,
    meta: Meta,
    source: Source,
) -> (R, Meta, Source)
where
    S: Shape<R, Value = V>,
    V: Clone,
{
    leader.finish(Outcome::Value(Got {
        value: value.clone(),
        meta,
        source,
    }));
    (S::rebuild(value), meta, source)
}

/// Spawns on the caller's Tokio runtime, or the runtime's Redis thread; gives the task back
/// if there is neither.
fn spawn_task<F>(task: F) -> Result<tokio::task::JoinHandle<F::Output>, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        return Ok(handle.spawn(task));
    }
    match &runtime().redis {
        Some(r) => Ok(r.handle().spawn(task)),
        None => Err(task),
    }
}

/// A background load's result; its panic is the caller's panic, as if run inline.
fn joined<T>(done: Result<T, tokio::task::JoinError>) -> T {
    match done {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("cache_runtime: a background load was cancelled (runtime shut down)"),
    }
}

fn lock_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:016x}-{}",
        bus::instance_id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Invalidates every entry carrying `tag`, in every cache and process: local copies here
/// now, Redis entries by bumping the tag's version (one `INCR`; entries stamped with the old
/// version become misses), other processes' local copies through the bus; then, when an edge
/// is configured ([`edge`](crate::edge)), purges the tag there as a surrogate key.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// cache_runtime::invalidate_tag("user:42").await.unwrap();
/// # });
/// ```
pub async fn invalidate_tag(tag: &str) -> Result<(), CacheError> {
    let res = bump_everywhere(
        bus::Action::Tag,
        tag,
        format!("{}:tag:{tag}", runtime().config.key_prefix),
    )
    .await;
    // After the tiers: an edge that refetches now gets the new value.
    crate::edge::enqueue_tags(vec![tag.to_string()]);
    res
}

/// Applies a version bump here, then in Redis (deferred if Redis does not take it).
async fn bump_everywhere(action: bus::Action, target: &str, key: String) -> Result<(), CacheError> {
    bus::apply_locally(action, target, 0);
    let rt = runtime();
    let Some(r) = &rt.redis else {
        return Ok(());
    };
    let channel = bus::channel(&rt.config.key_prefix);
    let res = r
        .bump_version(
            key.clone(),
            channel.clone(),
            bus::message_prefix(action, target),
        )
        .await
        .map(drop);
    if res.is_ok() {
        // Again after Redis: a load here may have read the old version meanwhile (other
        // processes apply the bus message, which is published after the bump).
        bus::apply_locally(action, target, 0);
    }
    if res.is_err() {
        r.defer(PendingOp::Bump {
            key,
            channel,
            action,
            target: target.to_string(),
        });
    }
    res
}

/// Blocking [`invalidate_tag`].
pub fn invalidate_tag_blocking(tag: &str) -> Result<(), CacheError> {
    pollster::block_on(invalidate_tag(tag))
}

/// Clears every cache in every tier and process (one `INCR` of a global clear version; no
/// key scan, no `FLUSHALL`: old entries become misses and expire by their TTL).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// cache_runtime::clear_all().await.unwrap();
/// # });
/// ```
pub async fn clear_all() -> Result<(), CacheError> {
    bump_everywhere(
        bus::Action::ClearAll,
        "",
        format!("{}:clear", runtime().config.key_prefix),
    )
    .await
}

/// Blocking [`clear_all`].
pub fn clear_all_blocking() -> Result<(), CacheError> {
    pollster::block_on(clear_all())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::{OkOnly, Plain};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cache(name: &str) -> Cache<u64> {
        Cache::builder(name).ttl(Duration::from_secs(60)).build()
    }

    #[tokio::test]
    async fn invalidation_during_body_prevents_the_stale_store() {
        let c = Arc::new(cache("t::race"));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let c2 = c.clone();
        let reader = tokio::spawn(async move {
            c2.get_or_load::<_, Plain>(
                "k",
                async move {
                    started_tx.send(()).unwrap();
                    go_rx.await.unwrap();
                    1u64 // the "old row"
                },
                &Sharing::none(),
            )
            .await
        });
        started_rx.await.unwrap();
        c.invalidate("k").await.unwrap();
        go_tx.send(()).unwrap();
        assert_eq!(reader.await.unwrap(), 1);
        assert_eq!(
            c.lookup("k").await,
            None,
            "stale value stored after invalidate"
        );
    }

    #[tokio::test]
    async fn errors_are_not_cached_and_reach_waiters() {
        let c: Cache<u64> = cache("t::err");
        let runs = AtomicUsize::new(0);
        let sharing = Sharing::<Result<u64, String>>::new(
            |r| r.as_ref().err().map(|e| Box::new(e.clone()) as _),
            |b| b.downcast_ref::<String>().cloned().map(Err),
        );
        let r = c
            .get_or_load::<_, OkOnly>(
                "k",
                async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Err::<u64, _>("db down".to_string())
                },
                &sharing,
            )
            .await;
        assert_eq!(r, Err("db down".to_string()));
        assert_eq!(c.lookup("k").await, None);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
