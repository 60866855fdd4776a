//! [`Cache`]: one cached function's tiers, single-flight, generations and stats.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::codec::{self, DecodeError, Decoded};
use crate::config::runtime;
use crate::flight::{Flights, Joined, Outcome};
use crate::key::KeyWriter;
use crate::local::LocalTier;
use crate::redis_tier::{Fetched, LogLimiter, RedisTier};
use crate::shape::{Shape, Sharing};
use crate::stats::{self, Counters, Stats};
use crate::CacheError;

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

type EncodeFn<V> = fn(&V, u64, Duration) -> Result<Vec<u8>, String>;
type DecodeFn<V> = fn(&[u8], u64, usize) -> Result<Decoded<V>, DecodeError>;

struct RedisSide<V> {
    tier: &'static RedisTier,
    encode: EncodeFn<V>,
    decode: DecodeFn<V>,
}

/// Striped generation counters. Every explicit write (invalidate, populate, refresh, clear)
/// bumps the key's stripe under its lock; a body result or a Redis promotion is stored only
/// if the stripe did not move since the lookup started, so a value computed before an
/// invalidation is never stored after it.
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
        // FNV-1a: cheap and good enough to spread keys over stripes.
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
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

/// One cache: the tiers of one cached function. `#[cached]` creates one per function and
/// exposes it through `<fn>_cache()`; it can also be built and used by hand.
///
/// ```
/// use cache_runtime::{Cache, Plain, Sharing};
/// use std::time::Duration;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let cache: Cache<String> = Cache::builder("greetings").ttl(Duration::from_secs(60)).build();
/// let key = { let mut k = cache.key_writer(); k.literal("hello"); k.finish() };
/// let v = cache.get_or_load::<_, Plain>(key.clone(), async { "hi".to_string() }, &Sharing::none()).await;
/// assert_eq!(v, "hi");
/// assert_eq!(cache.lookup(&key).await.as_deref(), Some("hi"));
/// assert_eq!(cache.stats().body_calls, 1);
/// # });
/// ```
pub struct Cache<V> {
    name: String,
    tier: Tier,
    ttl: Duration,
    local_ttl: Duration,
    none_ttl: Duration,
    key_head: String,
    fingerprint: u64,
    max_value_bytes: usize,
    local: Option<LocalTier<V>>,
    redis: Option<RedisSide<V>>,
    counters: Arc<Counters>,
    flights: Flights<V>,
    generations: Generations,
    decode_log: LogLimiter,
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
    redis: Option<(EncodeFn<V>, DecodeFn<V>)>,
    _v: PhantomData<fn() -> V>,
}

/// Local copies in `local+redis` live at most this long unless `local_ttl` says otherwise.
pub const DEFAULT_LOCAL_TTL_CAP: Duration = Duration::from_secs(30);
/// Default maximum number of local entries.
pub const DEFAULT_CAPACITY: u64 = 10_000;

impl<V> CacheBuilder<V> {
    /// Time to live in Redis (and locally for a `local` cache). Millisecond precision.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Time to live of local copies in `local+redis` (clamped to `ttl`). Default:
    /// `min(ttl, 30s)`, which bounds how long another process's write stays invisible here.
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
}

impl<V: crate::__private::RedisValue> CacheBuilder<V> {
    /// Chooses the tiers (default [`Tier::Local`]). Redis tiers need a serde value.
    pub fn tier(mut self, tier: Tier) -> Self {
        self.tier = tier;
        self.redis = tier.has_redis().then_some((
            codec::encode::<V> as EncodeFn<V>,
            codec::decode::<V> as DecodeFn<V>,
        ));
        self
    }
}

impl<V: crate::__private::CacheValue> CacheBuilder<V> {
    /// Builds the cache and registers it (see [`caches`](crate::caches)). Reads the runtime
    /// configuration (initialising it from the environment if needed).
    pub fn build(self) -> Cache<V> {
        let rt = runtime();
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
        let counters = Arc::new(Counters::default());
        stats::register(stats::Registered {
            name: self.name.clone(),
            tier: self.tier,
            ttl,
            counters: counters.clone(),
        });
        Cache {
            key_head: format!(
                "{}:w{}:v{}:",
                rt.config.key_prefix,
                codec::WIRE_VERSION,
                self.version
            ),
            fingerprint: codec::fingerprint(std::any::type_name::<V>(), self.version),
            max_value_bytes: rt.config.max_value_bytes,
            local: self
                .tier
                .has_local()
                .then(|| LocalTier::new(&self.name, self.capacity)),
            name: self.name,
            tier: self.tier,
            ttl,
            local_ttl,
            none_ttl: self.none_ttl.unwrap_or(ttl).max(Duration::from_millis(1)),
            redis,
            counters,
            flights: Flights::new(),
            generations: Generations::new(),
            decode_log: LogLimiter::default(),
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
            redis: None,
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

    /// Starts a key: `{prefix}:w{wire}:v{version}:`. Generated code appends the template.
    pub fn key_writer(&self) -> KeyWriter {
        KeyWriter::with_head(&self.key_head)
    }
}

impl<V: Clone + Send + Sync + 'static> Cache<V> {
    /// Entries in the local tier (after pending maintenance).
    pub fn local_entry_count(&self) -> u64 {
        self.local.as_ref().map_or(0, LocalTier::entry_count)
    }

    /// Drops every local entry of this cache (Redis entries stay until their TTL).
    pub fn clear_local(&self) {
        self.generations.bump_all();
        if let Some(local) = &self.local {
            local.clear();
        }
    }

    /// The waterfall: local → Redis (promoting the value) → `body` (once per key across
    /// concurrent callers) → store in every tier. Redis failures are misses.
    pub async fn get_or_load<R, S>(
        &self,
        key: String,
        body: impl Future<Output = R>,
        sharing: &Sharing<R>,
    ) -> R
    where
        S: Shape<R, Value = V>,
    {
        if let Some(v) = self.local_hit(&key) {
            return S::rebuild(v);
        }
        let mut body = Some(body);
        let mut counted_miss = false;
        loop {
            match self.flights.join(&key) {
                Joined::Follower(flight) => {
                    if !counted_miss {
                        counted_miss = true;
                        Counters::add(&self.counters.misses, 1);
                        Counters::add(&self.counters.coalesced, 1);
                    }
                    if let Some(r) = flight.wait(S::rebuild, sharing.unshare).await {
                        return r;
                    }
                    // The leader gave up or could not share its result: try again.
                    if let Some(v) = self.local_peek(&key) {
                        return S::rebuild(v);
                    }
                }
                Joined::Leader(leader) => {
                    // A flight may have completed between our local miss and the join.
                    if let Some(v) = self.local_peek(&key) {
                        leader.finish(Outcome::Value(v.clone()));
                        return S::rebuild(v);
                    }
                    let seen = self.generations.current(&key);
                    if let Some(v) = self.redis_fetch(&key, seen).await {
                        leader.finish(Outcome::Value(v.clone()));
                        return S::rebuild(v);
                    }
                    if !counted_miss {
                        Counters::add(&self.counters.misses, 1);
                    }
                    let body = body.take().expect("the body future is used at most once");
                    let r = self.timed(body).await;
                    match S::cacheable(&r) {
                        Some((v, negative)) => {
                            // A failed Redis write is counted and logged; the caller still
                            // gets the value.
                            let _ = self.store(&key, v.clone(), negative, Some(seen)).await;
                            leader.finish(Outcome::Value(v));
                        }
                        None => leader.finish(match (sharing.share)(&r) {
                            Some(b) => Outcome::Shared(b),
                            None => Outcome::Unshareable,
                        }),
                    }
                    return r;
                }
            }
        }
    }

    /// [`get_or_load`](Self::get_or_load) for a blocking body, from synchronous code.
    pub fn get_or_load_blocking<R, S>(
        &self,
        key: String,
        body: impl FnOnce() -> R,
        sharing: &Sharing<R>,
    ) -> R
    where
        S: Shape<R, Value = V>,
    {
        if let Some(v) = self.local_hit(&key) {
            return S::rebuild(v);
        }
        pollster::block_on(self.get_or_load::<R, S>(key, async move { body() }, sharing))
    }

    /// The cached value, from the local tier or Redis (promoting it), without running the body.
    pub async fn lookup(&self, key: &str) -> Option<V> {
        if let Some(v) = self.local_hit(key) {
            return Some(v);
        }
        let seen = self.generations.current(key);
        let v = self.redis_fetch(key, seen).await;
        if v.is_none() {
            Counters::add(&self.counters.misses, 1);
        }
        v
    }

    /// Blocking [`lookup`](Self::lookup).
    pub fn lookup_blocking(&self, key: &str) -> Option<V> {
        pollster::block_on(self.lookup(key))
    }

    /// Removes the entry from every tier. The local tier is always cleared; the result says
    /// whether Redis confirmed the delete (`Ok` too when this cache has no Redis tier).
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        Counters::add(&self.counters.invalidations, 1);
        self.drop_local(key);
        let res = match &self.redis {
            Some(r) => r.tier.del(key.to_string()).await.map(drop),
            None => Ok(()),
        };
        // Again after Redis: a concurrent miss may have promoted the old Redis value meanwhile.
        self.drop_local(key);
        self.count_redis(res)
    }

    /// Blocking [`invalidate`](Self::invalidate).
    pub fn invalidate_blocking(&self, key: &str) -> Result<(), CacheError> {
        pollster::block_on(self.invalidate(key))
    }

    /// Writes `value` into every tier (write-through after an update). Local is always
    /// written; the result says whether Redis accepted it.
    pub async fn populate(&self, key: &str, value: V) -> Result<(), CacheError> {
        self.store(key, value, false, None).await
    }

    /// Blocking [`populate`](Self::populate).
    pub fn populate_blocking(&self, key: &str, value: V) -> Result<(), CacheError> {
        pollster::block_on(self.populate(key, value))
    }

    /// Runs `body` now (no lookup) and stores a cacheable result unconditionally.
    pub async fn refresh<R, S>(&self, key: &str, body: impl Future<Output = R>) -> R
    where
        S: Shape<R, Value = V>,
    {
        let r = self.timed(body).await;
        if let Some((v, negative)) = S::cacheable(&r) {
            let _ = self.store(key, v, negative, None).await;
        }
        r
    }

    /// Blocking [`refresh`](Self::refresh).
    pub fn refresh_blocking<R, S>(&self, key: &str, body: impl FnOnce() -> R) -> R
    where
        S: Shape<R, Value = V>,
    {
        pollster::block_on(self.refresh::<R, S>(key, async move { body() }))
    }

    fn local_peek(&self, key: &str) -> Option<V> {
        self.local.as_ref()?.get(key)
    }

    fn local_hit(&self, key: &str) -> Option<V> {
        let v = self.local_peek(key)?;
        Counters::add(&self.counters.local_hits, 1);
        Some(v)
    }

    fn drop_local(&self, key: &str) {
        self.generations.bump_with(key, || {
            if let Some(local) = &self.local {
                local.remove(key);
            }
        });
    }

    async fn timed<R>(&self, body: impl Future<Output = R>) -> R {
        let start = Instant::now();
        let r = body.await;
        Counters::add(&self.counters.body_calls, 1);
        Counters::add(
            &self.counters.body_nanos,
            start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64,
        );
        r
    }

    fn count_redis(&self, res: Result<(), CacheError>) -> Result<(), CacheError> {
        if let Err(e) = &res {
            match e {
                CacheError::TooLarge { .. } => Counters::add(&self.counters.oversize, 1),
                CacheError::Encode(_) => {}
                _ => Counters::add(&self.counters.redis_errors, 1),
            }
        }
        res
    }

    /// Reads Redis; a decodable value is promoted to the local tier for at most its remaining
    /// Redis lifetime (measured from before the request), if no write happened meanwhile.
    async fn redis_fetch(&self, key: &str, seen: u64) -> Option<V> {
        let redis = self.redis.as_ref()?;
        let sent = Instant::now();
        let fetched = redis.tier.get(key.to_string()).await;
        let (bytes, pttl) = match fetched {
            Ok(Fetched::Found(bytes, pttl)) => (bytes, pttl),
            Ok(Fetched::Missing) => return None,
            Ok(Fetched::WrongType) => {
                Counters::add(&self.counters.decode_failures, 1);
                self.decode_log.warn(
                    &self.name,
                    "a redis key holds another Redis type; treated as a miss",
                );
                return None;
            }
            Err(e) => {
                let _ = self.count_redis(Err(e));
                return None;
            }
        };
        let decoded = match (redis.decode)(&bytes, self.fingerprint, self.max_value_bytes) {
            Ok(d) => d,
            Err(e) => {
                Counters::add(&self.counters.decode_failures, 1);
                self.decode_log.warn(
                    &self.name,
                    &format!("undecodable redis value ({e}); treated as a miss"),
                );
                return None;
            }
        };
        Counters::add(&self.counters.redis_hits, 1);
        if let Some(local) = &self.local {
            let life = pttl.unwrap_or(self.local_ttl).min(self.local_ttl);
            let value = decoded.value.clone();
            self.generations.if_current(key, seen, || {
                local.insert(key.to_string(), value, sent + life)
            });
        }
        Some(decoded.value)
    }

    /// Stores in Redis, then locally. `seen: Some(g)`: a body result, stored only if no write
    /// happened since generation `g`. `None`: an explicit write, which bumps the generation.
    async fn store(
        &self,
        key: &str,
        value: V,
        negative: bool,
        seen: Option<u64>,
    ) -> Result<(), CacheError> {
        let ttl = if negative { self.none_ttl } else { self.ttl };
        if let Some(seen) = seen {
            if self.generations.current(key) != seen {
                return Ok(());
            }
        } else {
            self.generations.bump_with(key, || {});
        }
        // Taken before the Redis write: the local deadline then never passes Redis's expiry,
        // which starts when Redis receives the SET.
        let start = Instant::now();
        let mut res = Ok(());
        if let Some(redis) = &self.redis {
            res = match (redis.encode)(&value, self.fingerprint, ttl) {
                Err(e) => Err(CacheError::Encode(e)),
                Ok(bytes) if bytes.len() > self.max_value_bytes => Err(CacheError::TooLarge {
                    size: bytes.len(),
                    limit: self.max_value_bytes,
                }),
                Ok(bytes) => redis.tier.set_px(key.to_string(), bytes, ttl).await,
            };
            res = self.count_redis(res);
        }
        let local_life = if self.redis.is_some() || self.tier == Tier::LocalRedis {
            self.local_ttl.min(ttl)
        } else {
            ttl
        };
        let deadline = start + local_life;
        let write_local = || {
            if let Some(local) = &self.local {
                local.insert(key.to_string(), value, deadline);
            }
        };
        let stored = match seen {
            Some(seen) => self.generations.if_current(key, seen, write_local),
            None => {
                self.generations.bump_with(key, write_local);
                true
            }
        };
        if stored {
            Counters::add(&self.counters.populates, 1);
        }
        res
    }
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
                "k".into(),
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
                "k".into(),
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
