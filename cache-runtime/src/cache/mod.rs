//! [`Cache`]: one cached function's tiers, single-flight, generations and stats. This file is
//! the facade (the type, its public API and docs); the behaviour lives beside it:
//!
//! | module | concept |
//! |---|---|
//! | `builder` | [`CacheBuilder`]: options, and how they become a cache |
//! | `flow` | the waterfall: `load` → `lead` (Redis, body, store), `hand_over`, the stores |
//! | `redis_side` | the Redis key scheme, reads with stamps and lock, encoding, conditional stores, invalidations, deferred writes |
//! | `local_side` | generations, the local tier glue (hit, store, promote), the bus targets |
//! | `background` | fail-safe, soft timeout, refresh ahead, spawning tasks and timers |

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::bus;
use crate::entry::{ETag, Meta, Source};
use crate::error::CacheError;
use crate::flight::Flights;
use crate::key::{IntoKey, KeyWriter};
use crate::log_limit::LogLimiter;
use crate::observe::{Mode, ObserveReport, Observer};
use crate::shape::{EntryShape, Shape, Sharing};
use crate::stats::{Counters, Stats};
use crate::tier::{Key, Tier};

mod background;
mod builder;
mod flow;
mod local_side;
mod redis_side;

pub use builder::{CacheBuilder, DEFAULT_CAPACITY, DEFAULT_LOCAL_TTL_CAP, DEFAULT_LOCK_LEASE};

use background::FailSafe;
use flow::Got;
use local_side::{FlightSide, LocalSide};
use redis_side::{Read, RedisSide};

type EtagFn<V> = fn(&V) -> Option<ETag>;
type WeighFn<V> = fn(&V) -> usize;

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
    /// What `clear()` covers (see `CacheBuilder::key_space`).
    clear_scope: String,
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
    /// Set by the first call that returns an [`Entry`](crate::Entry): until then no read or
    /// store hashes a value for its ETag (a hash of the whole payload, most of a hit's
    /// cost for large values), and an entry call that meets a value stored without one
    /// computes it (see `flow::etag_for_entry`).
    etags_wanted: AtomicBool,
    jitter: f64,
    fail_safe: Option<FailSafe>,
    /// `soft_timeout`: with a stale value at hand, a slower body finishes in the background.
    soft_timeout: Option<Duration>,
    /// `refresh_ahead`: the fraction of an entry's TTL after which a read refreshes it.
    refresh_ahead: Option<f64>,
}

impl<V> Cache<V> {
    /// A builder for a cache named `name` (the name used in stats and logs).
    pub fn builder(name: impl Into<String>) -> CacheBuilder<V> {
        CacheBuilder::new(name.into())
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What [`clear`](Self::clear) covers in every process: the key template and value
    /// fingerprint when built with [`key_space`](CacheBuilder::key_space) (every cache over
    /// the same Redis entries), else the cache's name.
    ///
    /// ```
    /// let c = cache_runtime::Cache::<u64>::builder("app::n").build();
    /// assert_eq!(c.clear_scope(), "app::n");
    /// ```
    pub fn clear_scope(&self) -> &str {
        &self.clear_scope
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
    #[inline]
    pub fn key_writer(&self) -> KeyWriter {
        KeyWriter::with_head("")
    }

    /// The Redis key of `key`'s value (`{{prefix}:{bucket}}:v2:{schema}:{key}`, `schema` as
    /// [`key_schema`](Self::key_schema)), if this cache uses Redis. For operators and tests.
    ///
    /// ```
    /// let cache = cache_runtime::Cache::<u64>::builder("doc::redis_key")
    ///     .tier(cache_runtime::Tier::Redis)
    ///     .build();
    /// // `None` where no Redis is configured (the cache then has no Redis tier).
    /// if let Some(key) = cache.redis_key("user:1") {
    ///     let schema = cache.key_schema().unwrap();
    ///     assert!(key.ends_with(&format!(":v2:{schema}:user:1")));
    /// }
    /// ```
    pub fn redis_key(&self, key: &str) -> Option<String> {
        self.redis.as_ref().map(|r| r.keys.value(&Key::new(key)))
    }

    /// What this cache's Redis value and lock keys name of its value type, if it uses Redis:
    /// its `version` and a digest of its type's fingerprint
    /// ([`KeySchema`](crate::key::KeySchema)). With
    /// [`key::redis_keys`](crate::key::redis_keys) it gives every Redis key of an entry.
    ///
    /// ```
    /// let cache = cache_runtime::Cache::<u64>::builder("doc::key_schema")
    ///     .tier(cache_runtime::Tier::Redis)
    ///     .build();
    /// if let Some(schema) = cache.key_schema() {
    ///     assert_eq!(schema, cache_runtime::key::KeySchema::of::<u64>(1), "version 1 of a u64");
    /// }
    /// ```
    pub fn key_schema(&self) -> Option<crate::key::KeySchema> {
        self.redis.as_ref().map(|r| r.keys.schema)
    }
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
    /// Redis entries by deleting the cache's clear token (one `DEL`, no key scan), and
    /// other processes' local copies through the bus.
    pub async fn clear(&self) -> Result<(), CacheError> {
        if self.redis.is_none() {
            self.clear_local();
            return Ok(());
        }
        self.redis_clear().await
    }

    /// Blocking [`clear`](Self::clear).
    pub fn clear_blocking(&self) -> Result<(), CacheError> {
        crate::blocking::block_on(self.clear())
    }

    /// The waterfall: local → Redis (promoting the value) → `body` (once per key across
    /// concurrent callers in this process, and across processes with a lock) → store in every
    /// tier. Redis failures are misses. The miss path is part of the returned future (no
    /// allocation; several kilobytes of state): what `#[cached]` calls for a `tier = "redis"`
    /// `async fn`. With a local tier, [`get_or_load_with`](Self::get_or_load_with) keeps a
    /// hit's future small.
    pub async fn get_or_load<R, S>(
        &self,
        key: impl IntoKey,
        body: impl Future<Output = R>,
        sharing: &Sharing<R>,
    ) -> R
    where
        S: Shape<R, Value = V>,
    {
        // The key stays a stack buffer through a local hit; only a miss owns it.
        let normal = self.mode.load(Ordering::Relaxed) == 0;
        if normal {
            if let Some(hit) = self.local_hit_fresh(key.logical()) {
                return S::rebuild(hit.value().clone());
            }
        }
        self.load_unhit::<R, S, _>(&key.into_key(), body, sharing, normal)
            .await
            .0
    }

    /// [`get_or_load`](Self::get_or_load) with the body's future made by `make_body`, only
    /// on a miss: what `#[cached]` calls for an `async fn` with a local tier. A hit never
    /// builds the body's future, and the miss path (the flight, Redis, the body, the store)
    /// lives in a box of its own, so the future this returns, and every future that awaits
    /// it, stays a few hundred bytes whatever the body holds: a local hit does not move
    /// kilobytes of state a miss would need. The price is one allocation per call that gets
    /// past the local tier; [`get_or_load`](Self::get_or_load) keeps the miss path inline
    /// instead (no allocation, a future of several kilobytes), which suits a cache without a
    /// local tier, whose every call gets past it.
    ///
    /// ```
    /// use cache_runtime::{Cache, Plain, Sharing};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache: Cache<u64> = Cache::builder("doc::with").build();
    /// let id = 7;
    /// let v = cache
    ///     .get_or_load_with::<_, Plain, _, _>("k", move || async move { id * 2 }, &Sharing::none())
    ///     .await;
    /// assert_eq!(v, 14);
    /// # });
    /// ```
    pub async fn get_or_load_with<R, S, F, B>(
        &self,
        key: impl IntoKey,
        make_body: F,
        sharing: &Sharing<R>,
    ) -> R
    where
        S: Shape<R, Value = V>,
        F: FnOnce() -> B,
        B: Future<Output = R>,
    {
        // The key stays a stack buffer through a local hit; only a miss owns it.
        let normal = self.mode.load(Ordering::Relaxed) == 0;
        if normal {
            if let Some(hit) = self.local_hit_fresh(key.logical()) {
                return S::rebuild(hit.value().clone());
            }
        }
        let key = key.into_key();
        Box::pin(self.load_unhit::<R, S, _>(&key, make_body(), sharing, normal))
            .await
            .0
    }

    /// The rest of a call whose local hit (`normal` mode) missed: the waterfall past the
    /// local tier, or the whole of it outside normal mode.
    async fn load_unhit<R, S, B>(
        &self,
        key: &Key,
        body: B,
        sharing: &Sharing<R>,
        normal: bool,
    ) -> (R, Meta, Source)
    where
        S: Shape<R, Value = V>,
        B: Future<Output = R>,
    {
        let body = &mut Some(body);
        match normal {
            true => self.load_missed::<R, S, B>(key, body, sharing).await,
            false => self.load::<R, S, B>(key, body, sharing).await,
        }
    }

    /// A blocking call past its hit check: apart, so that the hit (inlined into the caller)
    /// does not carry the miss's large future in its frame.
    #[inline(never)]
    fn load_unhit_blocking<R, S>(
        &self,
        key: impl IntoKey,
        body: impl FnOnce() -> R,
        sharing: &Sharing<R>,
        normal: bool,
    ) -> R
    where
        S: Shape<R, Value = V>,
    {
        if normal && self.leads_blocking() {
            // An untagged key stays where the caller wrote it: the local tier copies it
            // (inline up to 23 bytes), nothing else needs it owned.
            return crate::blocking::on_stack(|| {
                if key.surely_untagged() {
                    self.load_missed_blocking::<R, S>((key.logical(), &[]), body, sharing)
                } else {
                    let key = key.into_key();
                    let named = (key.logical.as_str(), key.tags.as_slice());
                    self.load_missed_blocking::<R, S>(named, body, sharing)
                }
            })
            .0;
        }
        let key = key.into_key();
        crate::blocking::block_on(self.load_unhit::<R, S, _>(
            &key,
            async move { body() },
            sharing,
            normal,
        ))
        .0
    }

    /// [`get_or_load`](Self::get_or_load), with the value wrapped in an [`Entry`](crate::Entry):
    /// its ETag, creation time, tags and where it came from, for HTTP responses. A hit
    /// returns what was computed when the value was stored or read from Redis; nothing is
    /// hashed again. (Until a cache's first entry call, no read or store hashes values for
    /// their ETag; a value loaded before it is hashed by the entry calls that meet it.)
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
        key: impl IntoKey,
        body: impl Future<Output = R>,
        sharing: &Sharing<R>,
    ) -> S::Entries
    where
        S: EntryShape<R, Value = V>,
    {
        self.get_or_load_entry_with::<R, S, _, _>(key, move || body, sharing)
            .await
    }

    /// [`get_or_load_entry`](Self::get_or_load_entry) with the body's future made by
    /// `make_body`, only on a miss, and the miss path boxed (see
    /// [`get_or_load_with`](Self::get_or_load_with)): what `#[cached]` calls for the `_entry`
    /// function of an `async fn`.
    ///
    /// ```
    /// use cache_runtime::{Cache, Plain, Sharing, Source};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache: Cache<u32> = Cache::builder("doc::entry_with").etag().build();
    /// let first = cache.get_or_load_entry_with::<_, Plain, _, _>("k", || async { 7 }, &Sharing::none()).await;
    /// let again = cache.get_or_load_entry_with::<_, Plain, _, _>("k", || async { 8 }, &Sharing::none()).await;
    /// assert_eq!((*first.value(), *again.value()), (7, 7));
    /// assert_eq!((first.source(), again.source()), (Source::Body, Source::Local));
    /// # });
    /// ```
    pub async fn get_or_load_entry_with<R, S, F, B>(
        &self,
        key: impl IntoKey,
        make_body: F,
        sharing: &Sharing<R>,
    ) -> S::Entries
    where
        S: EntryShape<R, Value = V>,
        F: FnOnce() -> B,
        B: Future<Output = R>,
    {
        self.want_etags();
        let normal = self.mode.load(Ordering::Relaxed) == 0;
        let key = match self.entry_local_hit::<R, S, _>(key, normal) {
            Ok(hit) => return hit,
            Err(key) => key.into_key(),
        };
        let (r, mut meta, source) =
            Box::pin(self.load_unhit::<R, S, B>(&key, make_body(), sharing, normal)).await;
        self.etag_for_entry::<R, S>(&r, &mut meta);
        S::with_entry(r, meta, crate::key::shared_tags(key.tags), source)
    }

    /// An `_entry` call's local hit, read with the key where it was written (no owned key,
    /// no tags unless it has some); the key back on a miss.
    fn entry_local_hit<R, S, K>(&self, key: K, normal: bool) -> Result<S::Entries, K>
    where
        S: EntryShape<R, Value = V>,
        K: IntoKey,
    {
        let Some((v, mut meta)) = normal.then(|| self.local_hit(key.logical())).flatten() else {
            return Err(key);
        };
        let r = S::rebuild(v);
        self.etag_for_entry::<R, S>(&r, &mut meta);
        Ok(S::with_entry(r, meta, key.into_tags(), Source::Local))
    }

    /// Blocking [`get_or_load_entry`](Self::get_or_load_entry).
    #[inline]
    pub fn get_or_load_entry_blocking<R, S>(
        &self,
        key: impl IntoKey,
        body: impl FnOnce() -> R,
        sharing: &Sharing<R>,
    ) -> S::Entries
    where
        S: EntryShape<R, Value = V>,
    {
        // A local hit returns before `block_on` (and its waker) is set up.
        self.want_etags();
        let normal = self.mode.load(Ordering::Relaxed) == 0;
        let key = match self.entry_local_hit::<R, S, _>(key, normal) {
            Ok(hit) => return hit,
            Err(key) => key,
        };
        self.load_entry_unhit_blocking::<R, S>(key, body, sharing, normal)
    }

    /// A blocking `_entry` call past its hit check (apart, as
    /// [`load_unhit_blocking`](Self::load_unhit_blocking)).
    #[inline(never)]
    fn load_entry_unhit_blocking<R, S>(
        &self,
        key: impl IntoKey,
        body: impl FnOnce() -> R,
        sharing: &Sharing<R>,
        normal: bool,
    ) -> S::Entries
    where
        S: EntryShape<R, Value = V>,
    {
        if !(normal && self.leads_blocking()) {
            return crate::blocking::block_on(self.get_or_load_entry::<R, S>(
                key,
                async move { body() },
                sharing,
            ));
        }
        let ((r, mut meta, source), tags) = crate::blocking::on_stack(|| {
            if key.surely_untagged() {
                let out = self.load_missed_blocking::<R, S>((key.logical(), &[]), body, sharing);
                (out, key.into_tags())
            } else {
                let key = key.into_key();
                let named = (key.logical.as_str(), key.tags.as_slice());
                let out = self.load_missed_blocking::<R, S>(named, body, sharing);
                (out, crate::key::shared_tags(key.tags))
            }
        });
        self.etag_for_entry::<R, S>(&r, &mut meta);
        S::with_entry(r, meta, tags, source)
    }

    /// Whether a blocking call's miss runs on the caller's stack, without a future
    /// ([`load_missed_blocking`](Self::load_missed_blocking)): a cache without Redis, whose
    /// body runs without the fail-safe, has nothing to wait for but a concurrent leader.
    fn leads_blocking(&self) -> bool {
        self.redis.is_none() && self.fail_safe.is_none()
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
        R: 'static,
        B: Future<Output = R> + Send + 'static,
    {
        self.get_or_load_detached_with::<R, S, _, B>(key, move || body, sharing)
            .await
    }

    /// [`get_or_load_detached`](Self::get_or_load_detached) with the body's future made by
    /// `make_body`, only when it runs (a miss, or a refresh ahead started by a hit): what
    /// `#[cached]` calls for an `async fn` with `soft_timeout` or `refresh_ahead`. As with
    /// [`get_or_load_with`](Self::get_or_load_with), the future stays small whatever the body
    /// holds.
    ///
    /// ```
    /// use cache_runtime::{Cache, Plain, Sharing};
    /// use std::sync::OnceLock;
    /// use std::time::Duration;
    ///
    /// fn cache() -> &'static Cache<u64> {
    ///     static C: OnceLock<Cache<u64>> = OnceLock::new();
    ///     C.get_or_init(|| Cache::builder("doc::detached_with").ttl(Duration::from_secs(60)).refresh_ahead(0.8).build())
    /// }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let id = 21;
    /// let v = cache()
    ///     .get_or_load_detached_with::<_, Plain, _, _>("k".into(), move || async move { id * 2 }, Sharing::none())
    ///     .await;
    /// assert_eq!(v, 42);
    /// # });
    /// ```
    pub async fn get_or_load_detached_with<R, S, F, B>(
        &'static self,
        key: Key,
        make_body: F,
        sharing: Sharing<R>,
    ) -> R
    where
        S: Shape<R, Value = V> + 'static,
        R: 'static,
        F: FnOnce() -> B + Send + 'static,
        B: Future<Output = R> + Send + 'static,
    {
        self.load_detached::<R, S, F, B>(key, make_body, sharing)
            .await
            .0
    }

    /// [`get_or_load_detached_with`](Self::get_or_load_detached_with) with the key as
    /// generated code writes it ([`IntoKey`]: a [`KeyWriter`](crate::key::KeyWriter) on the
    /// caller's stack): a local hit reads it in place, and only a miss or a refresh ahead
    /// builds the owned [`Key`](crate::Key).
    #[doc(hidden)]
    pub async fn get_or_load_detached_keyed<R, S, F, B>(
        &'static self,
        key: impl IntoKey,
        make_body: F,
        sharing: Sharing<R>,
    ) -> R
    where
        S: Shape<R, Value = V> + 'static,
        R: 'static,
        F: FnOnce() -> B + Send + 'static,
        B: Future<Output = R> + Send + 'static,
    {
        self.load_detached::<R, S, F, B>(key, make_body, sharing)
            .await
            .0
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
        R: 'static,
        B: Future<Output = R> + Send + 'static,
    {
        self.get_or_load_entry_detached_with::<R, S, _, B>(key, move || body, sharing)
            .await
    }

    /// [`get_or_load_entry_detached`](Self::get_or_load_entry_detached) with the body's
    /// future made only when it runs (see
    /// [`get_or_load_detached_with`](Self::get_or_load_detached_with)).
    ///
    /// ```
    /// use cache_runtime::{Cache, Plain, Sharing, Source};
    /// use std::sync::OnceLock;
    ///
    /// fn cache() -> &'static Cache<u64> {
    ///     static C: OnceLock<Cache<u64>> = OnceLock::new();
    ///     C.get_or_init(|| Cache::builder("doc::entry_detached_with").refresh_ahead(0.8).build())
    /// }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let load = || cache().get_or_load_entry_detached_with::<_, Plain, _, _>(
    ///     "k".into(), || async { 42 }, Sharing::none());
    /// assert_eq!(load().await.source(), Source::Body);
    /// assert_eq!((*load().await.value(), load().await.source()), (42, Source::Local));
    /// # });
    /// ```
    pub async fn get_or_load_entry_detached_with<R, S, F, B>(
        &'static self,
        key: Key,
        make_body: F,
        sharing: Sharing<R>,
    ) -> S::Entries
    where
        S: EntryShape<R, Value = V> + 'static,
        R: 'static,
        F: FnOnce() -> B + Send + 'static,
        B: Future<Output = R> + Send + 'static,
    {
        self.want_etags();
        let tags = crate::key::shared_tags(key.tags.clone());
        let (r, mut meta, source) = self
            .load_detached::<R, S, F, B>(key, make_body, sharing)
            .await;
        self.etag_for_entry::<R, S>(&r, &mut meta);
        S::with_entry(r, meta, tags, source)
    }

    /// [`get_or_load`](Self::get_or_load) for a blocking body, from synchronous code.
    #[inline]
    pub fn get_or_load_blocking<R, S>(
        &self,
        key: impl IntoKey,
        body: impl FnOnce() -> R,
        sharing: &Sharing<R>,
    ) -> R
    where
        S: Shape<R, Value = V>,
    {
        // A hit reads the key where it was written (a stack buffer, for generated code) and
        // returns before the miss path's frame is set up.
        let normal = self.mode.load(Ordering::Relaxed) == 0;
        if normal {
            if let Some(hit) = self.local_hit_fresh(key.logical()) {
                return S::rebuild(hit.value().clone());
            }
        }
        self.load_unhit_blocking::<R, S>(key, body, sharing, normal)
    }

    /// The cached value, from the local tier or Redis (promoting it), without running the body.
    pub async fn lookup(&self, key: impl IntoKey) -> Option<V> {
        if let Some((v, _)) = self.local_hit(key.logical()) {
            return Some(v);
        }
        let key = key.into_key();
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
    pub fn lookup_blocking(&self, key: impl IntoKey) -> Option<V> {
        crate::blocking::block_on(self.lookup(key))
    }

    /// Removes the entry from every tier and, through the bus, from other processes' local
    /// tiers. The local tier is always cleared; the result says whether Redis confirmed
    /// (`Ok` too when this cache has no Redis tier). One round trip.
    pub async fn invalidate(&self, key: impl IntoKey) -> Result<(), CacheError> {
        let key = key.into_key();
        self.counters.invalidations.add(1);
        self.drop_local(&key.logical);
        let res = self.redis_invalidate(&key).await;
        // Again after Redis: a concurrent miss may have promoted the old value meanwhile.
        self.drop_local(&key.logical);
        res
    }

    /// Blocking [`invalidate`](Self::invalidate).
    pub fn invalidate_blocking(&self, key: impl IntoKey) -> Result<(), CacheError> {
        crate::blocking::block_on(self.invalidate(key))
    }

    /// Writes `value` into every tier (write-through after an update) and evicts other
    /// processes' local copies. Local is always written; the result says whether Redis
    /// accepted it. Two round trips.
    pub async fn populate(&self, key: impl IntoKey, value: V) -> Result<(), CacheError> {
        self.store_explicit(&key.into_key(), value, false).await
    }

    /// Blocking [`populate`](Self::populate).
    pub fn populate_blocking(&self, key: impl IntoKey, value: V) -> Result<(), CacheError> {
        crate::blocking::block_on(self.populate(key, value))
    }

    /// Runs `body` now (no lookup) and stores a cacheable result like [`populate`](Self::populate).
    pub async fn refresh<R, S>(&self, key: impl IntoKey, body: impl Future<Output = R>) -> R
    where
        S: Shape<R, Value = V>,
    {
        let key = key.into_key();
        let r = self.timed(body).await;
        // Only the value is held across the store (see `Shape::into_cacheable`).
        let (v, negative) = match S::into_cacheable(r) {
            Ok(cacheable) => cacheable,
            Err(r) => return r,
        };
        let _ = self.store_explicit(&key, v.clone(), negative).await;
        S::rebuild(v)
    }

    /// Blocking [`refresh`](Self::refresh).
    pub fn refresh_blocking<R, S>(&self, key: impl IntoKey, body: impl FnOnce() -> R) -> R
    where
        S: Shape<R, Value = V>,
    {
        crate::blocking::block_on(self.refresh::<R, S>(key, async move { body() }))
    }

    /// The local tier's copy of `key`, if any: no Redis, no stats. For tests and debugging.
    pub fn peek_local(&self, key: &str) -> Option<V> {
        self.local_peek(key).map(|(v, _)| v)
    }

    /// Bytes (estimated) in the local tier of a `max_bytes` cache; entries otherwise.
    pub fn local_weighted_size(&self) -> u64 {
        self.local.as_ref().map_or(0, |l| l.tier.weighted_size())
    }

    /// Counts a failed Redis operation by kind; passes the result through.
    fn count_redis<T>(&self, res: Result<T, CacheError>) -> Result<T, CacheError> {
        if let Err(e) = &res {
            self.counters.redis_failed(e);
            if let CacheError::Encode(e) = e {
                self.decode_log.warn_error(
                    &self.name,
                    "value does not encode for redis; kept out of redis (see the README on \
                     serde attributes)",
                    e,
                );
            }
        }
        res
    }
}

/// Invalidates every entry carrying `tag`, in every cache and process: local copies here
/// now, Redis entries by deleting the tag's random token (one `DEL`; entries stamped with
/// the old token become misses, and the next token is a new random number, so a restart,
/// flush or eviction can never bring the old one back), other processes' local copies
/// through the bus; then, when an edge
/// is configured ([`edge`](crate::edge)), purges the tag there as a surrogate key.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// cache_runtime::invalidate_tag("user:42").await.unwrap();
/// # });
/// ```
pub async fn invalidate_tag(tag: &str) -> Result<(), CacheError> {
    let res = redis_side::invalidate_scope_everywhere(crate::key::Scope::Tag(tag)).await;
    // After the tiers: an edge that refetches now gets the new value.
    crate::edge::enqueue_tags(vec![tag.to_string()]);
    res
}

/// Blocking [`invalidate_tag`].
pub fn invalidate_tag_blocking(tag: &str) -> Result<(), CacheError> {
    crate::blocking::block_on(invalidate_tag(tag))
}

/// Clears every cache in every tier and process (one `DEL` of the global clear token; no
/// key scan, no `FLUSHALL`: old entries become misses and expire by their TTL).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// cache_runtime::clear_all().await.unwrap();
/// # });
/// ```
pub async fn clear_all() -> Result<(), CacheError> {
    redis_side::invalidate_scope_everywhere(crate::key::Scope::All).await
}

/// Blocking [`clear_all`].
pub fn clear_all_blocking() -> Result<(), CacheError> {
    crate::blocking::block_on(clear_all())
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

    /// A blocking miss of a local cache leads on the caller's stack (`load_missed_blocking`):
    /// callers released together share one body run. The body returns only once every other
    /// caller has joined its flight (the `joined` counter), so none can start after it.
    #[test]
    fn a_blocking_stampede_runs_the_body_once() {
        const CALLERS: u64 = 8;
        let c = cache("t::blocking_stampede");
        let runs = AtomicUsize::new(0);
        let start = std::sync::Barrier::new(CALLERS as usize);
        std::thread::scope(|s| {
            for _ in 0..CALLERS {
                s.spawn(|| {
                    start.wait();
                    let v = c.get_or_load_blocking::<_, Plain>(
                        "k",
                        || {
                            runs.fetch_add(1, Ordering::SeqCst);
                            while c.stats().joined < CALLERS - 1 {
                                std::thread::yield_now();
                            }
                            5u64
                        },
                        &Sharing::none(),
                    );
                    assert_eq!(v, 5);
                });
            }
        });
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let stats = c.stats();
        assert_eq!(
            (
                stats.misses,
                stats.coalesced,
                stats.body_calls,
                stats.populates
            ),
            (CALLERS, CALLERS - 1, 1, 1)
        );
        assert_eq!(c.lookup_blocking("k"), Some(5));
    }

    /// The blocking leader's store is checked against the key's generation as the
    /// asynchronous one is: an invalidation while its body runs keeps its result out.
    #[test]
    fn a_blocking_invalidation_during_the_body_prevents_the_stale_store() {
        let c = cache("t::blocking_race");
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                c.get_or_load_blocking::<_, Plain>(
                    "k",
                    move || {
                        started_tx.send(()).unwrap();
                        go_rx.recv().unwrap();
                        1u64 // the "old row"
                    },
                    &Sharing::none(),
                )
            });
            started_rx.recv().unwrap();
            c.invalidate_blocking("k").unwrap();
            go_tx.send(()).unwrap();
            assert_eq!(reader.join().unwrap(), 1);
        });
        assert_eq!(c.lookup_blocking("k"), None, "stale value stored");
        assert_eq!((c.stats().superseded, c.stats().populates), (1, 0));
        // The next call runs the body and stores its value.
        let v = c.get_or_load_blocking::<_, Plain>("k", || 2u64, &Sharing::none());
        assert_eq!((v, c.lookup_blocking("k")), (2, Some(2)));
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
