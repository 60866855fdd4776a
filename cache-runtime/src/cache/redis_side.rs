//! The Redis side of a [`Cache`]: the key scheme (every Redis key and the bus channel are
//! built here and nowhere else), reads with their stamps and the distributed lock, the
//! encoding of values, conditional stores, invalidations and version bumps, and what is
//! deferred when Redis does not take a write. The transport (connection, scripts, timeouts,
//! breaker) is [`RedisTier`].
//!
//! Keys, for prefix `cr`, schema version `v` and logical key `k`:
//!
//! ```text
//! cr:w1:v{v}:{k}      the value (an envelope, see `codec`), kept ttl + stale
//! cr:lock:v{v}:{k}    the distributed single-flight lock (`lock = ...`)
//! cr:gen:{k}          the key's generation (every schema version shares it)
//! cr:clear:{name}     the cache's clear version
//! cr:clear            the global clear version
//! cr:tag:{tag}        a tag's version
//! cr:bus:1            the bus channel
//! ```
//!
//! A value is stamped with the generation, both clear versions and its tags' versions when
//! written; a read uses it only if every stamp still equals its counter.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::bus;
use crate::codec::{self, DecodeError, Decoded};
use crate::entry::Meta;
use crate::error::CacheError;
use crate::pending::PendingOp;
use crate::redis_tier::{EntryKeys, Fetched, ReadRequest, RedisTier, WriteRequest};
use crate::runtime::runtime;
use crate::tier::Key;

use super::Cache;

pub(super) type EncodeFn<V> = fn(&V, u64, u64, Duration, &[u64]) -> Result<Vec<u8>, String>;
pub(super) type DecodeFn<V> = fn(&[u8], u64, usize, Duration) -> Result<Decoded<V>, DecodeError>;

/// The longest pause between two reads while another process holds the lock.
const MAX_LOCK_POLL: Duration = Duration::from_millis(50);

/// The Redis key of tag `tag`'s version.
fn tag_key(prefix: &str, tag: &str) -> String {
    format!("{prefix}:tag:{tag}")
}

/// The Redis key of the global clear version.
fn all_clear_key(prefix: &str) -> String {
    format!("{prefix}:clear")
}

/// One cache's Redis keys (see the module docs).
pub(super) struct KeyScheme {
    /// `{prefix}:w1:v{version}:`
    value_head: String,
    /// `{prefix}:lock:v{version}:`
    lock_head: String,
    /// `{prefix}:gen:` (shared by every schema version, so an invalidation reaches all)
    gen_head: String,
    /// `{prefix}:`, for tag keys
    prefix: String,
    /// `{prefix}:clear:{name}`
    cache_clear: String,
    /// `{prefix}:clear`
    all_clear: String,
    channel: String,
}

impl KeyScheme {
    pub(super) fn new(prefix: &str, cache: &str, version: u32) -> Self {
        Self {
            value_head: format!("{prefix}:w{}:v{version}:", codec::WIRE_VERSION),
            lock_head: format!("{prefix}:lock:v{version}:"),
            gen_head: format!("{prefix}:gen:"),
            prefix: prefix.to_string(),
            cache_clear: format!("{prefix}:clear:{cache}"),
            all_clear: all_clear_key(prefix),
            channel: bus::channel(prefix),
        }
    }

    pub(super) fn value(&self, key: &Key) -> String {
        format!("{}{}", self.value_head, key.logical)
    }

    fn lock(&self, key: &Key) -> String {
        format!("{}{}", self.lock_head, key.logical)
    }

    fn generation(&self, key: &Key) -> String {
        format!("{}{}", self.gen_head, key.logical)
    }

    /// Generation, cache clear, global clear, then one per tag: the counters an entry is
    /// stamped with. A value is current only while all of them are unchanged.
    fn stamps(&self, key: &Key) -> Vec<String> {
        let mut keys = Vec::with_capacity(3 + key.tags.len());
        keys.push(self.generation(key));
        keys.push(self.cache_clear.clone());
        keys.push(self.all_clear.clone());
        keys.extend(key.tags.iter().map(|t| tag_key(&self.prefix, t)));
        keys
    }

    fn entry(&self, key: &Key) -> EntryKeys {
        EntryKeys {
            value: self.value(key),
            lock: self.lock(key),
            stamps: self.stamps(key),
        }
    }
}

/// A cache's Redis tier: the shared connection, the value's codec and the key scheme.
pub(super) struct RedisSide<V> {
    pub(super) tier: &'static RedisTier,
    pub(super) encode: EncodeFn<V>,
    pub(super) decode: DecodeFn<V>,
    pub(super) keys: KeyScheme,
    /// How long a generation counter outlives its last bump (≥ 2 × ttl, ≥ 1 day).
    pub(super) retention: Duration,
}

/// What a miss holds on to while its body runs: the stamps read at lookup (the store is
/// conditional on them) and the lock token, if this call took the lock.
pub(super) struct Claim {
    stamps: Vec<u64>,
    token: Option<String>,
}

impl Claim {
    /// The key's generation at lookup (the first stamp).
    pub(super) fn generation(&self) -> u64 {
        self.stamps.first().copied().unwrap_or(0)
    }

    pub(super) fn into_token(self) -> Option<String> {
        self.token
    }
}

/// The result of the Redis side of a miss.
pub(super) enum Fill<V> {
    /// A current value was found (and promoted).
    Found(V, Meta),
    /// Nothing usable: run the body, then store under `claim` (`None`: Redis could not be
    /// read, so nothing is written there). `fallback`: a stale value from Redis (fail-safe).
    Compute {
        claim: Option<Claim>,
        fallback: Option<(V, Meta)>,
    },
}

pub(super) enum Read<V> {
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

impl<V> Read<V> {
    fn unusable(stamps: Vec<u64>) -> Self {
        Read::Missing {
            stamps,
            locked: false,
            unusable: true,
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Cache<V> {
    /// A miss's Redis side: read; with a lock, wait for the holder (polling, bounded by
    /// the lease) unless this call gets the lock. A stale fallback found on the way is kept.
    pub(super) async fn redis_fill(&self, key: &Key, seen_local: u64, refresh: bool) -> Fill<V> {
        let (Some(redis), Some(lease)) = (&self.redis, self.lock_lease) else {
            let (claim, fallback) = match self.redis_read(key, seen_local, None, refresh).await {
                Read::Found(v, meta) => return Fill::Found(v, meta),
                Read::Missing { stamps, .. } => (Some(Claim::unlocked(stamps)), None),
                Read::Stale { stamps, value } => (Some(Claim::unlocked(stamps)), Some(value)),
                Read::Failed => (None, None),
            };
            return Fill::Compute { claim, fallback };
        };
        let mut fallback = None;
        let token = lock_token();
        let lease_ms = lease.as_millis().max(1) as u64;
        // Long enough for a crashed holder's lease to expire and a waiter to take over.
        let deadline = Instant::now() + lease * 2;
        // Poll often at first (the holder may be about to store), then every 50 ms.
        let mut pauses = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(2))
            .with_max_delay(MAX_LOCK_POLL)
            .without_max_times()
            .build();
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
                            claim: None,
                            fallback,
                        }
                    }
                };
            let locked = locked
                || (unusable
                    && matches!(
                        redis
                            .tier
                            .try_lock(redis.keys.lock(key), token.clone(), lease_ms)
                            .await,
                        Ok(true)
                    ));
            if locked || Instant::now() >= deadline {
                if !locked {
                    self.counters.lock_timeouts.add(1);
                }
                let token = locked.then_some(token);
                return Fill::Compute {
                    claim: Some(Claim { stamps, token }),
                    fallback,
                };
            }
            self.counters.lock_waits.add(1);
            redis
                .tier
                .sleep(pauses.next().unwrap_or(MAX_LOCK_POLL))
                .await;
        }
    }

    /// One read of Redis: the value and its stamps in one round trip. A value is used only
    /// if it decodes and its stamps are current; it is then promoted to the local tier for at
    /// most its remaining Redis lifetime (measured from before the request), unless a local
    /// write happened meanwhile.
    /// `refresh`: a value that is itself due for a refresh ahead is returned as stale.
    pub(super) async fn redis_read(
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
        let (bytes, pttl, stamps) = match self.redis_fetch(redis, key, lock).await {
            Ok(found) => found,
            Err(read) => return read,
        };
        let Some(decoded) = self.decode_current(redis, &bytes, &stamps) else {
            return Read::unusable(stamps);
        };
        let meta = Meta {
            created_unix_ms: decoded.created_unix_ms,
            expires_unix_ms: decoded.expires_unix_ms,
            etag: Some(decoded.etag),
        };
        let generation = stamps.first().copied().unwrap_or(0);
        let value = (decoded.value, meta);
        if !decoded.fresh || (refresh && self.refresh_due(&meta)) {
            if !decoded.fresh {
                // Kept as this process's fallback (soft timeout, failing body); never a hit.
                let read = (sent, pttl, false);
                self.promote(key, (&value.0, meta), generation, read, seen_local);
            }
            return Read::Stale { stamps, value };
        }
        self.counters.redis_hits.add(1);
        self.promote(
            key,
            (&value.0, meta),
            generation,
            (sent, pttl, true),
            seen_local,
        );
        Read::Found(value.0, meta)
    }

    /// The round trip of a read: the value's bytes, remaining lifetime and the stamps, or
    /// what to answer when there is no value to decode.
    async fn redis_fetch(
        &self,
        redis: &RedisSide<V>,
        key: &Key,
        lock: Option<(String, u64)>,
    ) -> Result<(Vec<u8>, Option<Duration>, Vec<u64>), Read<V>> {
        let req = ReadRequest {
            keys: redis.keys.entry(key),
            try_lock: lock,
        };
        match redis.tier.read(req).await {
            Ok(Fetched::Found {
                bytes,
                pttl,
                stamps,
            }) => Ok((bytes, pttl, stamps)),
            Ok(Fetched::Missing { stamps, locked }) => Err(Read::Missing {
                stamps,
                locked,
                unusable: false,
            }),
            Ok(Fetched::WrongType { stamps }) => {
                self.counters.decode_failures.add(1);
                self.decode_log.warn_error(
                    &self.name,
                    "a redis key holds another Redis type; treated as a miss",
                    &"WRONGTYPE",
                );
                Err(Read::unusable(stamps))
            }
            Err(e) => {
                let _ = self.count_redis::<()>(Err(e));
                Err(Read::Failed)
            }
        }
    }

    /// Decodes a value read from Redis; `None` (counted, logged) if it does not decode or was
    /// written before an invalidation, tag invalidation or clear that happened since.
    fn decode_current(
        &self,
        redis: &RedisSide<V>,
        bytes: &[u8],
        stamps: &[u64],
    ) -> Option<Decoded<V>> {
        let decoded = (redis.decode)(
            bytes,
            self.fingerprint,
            self.max_value_bytes,
            self.stale_window(),
        );
        match decoded {
            Err(e) => {
                self.counters.decode_failures.add(1);
                self.decode_log.warn_error(
                    &self.name,
                    "undecodable redis value; treated as a miss",
                    &e,
                );
                None
            }
            Ok(d) if d.stamps != stamps => {
                self.counters.stale_rejected.add(1);
                None
            }
            Ok(d) => Some(d),
        }
    }

    /// Releases the lock, if this call holds it.
    pub(super) async fn release(&self, key: &Key, token: Option<String>) {
        if let (Some(redis), Some(token)) = (&self.redis, token) {
            let res = redis.tier.release_lock(redis.keys.lock(key), token).await;
            let _ = self.count_redis(res);
        }
    }

    /// Stores a body result in Redis if the stamps read at lookup are still current (one
    /// round trip, which also releases the lock). Sets the value's ETag from its encoding.
    /// `Ok(false)`: a write happened while the body ran; nothing was stored.
    pub(super) async fn redis_store_fresh(
        &self,
        key: &Key,
        value: &V,
        meta: &mut Meta,
        ttl: Duration,
        claim: Claim,
    ) -> Result<bool, CacheError> {
        let bytes = match self.encode_for_redis(value, meta.created_unix_ms, ttl, &claim.stamps) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.release(key, claim.token).await;
                return Err(e);
            }
        };
        meta.etag = codec::envelope_etag(&bytes);
        self.write_entry(key, bytes, ttl, claim).await
    }

    /// An explicit write's Redis side: bumps the generation (evicting other processes'
    /// copies, failing in-flight stale writes), then writes under the new stamps. Returns
    /// Redis's answer and the new generation; a write Redis may not have seen is deferred.
    pub(super) async fn redis_store_explicit(
        &self,
        key: &Key,
        value: &V,
        meta: &mut Meta,
        ttl: Duration,
    ) -> (Result<(), CacheError>, u64) {
        let Some(redis) = &self.redis else {
            return (Ok(()), 0);
        };
        let mut generation = 0;
        let res = async {
            let stamps = redis
                .tier
                .bump_generation(
                    redis.keys.stamps(key),
                    redis.retention,
                    redis.keys.channel.clone(),
                    bus::message_prefix(bus::Action::Updated, &key.logical),
                )
                .await?;
            let claim = Claim::unlocked(stamps);
            generation = claim.generation();
            // Other caches of this process over the same key drop their copies.
            bus::apply_locally(bus::Action::Updated, &key.logical, generation);
            // Encoded after the bump: the envelope carries the new stamps. (If it is too
            // large, the bump alone still invalidated the old value everywhere.)
            let bytes = self.encode_for_redis(value, meta.created_unix_ms, ttl, &claim.stamps)?;
            meta.etag = codec::envelope_etag(&bytes);
            if !self.write_entry(key, bytes, ttl, claim).await? {
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
            // Other processes may still read the old value: invalidate it as soon as Redis
            // is back.
            self.defer_invalidation(redis, key);
        }
        (self.count_redis(res), generation)
    }

    /// Invalidates `key` in Redis (generation bump, delete, bus message) and in this
    /// process's other caches over the same key; deferred if Redis does not take it.
    pub(super) async fn redis_invalidate(&self, key: &Key) -> Result<(), CacheError> {
        let Some(r) = &self.redis else {
            return Ok(());
        };
        let res = r
            .tier
            .invalidate(
                r.keys.value(key),
                r.keys.generation(key),
                r.retention,
                r.keys.channel.clone(),
                bus::message_prefix(bus::Action::Invalidated, &key.logical),
            )
            .await
            .map(|generation| {
                // Other caches of this process over the same key (e.g. another schema
                // version) drop their copies too, as remote processes do.
                bus::apply_locally(bus::Action::Invalidated, &key.logical, generation)
            });
        if res.is_err() {
            self.defer_invalidation(r, key);
        }
        self.count_redis(res)
    }

    /// Bumps this cache's clear version (one `INCR`, no key scan) and tells other processes;
    /// deferred if Redis does not take it.
    pub(super) async fn redis_clear(&self) -> Result<(), CacheError> {
        let Some(r) = &self.redis else {
            return Ok(());
        };
        let res = r
            .tier
            .bump_version(
                r.keys.cache_clear.clone(),
                r.keys.channel.clone(),
                bus::message_prefix(bus::Action::ClearCache, &self.name),
            )
            .await
            .map(drop);
        if res.is_err() {
            r.tier.defer(PendingOp::Bump {
                key: r.keys.cache_clear.clone(),
                channel: r.keys.channel.clone(),
                action: bus::Action::ClearCache,
                target: self.name.clone(),
            });
        }
        self.count_redis(res)
    }

    /// Redis did not take an invalidation (or a write): retry it in the background, and
    /// meanwhile do not read this key from Redis, where a stale value may remain.
    fn defer_invalidation(&self, r: &RedisSide<V>, key: &Key) {
        bus::apply_locally(bus::Action::Invalidated, &key.logical, u64::MAX);
        r.tier.defer(PendingOp::Invalidate {
            value_key: r.keys.value(key),
            gen_key: r.keys.generation(key),
            retention: r.retention,
            channel: r.keys.channel.clone(),
            logical: key.logical.clone(),
        });
    }

    /// The conditional write of an entry (kept `stale` past its TTL for the fail-safe).
    async fn write_entry(
        &self,
        key: &Key,
        bytes: Vec<u8>,
        ttl: Duration,
        claim: Claim,
    ) -> Result<bool, CacheError> {
        let Some(redis) = &self.redis else {
            return Ok(false);
        };
        let req = WriteRequest {
            keys: redis.keys.entry(key),
            bytes,
            ttl: ttl + self.stale_window(),
            seen: claim.stamps,
            token: claim.token,
        };
        redis.tier.write_if(req).await
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

impl Claim {
    fn unlocked(stamps: Vec<u64>) -> Self {
        Claim {
            stamps,
            token: None,
        }
    }
}

/// A distributed lock token: unique per process (the bus id) and call.
fn lock_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:016x}-{}",
        bus::instance_id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// What a tag invalidation or a global clear bumps.
pub(super) enum Bump<'a> {
    Tag(&'a str),
    ClearAll,
}

/// Applies a tag invalidation or a global clear here, then in Redis (deferred if Redis does
/// not take it), then here again.
pub(super) async fn bump_everywhere(bump: Bump<'_>) -> Result<(), CacheError> {
    let (action, target) = match bump {
        Bump::Tag(tag) => (bus::Action::Tag, tag),
        Bump::ClearAll => (bus::Action::ClearAll, ""),
    };
    bus::apply_locally(action, target, 0);
    let rt = runtime();
    let Some(r) = &rt.redis else {
        return Ok(());
    };
    let prefix = &rt.config.key_prefix;
    let key = match bump {
        Bump::Tag(tag) => tag_key(prefix, tag),
        Bump::ClearAll => all_clear_key(prefix),
    };
    let channel = bus::channel(prefix);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_scheme_is_the_documented_one() {
        let keys = KeyScheme::new("cr", "app::user", 3);
        let key = Key::new("user:42").with_tags(vec!["t:1".into(), "t:2".into()]);
        let entry = keys.entry(&key);
        assert_eq!(entry.value, "cr:w1:v3:user:42");
        assert_eq!(entry.lock, "cr:lock:v3:user:42");
        assert_eq!(
            entry.stamps,
            [
                "cr:gen:user:42",
                "cr:clear:app::user",
                "cr:clear",
                "cr:tag:t:1",
                "cr:tag:t:2"
            ]
        );
        assert_eq!(keys.channel, "cr:bus:1");
        assert_eq!(tag_key("cr", "t:1"), entry.stamps[3]);
        assert_eq!(all_clear_key("cr"), entry.stamps[2]);
    }
}
