//! The Redis side of a [`Cache`]: the key scheme (every Redis key and the bus channel are
//! built here and nowhere else), reads with their ticket and the distributed lock, the
//! encoding of values, conditional stores, invalidations, and what is deferred when Redis
//! does not take a write. The transport (connection, scripts, timeouts, breaker) is
//! [`RedisTier`]. The protocol is docs/PROTOCOL.md (stage 1: per-key tickets).
//!
//! Keys, for prefix `cr`, key schema `v` (the `version` and a digest of the value type's
//! fingerprint, `1.3fa9c1`: [`KeySchema`]), logical key `k` and its bucket
//! `b = fnv1a(k) mod 1024` (the hash tag: one key's keys share a slot):
//!
//! ```text
//! {cr:b}:v2:{v}:{k}   the value (an envelope, see `codec`), kept ttl + stale
//! {cr:b}:t:{k}        the key's random ticket (every schema version shares it)
//! {cr:b}:l:{v}:{k}    the distributed single-flight lock (`lock = ...`)
//! {cr:scopes}:c:{name} the cache's clear token  } scope tokens, single node and Sentinel
//! {cr:scopes}:a        the global clear token   } (random, kept as long as the tickets
//! {cr:scopes}:t:{tag}  a tag's token            } of the values stamped with them)
//! {cr:b}:s:c:{name}    } the same on a cluster, striped: one per bucket, in its slot
//! {cr:b}:s:a           }
//! {cr:b}:s:t:{tag}     }
//! cr:bus:1             the bus channel (single node, Sentinel)
//! {cr:b}:bus:1         bucket b's shard channel (cluster: SPUBLISH / SSUBSCRIBE)
//! ```
//!
//! A value is served only if the ticket key exists and equals the envelope's ticket, and
//! every scope token it was stamped with exists and equals the stamp. Every invalidation
//! deletes the ticket (a tag invalidation or a clear, the scope's token); a new one is
//! random, so nothing stored before can match it again (no ABA after a flush, restart,
//! eviction or `DEL`), and a missing token matches nothing.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use scopeguard::ScopeGuard;

use crate::bus;
use crate::codec::{self, DecodeError, Header};
use crate::entry::Meta;
use crate::error::CacheError;
use crate::key::{
    bucket_key, bucket_key_at, key_middles, redis_bucket, scope_key, scope_token_key, KeySchema,
    Scope, CLEAR_TOKENS, REDIS_BUCKETS, TICKET_MIDDLE,
};
use crate::pending::{Added, PendingOp};
use crate::redis_request::{fresh_token, new_ticket};
use crate::redis_tier::{
    EntryKeys, Fetched, PlainRead, PlainStore, ReadKeys, ReadRequest, RedisTier, Stamps, StoreKeys,
    WriteRequest,
};
use crate::runtime::runtime;
use crate::stats::Counters;
use crate::tier::Key;

use super::Cache;

/// `codec::encode_sized`: value, fingerprint, ticket, creation (Unix ms), TTL, stamps, and
/// the buffer's first capacity.
pub(super) type EncodeFn<V> =
    fn(&V, u64, u64, u64, Duration, &[u64], usize) -> Result<Vec<u8>, String>;
pub(super) type DecodeFn<V> = for<'a, 'b> fn(
    &'a [u8],
    u64,
    usize,
    Duration,
    Option<(u64, &'b [u64])>,
) -> Result<(Header<'a>, V), DecodeError>;

/// The largest first buffer an envelope is encoded into; larger values grow it.
const ENVELOPE_HINT_MAX: usize = 64 * 1024;

/// The longest pause between two reads while another process holds the lock.
const MAX_LOCK_POLL: Duration = Duration::from_millis(50);

/// How long a body may run and still store (the ticket outlives values by this much).
const FILL_ALLOWANCE: Duration = Duration::from_secs(60);

/// One cache's Redis keys (see the module docs).
pub(super) struct KeyScheme {
    prefix: String,
    /// What the value and lock keys name of the value type.
    pub(super) schema: KeySchema,
    /// `v{wire}:{schema}:` and `l:{schema}:`, between a key's hash tag and its logical key.
    value_middle: String,
    lock_middle: String,
    /// The cache-clear and global-clear token keys: one pair (single node, Sentinel), or
    /// one per bucket (cluster: `{prefix:b}:s:c:{name}`, `{prefix:b}:s:a`), built once (two
    /// of these are read on every Redis hit).
    clears: Vec<[Arc<str>; CLEAR_TOKENS]>,
    /// Cluster layout: scope tokens striped per bucket (docs/PROTOCOL.md §4.3).
    striped: bool,
    /// Each bucket's cluster slot (cluster only; a hit routes by it).
    slots: Vec<u16>,
    channel: String,
}

impl KeyScheme {
    /// The scheme of the runtime's Redis: striped scope tokens on a cluster.
    pub(super) fn new(prefix: &str, cache: &str, schema: KeySchema) -> Self {
        let striped = runtime().config.cluster.is_some();
        Self::with_layout(prefix, cache, schema, striped)
    }

    pub(super) fn with_layout(prefix: &str, cache: &str, schema: KeySchema, striped: bool) -> Self {
        let (value_middle, lock_middle) = key_middles(schema);
        let clears = if striped {
            (0..REDIS_BUCKETS)
                .map(|b| {
                    [
                        scope_token_key(prefix, b, Scope::Cache(cache)).into(),
                        scope_token_key(prefix, b, Scope::All).into(),
                    ]
                })
                .collect()
        } else {
            vec![[
                scope_key(prefix, Scope::Cache(cache)).into(),
                scope_key(prefix, Scope::All).into(),
            ]]
        };
        let slots = match striped {
            true => (0..REDIS_BUCKETS)
                .map(|b| crate::key::cluster_slot(&format!("{{{prefix}:{b}}}")))
                .collect(),
            false => Vec::new(),
        };
        Self {
            prefix: prefix.to_string(),
            schema,
            value_middle,
            lock_middle,
            clears,
            striped,
            slots,
            channel: bus::channel(prefix),
        }
    }

    pub(super) fn value(&self, key: &Key) -> String {
        bucket_key(&self.prefix, &self.value_middle, &key.logical)
    }

    fn ticket(&self, key: &Key) -> String {
        bucket_key(&self.prefix, TICKET_MIDDLE, &key.logical)
    }

    /// The value's and the ticket's keys (one bucket hash for both).
    fn value_and_ticket(&self, key: &Key) -> (String, String) {
        let b = redis_bucket(&key.logical);
        (
            bucket_key_at(&self.prefix, b, &self.value_middle, &key.logical),
            bucket_key_at(&self.prefix, b, TICKET_MIDDLE, &key.logical),
        )
    }

    fn lock(&self, key: &Key) -> String {
        bucket_key(&self.prefix, &self.lock_middle, &key.logical)
    }

    /// Cache clear, global clear, then one per tag: the scope tokens an entry is stamped
    /// with (the first [`CLEAR_TOKENS`] shared, not copied).
    fn stamps(&self, key: &Key) -> Vec<Arc<str>> {
        // The bucket only matters where the tokens are striped per bucket (cluster).
        let bucket = if self.striped {
            redis_bucket(&key.logical)
        } else {
            0
        };
        self.stamps_in(key, bucket)
    }

    /// [`stamps`](Self::stamps) with the key's bucket already computed.
    fn stamps_in(&self, key: &Key, b: u32) -> Vec<Arc<str>> {
        let mut keys = Vec::with_capacity(CLEAR_TOKENS + key.tags.len());
        if self.striped {
            keys.extend(self.clears[b as usize].iter().cloned());
            keys.extend(
                key.tags
                    .iter()
                    .map(|t| Arc::from(scope_token_key(&self.prefix, b, Scope::Tag(t)))),
            );
        } else {
            keys.extend(self.clears[0].iter().cloned());
            keys.extend(
                key.tags
                    .iter()
                    .map(|t| Arc::from(scope_key(&self.prefix, Scope::Tag(t)))),
            );
        }
        keys
    }

    /// The entry's keys; the lock key only when `with_lock`.
    fn entry(&self, key: &Key, with_lock: bool) -> EntryKeys {
        // One bucket hash for every key of the entry.
        let b = redis_bucket(&key.logical);
        let (prefix, logical) = (&self.prefix, &key.logical);
        EntryKeys {
            value: bucket_key_at(prefix, b, &self.value_middle, logical),
            ticket: bucket_key_at(prefix, b, TICKET_MIDDLE, logical),
            lock: if with_lock {
                bucket_key_at(prefix, b, &self.lock_middle, logical)
            } else {
                String::new()
            },
            stamps: self.stamps_in(key, b),
            clears: CLEAR_TOKENS,
        }
    }

    /// A plain read's keys, borrowed (the tier writes them into its `MGET`).
    fn read_keys<'a>(&'a self, key: &'a Key) -> ReadKeys<'a> {
        let bucket = redis_bucket(&key.logical);
        let (clears, slot) = match self.striped {
            true => (&self.clears[bucket as usize], self.slots[bucket as usize]),
            false => (&self.clears[0], 0),
        };
        ReadKeys {
            prefix: &self.prefix,
            bucket,
            slot,
            value_middle: &self.value_middle,
            logical: &key.logical,
            clears,
            tags: &key.tags,
            striped: self.striped,
        }
    }
}

/// A cache's Redis tier: the shared connection, the value's codec and the key scheme.
pub(super) struct RedisSide<V> {
    pub(super) tier: &'static RedisTier,
    pub(super) encode: EncodeFn<V>,
    pub(super) decode: DecodeFn<V>,
    pub(super) keys: KeyScheme,
    /// How long a ticket lives, in ms ([`ticket_px_for`], fixed by the configuration).
    pub(super) ticket_px: u64,
    /// The last eight plain reads, a bit each: 1 = the key had no ticket. While half or
    /// more had none (a cache of mostly new keys), reads claim the ticket in the same round
    /// trip, so a miss costs two round trips instead of three (docs/PROTOCOL.md §7.2).
    pub(super) ticketless: AtomicU8,
    /// With `lock = true`, the last eight reads, a bit each: 1 = no usable value. While
    /// fewer than half missed, a read goes first without the lock (a plain hit, §7.1), and
    /// only a miss runs the script that may take it (one round trip more); otherwise
    /// straight to the script (docs/PROTOCOL.md §7.3).
    pub(super) lock_misses: AtomicU8,
    /// The length of the last envelope this cache encoded: the next one's buffer starts
    /// that large (plus an eighth), so that a value like the last is encoded without
    /// growing it.
    pub(super) last_envelope_len: AtomicUsize,
}

impl<V> RedisSide<V> {
    fn speculate(&self) -> bool {
        self.ticketless.load(Relaxed).count_ones() >= 4
    }

    /// None of the last eight reads found a ticket: the claim goes without the read.
    fn claims_alone(&self) -> bool {
        self.ticketless.load(Relaxed) == u8::MAX
    }

    fn note_read(&self, ticketless: bool) {
        note(&self.ticketless, ticketless);
    }

    /// Whether a read of a `lock = true` cache goes first without the lock.
    fn hit_first(&self) -> bool {
        self.lock_misses.load(Relaxed).count_ones() < 4
    }
}

/// Shifts one read's bit into a history of eight.
fn note(history: &AtomicU8, bit: bool) {
    let old = history.load(Relaxed);
    let new = old << 1 | u8::from(bit);
    // No store while nothing changes: a cache of hits never writes the shared line.
    if new != old {
        history.store(new, Relaxed);
    }
}

/// What a miss holds on to while its body runs: the key's ticket and the scope tokens
/// read at lookup (the store is conditional on them) and the lock token, if this call took
/// the lock.
pub(super) struct Claim {
    ticket: u64,
    stamps: Stamps,
    token: Option<String>,
    /// Set when this call created the ticket: no earlier than this instant, with the full
    /// ticket lifetime (a store soon after needs not extend it).
    created: Option<Instant>,
}

impl Claim {
    pub(super) fn into_token(self) -> Option<String> {
        self.token
    }
}

/// The result of the Redis side of a miss.
pub(super) enum Fill<V> {
    /// A current value was found (and promoted).
    Found(V, Meta),
    /// Nothing usable: run the body, then store under `claim` (`None`: Redis could not be
    /// read, or no ticket could be taken, so nothing is written there). `fallback`: a stale
    /// value from Redis (fail-safe).
    Compute {
        claim: Option<Claim>,
        fallback: Option<(V, Meta)>,
        /// Armed while this call holds the key's lock: see [`LockGuard`].
        unlock: LockGuard,
    },
}

/// Releases the key's lock if the miss that holds it ends without releasing it itself: the
/// call was cancelled while its body ran or its result was stored (a client gone, a
/// `timeout` around the call, an aborted task), or its result is not stored (an `Err`, a
/// stale value served). Dropped armed, it sends the release from the Redis thread, without
/// waiting: a cancelled future cannot await, and a result that is not stored must not be
/// held across an await (its type may not be `Send`). Without it, every caller of the key
/// in every process would wait out the lease (10 s by default) behind a caller that is gone.
/// The release deletes the lock only if it still holds this call's token, so a release of a
/// lock already released, expired or taken over changes nothing.
pub(super) struct LockGuard {
    lock: Option<HeldLock>,
    armed: bool,
}

struct HeldLock {
    tier: &'static RedisTier,
    key: String,
    token: String,
    counters: Arc<Counters>,
}

impl LockGuard {
    /// A guard for a miss that takes no lock.
    pub(super) fn none() -> Self {
        Self {
            lock: None,
            armed: false,
        }
    }

    fn new(tier: &'static RedisTier, key: String, token: String, counters: Arc<Counters>) -> Self {
        Self {
            lock: Some(HeldLock {
                tier,
                key,
                token,
                counters,
            }),
            armed: false,
        }
    }

    /// From now on, the lock may be this call's (a read that may take it is on its way).
    fn arm(&mut self) {
        self.armed = true;
    }

    /// The lock is not this call's, or was released by the call itself.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(HeldLock {
            tier,
            key,
            token,
            counters,
        }) = self.lock.take().filter(|_| self.armed)
        else {
            return;
        };
        drop(tier.handle().spawn(async move {
            if let Err(e) = tier.release_lock(key, token).await {
                counters.redis_failed(&e);
            }
        }));
    }
}

/// What a read saw besides a usable value: the ticket in force and the scope tokens (0:
/// missing).
pub(super) struct Seen {
    ticket: Option<u64>,
    stamps: Stamps,
    /// The read's claim created the ticket, no earlier than this instant.
    created: Option<Instant>,
}

pub(super) enum Read<V> {
    Found(V, Meta),
    /// `unusable`: a value was there but stale, undecodable, of another type or under
    /// another ticket, so the read script did not try the lock.
    Missing {
        seen: Seen,
        locked: bool,
        unusable: bool,
    },
    /// Past its TTL but within `stale`, and current: a fallback, not a hit.
    Stale {
        seen: Seen,
        value: (V, Meta),
    },
    Failed,
}

/// How long a ticket lives, in ms: past every value stored under it (`ttl`, `none_ttl`, kept
/// `stale` past its expiry), plus the time a body may take to run (docs/PROTOCOL.md §2),
/// and at most the longer of twice the TTL and a day; each store extends it (`PEXPIRE GT`).
pub(super) fn ticket_px_for(ttl: Duration, none_ttl: Duration, stale: Duration) -> u64 {
    let longest = ttl.max(none_ttl) * 2 + stale + FILL_ALLOWANCE;
    let retention = (ttl * 2).max(Duration::from_secs(86_400));
    longest.min(retention.max(FILL_ALLOWANCE)).as_millis() as u64
}

impl<V> Read<V> {
    fn unusable(seen: Seen) -> Self {
        Read::Missing {
            seen,
            locked: false,
            unusable: true,
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Cache<V> {
    /// A claim under the ticket and scope tokens read; those missing (the key had no ticket,
    /// a scope was invalidated since) are taken now with `SET NX GET` (one more round trip).
    /// `None`: Redis did not answer, or holds a foreign token; nothing is stored.
    async fn claim(&self, key: &Key, seen: Seen, token: Option<String>) -> Option<Claim> {
        let redis = self.redis.as_ref()?;
        let Seen {
            ticket,
            mut stamps,
            mut created,
        } = seen;
        let missing: Vec<usize> = (0..stamps.len()).filter(|&i| stamps[i] == 0).collect();
        let ticket = if ticket.is_none() || !missing.is_empty() {
            let scope_keys = redis.keys.stamps(key);
            let (sent, new) = (Instant::now(), new_ticket());
            let res = redis
                .tier
                .claim_tokens(
                    ticket.is_none().then(|| redis.keys.ticket(key)),
                    redis.ticket_px,
                    missing
                        .iter()
                        .map(|&i| (scope_keys[i].to_string(), i >= CLEAR_TOKENS))
                        .collect(),
                    new,
                )
                .await;
            match self.count_redis(res) {
                Ok((claimed, tokens)) => {
                    for (&i, t) in missing.iter().zip(tokens) {
                        stamps[i] = t;
                    }
                    if ticket.is_none() && claimed == Some(new) {
                        created = Some(sent);
                    }
                    ticket.or(claimed)
                }
                Err(_) => None,
            }
        } else {
            ticket
        };
        match ticket.filter(|t| *t != 0 && !stamps.contains(&0)) {
            Some(ticket) => Some(Claim {
                ticket,
                stamps,
                token,
                created,
            }),
            None => {
                self.release(key, token).await;
                None
            }
        }
    }

    /// A miss's Redis side: read; with a lock, wait for the holder (polling, bounded by
    /// the lease) unless this call gets the lock. A stale fallback found on the way is kept.
    /// `may_lock`: false for a re-entrant call, made from inside the body of the call that
    /// holds the lock (it would wait for itself).
    pub(super) async fn redis_fill(
        &self,
        key: &Key,
        seen_local: u64,
        refresh: bool,
        may_lock: bool,
    ) -> Fill<V> {
        let lease = self.lock_lease.filter(|_| may_lock);
        let (Some(redis), Some(lease)) = (&self.redis, lease) else {
            let (seen, fallback) = match self.redis_read(key, seen_local, None, refresh).await {
                Read::Found(v, meta) => return Fill::Found(v, meta),
                Read::Missing { seen, .. } => (seen, None),
                Read::Stale { seen, value } => (seen, Some(value)),
                Read::Failed => {
                    return Fill::Compute {
                        claim: None,
                        fallback: None,
                        unlock: LockGuard::none(),
                    }
                }
            };
            let claim = self.claim(key, seen, None).await;
            return Fill::Compute {
                claim,
                fallback,
                unlock: LockGuard::none(),
            };
        };
        let mut fallback = None;
        // A hit needs no lock: read as a cache without one does (`GET v` with the ticket
        // kept), and take the lock's script only on a miss.
        let hit_first = redis.hit_first();
        // Straight to the script: its first read records whether hits came back.
        let mut record = !hit_first;
        if hit_first {
            let read = self.redis_read(key, seen_local, None, refresh).await;
            note(&redis.lock_misses, !matches!(read, Read::Found(..)));
            match read {
                Read::Found(v, meta) => return Fill::Found(v, meta),
                Read::Stale { value, .. } => fallback = Some(value),
                Read::Missing { .. } => {}
                Read::Failed => {
                    return Fill::Compute {
                        claim: None,
                        fallback: None,
                        unlock: LockGuard::none(),
                    }
                }
            }
        }
        let token = lock_token();
        let mut unlock = LockGuard::new(
            redis.tier,
            redis.keys.lock(key),
            token.clone(),
            self.counters.clone(),
        );
        let lease_ms = lease.as_millis().max(1) as u64;
        let mut first_ticket: Option<Option<u64>> = None;
        // Long enough for a crashed holder's lease to expire and a waiter to take over.
        let deadline = Instant::now() + lease * 2;
        // Poll often at first (the holder may be about to store), then every 50 ms.
        let mut pauses = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(2))
            .with_max_delay(MAX_LOCK_POLL)
            .without_max_times()
            .build();
        loop {
            // The read may take the lock: from here on a cancelled call releases it.
            unlock.arm();
            let lock = Some((token.clone(), lease_ms));
            let read = self.redis_read(key, seen_local, lock, refresh).await;
            if std::mem::take(&mut record) {
                note(&redis.lock_misses, !matches!(read, Read::Found(..)));
            }
            let (seen, locked, unusable) = match read {
                Read::Found(v, meta) => {
                    unlock.disarm();
                    return Fill::Found(v, meta);
                }
                Read::Missing {
                    seen,
                    locked,
                    unusable,
                } => (seen, locked, unusable),
                // A stale value blocks the script's lock attempt like any unusable value.
                Read::Stale { seen, value } => {
                    fallback = Some(value);
                    (seen, false, true)
                }
                Read::Failed => {
                    unlock.disarm();
                    return Fill::Compute {
                        claim: None,
                        fallback,
                        unlock,
                    };
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
            // The key was written since this call first looked (its ticket changed: an
            // invalidation, or a holder's claim after one): the value it waits for may be
            // gone before it looks again, and a body run now reads the source after that
            // write. Under a storm of writes to one hot key another process's callers
            // would otherwise take the lock again and again while this one polls until
            // its deadline (2 × the lease).
            let written = *first_ticket.get_or_insert(seen.ticket) != seen.ticket;
            if locked || written || Instant::now() >= deadline {
                if !locked && !written {
                    unlock.disarm();
                    self.counters.lock_timeouts.add(1);
                }
                let token = locked.then(|| token.clone());
                let claim = self.claim(key, seen, token).await;
                if claim.is_none() {
                    // `claim` released the lock itself.
                    unlock.disarm();
                }
                return Fill::Compute {
                    claim,
                    fallback,
                    unlock,
                };
            }
            // Not holding the lock while waiting for its holder.
            unlock.disarm();
            self.counters.lock_waits.add(1);
            redis
                .tier
                .sleep(pauses.next().unwrap_or(MAX_LOCK_POLL))
                .await;
        }
    }

    /// One read of Redis: the value, its key's ticket and the scope tokens in one round
    /// trip (`MGET`). A value is used only if it decodes, names the ticket in force and its
    /// scope tokens are all there and equal to its stamps; it is then promoted to the local tier for at most its remaining
    /// Redis lifetime, unless a local write happened meanwhile.
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
            .blocks(&key.logical, &key.tags, &self.clear_scope)
        {
            return Read::Failed;
        }
        let sent = Instant::now();
        let plain = lock.is_none();
        // The ticket the read creates if the key has none: the lock script always may, a
        // plain read only when it claims (not on a plain hit: no random number drawn).
        let new = (!plain || redis.speculate()).then(new_ticket);
        let read = match lock {
            Some(try_lock) => {
                let req = ReadRequest {
                    keys: redis.keys.entry(key, true),
                    try_lock,
                    new_ticket: new.unwrap_or_else(new_ticket),
                    ticket_px: redis.ticket_px,
                };
                redis.tier.read(req).await
            }
            None => {
                let req = PlainRead {
                    keys: redis.keys.read_keys(key),
                    claim: new.map(|new| (new, redis.ticket_px)),
                    claim_alone: redis.claims_alone(),
                };
                redis.tier.read_plain(req).await
            }
        };
        let Fetched {
            value,
            ticket,
            ticketless,
            stamps,
            locked,
        } = match read {
            Ok(fetched) => fetched,
            Err(e) => {
                let _ = self.count_redis::<()>(Err(e));
                return Read::Failed;
            }
        };
        if plain {
            redis.note_read(ticketless);
        }
        let seen = Seen {
            created: (new.is_some() && ticket == new).then_some(sent),
            ticket,
            stamps,
        };
        let Some(bytes) = value else {
            return Read::Missing {
                seen,
                locked,
                unusable: false,
            };
        };
        let Some((decoded, value)) = self.decode_current(redis, &bytes, &seen) else {
            return Read::unusable(seen);
        };
        let meta = Meta {
            created_unix_ms: decoded.created_unix_ms,
            expires_unix_ms: decoded.expires_unix_ms,
            etag: self
                .etags_wanted()
                .then(|| crate::entry::ETag::of(decoded.payload)),
        };
        // Its remaining Redis lifetime (kept `stale` past its expiry), from the envelope.
        let pttl = Some(Duration::from_millis(
            (decoded.expires_unix_ms + self.stale_window().as_millis() as u64)
                .saturating_sub(decoded.now_unix_ms),
        ));
        let value = (value, meta);
        if !decoded.fresh || (refresh && self.refresh_due(&meta)) {
            if !decoded.fresh {
                // Kept as this process's fallback (soft timeout, failing body); never a hit.
                self.promote(key, (&value.0, meta), 0, (sent, pttl, false), seen_local);
            }
            return Read::Stale { seen, value };
        }
        self.counters.redis_hits.add(1);
        self.promote(key, (&value.0, meta), 0, (sent, pttl, true), seen_local);
        Read::Found(value.0, meta)
    }

    /// Decodes a value read from Redis; `None` (counted, logged) if it does not decode or was
    /// stored under another ticket (the key was invalidated, flushed, evicted) or before a
    /// tag invalidation or clear that happened since (checked before the payload decode).
    fn decode_current<'a>(
        &self,
        redis: &RedisSide<V>,
        bytes: &'a [u8],
        seen: &Seen,
    ) -> Option<(Header<'a>, V)> {
        // A missing ticket or scope token (0) matches nothing, whatever an envelope carries;
        // the value is still decoded, so that a corrupt one is reported as such.
        let current = seen.ticket.filter(|_| !seen.stamps.contains(&0));
        let decoded = (redis.decode)(
            bytes,
            self.fingerprint,
            self.max_value_bytes,
            self.stale_window(),
            current.map(|t| (t, &seen.stamps[..])),
        );
        match decoded {
            // A value of the previous wire version is simply a miss.
            Err(DecodeError::Version(1) | DecodeError::Superseded) => {
                self.counters.stale_rejected.add(1);
                None
            }
            Err(e) => {
                self.counters.decode_failures.add(1);
                self.decode_log.warn_error(
                    &self.name,
                    "undecodable redis value; treated as a miss",
                    &e,
                );
                None
            }
            Ok(_) if current.is_none() => {
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

    /// Stores a body result in Redis if the key's ticket is still the claim's and the scope
    /// tokens are unchanged (one round trip, which also releases the lock). Sets the
    /// value's ETag from its encoding. `Ok(false)`: a write happened while the body ran;
    /// nothing was stored.
    pub(super) async fn redis_store_fresh(
        &self,
        key: &Key,
        value: &V,
        meta: &mut Meta,
        ttl: Duration,
        (claim, heard): (Claim, bool),
    ) -> Result<bool, CacheError> {
        let bytes = match self.encode_for_redis(
            value,
            claim.ticket,
            meta.created_unix_ms,
            ttl,
            &claim.stamps,
        ) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.release(key, claim.token).await;
                return Err(e);
            }
        };
        if self.etags_wanted() {
            meta.etag = codec::envelope_etag(&bytes);
        }
        self.write_entry(key, bytes, ttl, claim, heard).await
    }

    /// An explicit write's Redis side: replaces the key's ticket (deleting the old value and
    /// ticket first, evicting other processes' copies, failing in-flight stores), then
    /// writes under the new ticket. A write Redis may not have seen is deferred as an
    /// invalidation.
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
        // Unless Redis answered (or refused for good), the old value may still be there:
        // invalidated as soon as Redis takes it. Dropped armed, after a failure or with a
        // cancelled caller (a client gone, a `timeout` around the write), this defers it.
        let unconfirmed = scopeguard::guard((), |()| self.defer_invalidation(redis, key));
        let res = async {
            let ticket = new_ticket();
            let keys = redis.keys.entry(key, false);
            let stamps = redis
                .tier
                .replace_ticket(
                    &keys,
                    ticket,
                    redis.ticket_px,
                    redis.keys.channel.clone(),
                    bus::message(bus::Action::Updated, &key.logical),
                )
                .await?;
            // Other caches of this process over the same key drop their copies.
            bus::apply_locally(bus::Action::Updated, &key.logical, 0);
            if stamps.contains(&0) {
                // A foreign value where a scope token belongs: the old value is gone
                // everywhere; the new one is not stored (it could not be validated).
                return Ok(());
            }
            // Encoded after the replacement: the envelope carries the new ticket. (If it is
            // too large, the replacement alone still invalidated the old value everywhere.)
            let bytes = self.encode_for_redis(value, ticket, meta.created_unix_ms, ttl, &stamps)?;
            if self.etags_wanted() {
                meta.etag = codec::envelope_etag(&bytes);
            }
            let claim = Claim {
                ticket,
                stamps,
                token: None,
                // Replaced by the populate script just now; its store (the script) extends
                // it all the same.
                created: None,
            };
            // Conditional: of two explicit writes racing, Redis keeps the later one.
            if !self.write_entry(key, bytes, ttl, claim, true).await? {
                // Another write landed between the two round trips: it is newer.
                self.counters.superseded.add(1);
            }
            Ok(())
        }
        .await;
        let unreached = matches!(
            res,
            Err(CacheError::Timeout(_)
                | CacheError::Unavailable(_)
                | CacheError::CircuitOpen
                | CacheError::Redis(_))
        );
        if unreached {
            // Other processes may still read the old value.
            drop(unconfirmed);
        } else {
            ScopeGuard::into_inner(unconfirmed);
        }
        (self.count_redis(res), 0)
    }

    /// Invalidates `key` in Redis (`DEL value ticket`, bus message) and in this process's
    /// other caches over the same key; deferred if Redis does not take it.
    pub(super) async fn redis_invalidate(&self, key: &Key) -> Result<(), CacheError> {
        let Some(r) = &self.redis else {
            return Ok(());
        };
        let (value_key, ticket_key) = r.keys.value_and_ticket(key);
        // Deferred unless Redis confirms it: after a failure, and with a caller cancelled
        // before Redis answered (a client gone, a `timeout` around the write), when it may
        // never have reached Redis.
        let unconfirmed = scopeguard::guard((), |()| self.defer_invalidation(r, key));
        let res = r
            .tier
            .invalidate(
                value_key,
                ticket_key,
                (new_ticket(), r.ticket_px),
                r.keys.channel.clone(),
                bus::message(bus::Action::Invalidated, &key.logical),
            )
            .await
            .map(|()| {
                // Other caches of this process over the same key (e.g. another schema
                // version) drop their copies too, as remote processes do.
                bus::apply_locally(bus::Action::Invalidated, &key.logical, 0)
            });
        if res.is_ok() {
            ScopeGuard::into_inner(unconfirmed);
        } else {
            drop(unconfirmed);
        }
        self.count_redis(res)
    }

    /// Clears this cache's clear scope everywhere, like a tag: the local tiers and in-flight
    /// bodies of every cache of this process over it, then its token in Redis (no key scan;
    /// every value stamped with it is refused from now on) with a bus message to other
    /// processes (deferred if Redis does not take it), then the local side again.
    pub(super) async fn redis_clear(&self) -> Result<(), CacheError> {
        let res = invalidate_scope_everywhere(Scope::Cache(&self.clear_scope)).await;
        self.count_redis(res)
    }

    /// Redis did not take an invalidation (or a write): retry it in the background, and
    /// meanwhile do not read this key from Redis, where a stale value may remain.
    fn defer_invalidation(&self, r: &RedisSide<V>, key: &Key) {
        bus::apply_locally(bus::Action::Invalidated, &key.logical, u64::MAX);
        let (value_key, ticket_key) = r.keys.value_and_ticket(key);
        let added = r.tier.defer(PendingOp::Invalidate {
            value_key,
            ticket_key,
            channel: r.keys.channel.clone(),
            logical: key.logical.clone(),
            cache: std::sync::Arc::from(self.clear_scope.as_str()),
        });
        if let Added::Folded(n) = added {
            self.counters.pending_folded.add(n as u64);
            self.decode_log.warn_error(
                &self.name,
                "too many pending redis writes: key invalidations folded into a pending clear of the cache",
                &n,
            );
        }
    }

    /// The write of an entry under its claim (kept `stale` past its TTL for the fail-safe);
    /// `conditional`: written only if the claim still holds (the store script), else a plain
    /// pipeline whose value readers refuse if the claim no longer holds (`write_if`).
    async fn write_entry(
        &self,
        key: &Key,
        bytes: Vec<u8>,
        ttl: Duration,
        claim: Claim,
        conditional: bool,
    ) -> Result<bool, CacheError> {
        let Some(redis) = &self.redis else {
            return Ok(false);
        };
        // A lock holder's store is the script too (it releases the lock), whose third key
        // is the lock's; a plain store names none.
        let conditional = conditional || claim.token.is_some();
        let (ttl, ticket_px) = (ttl + self.stale_window(), redis.ticket_px);
        // A ticket this call created lives `ticket_px` from its creation: past this value's
        // expiry unless the body took longer than the margin (twice the TTL and more).
        let extend_ticket = claim
            .created
            .is_none_or(|t| t.elapsed() + ttl > Duration::from_millis(ticket_px));
        let check_ticket = self.local.is_some();
        if !conditional {
            // The keys written straight into the commands (no key string built).
            let req = PlainStore {
                keys: StoreKeys::Scheme(redis.keys.read_keys(key)),
                bytes: &bytes,
                ttl,
                ticket: claim.ticket,
                ticket_px,
                extend_ticket,
                check_ticket,
                seen: &claim.stamps,
            };
            return redis.tier.store_plain(req).await;
        }
        let req = WriteRequest {
            keys: redis.keys.entry(key, conditional),
            bytes,
            ttl,
            ticket: claim.ticket,
            ticket_px,
            extend_ticket,
            check_ticket,
            seen: claim.stamps,
            token: claim.token,
            conditional,
        };
        redis.tier.write_if(req).await
    }

    fn encode_for_redis(
        &self,
        value: &V,
        ticket: u64,
        created_unix_ms: u64,
        ttl: Duration,
        stamps: &[u64],
    ) -> Result<Vec<u8>, CacheError> {
        let Some(redis) = &self.redis else {
            return Err(CacheError::Encode("no redis tier".into()));
        };
        let last = redis.last_envelope_len.load(Relaxed);
        let bytes = (redis.encode)(
            value,
            self.fingerprint,
            ticket,
            created_unix_ms,
            ttl,
            stamps,
            last + last / 8,
        )
        .map_err(|e| CacheError::Encode(e.into()))?;
        // A rare large value does not make every later buffer large.
        let remembered = bytes.len().min(ENVELOPE_HINT_MAX);
        if remembered != last {
            redis.last_envelope_len.store(remembered, Relaxed);
        }
        if bytes.len() > self.max_value_bytes {
            return Err(CacheError::TooLarge {
                size: bytes.len(),
                limit: self.max_value_bytes,
            });
        }
        Ok(bytes)
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

/// Applies a tag invalidation, a cache clear or a global clear here (every local tier and
/// in-flight body it covers), then in Redis (deferred if Redis does not take it), then here
/// again.
pub(super) async fn invalidate_scope_everywhere(scope: Scope<'_>) -> Result<(), CacheError> {
    let (action, target) = match scope {
        Scope::Tag(tag) => (bus::Action::Tag, tag),
        Scope::All => (bus::Action::ClearAll, ""),
        Scope::Cache(name) => (bus::Action::ClearCache, name),
    };
    bus::apply_locally(action, target, 0);
    let rt = runtime();
    let Some(r) = &rt.redis else {
        return Ok(());
    };
    let prefix = &rt.config.key_prefix;
    let key = scope_key(prefix, scope);
    let channel = bus::channel(prefix);
    // Deferred unless Redis confirms it: after a failure, and with a caller cancelled before
    // Redis answered, when the token may still be there.
    let unconfirmed = scopeguard::guard((), |()| {
        r.defer(PendingOp::Scope {
            key: key.clone(),
            channel: channel.clone(),
            action,
            target: target.to_string(),
        });
    });
    let res = r
        .invalidate_scope(
            r.scope_keys(prefix, &key),
            fresh_token(action == bus::Action::Tag),
            channel.clone(),
            bus::message(action, target),
        )
        .await;
    if res.is_ok() {
        ScopeGuard::into_inner(unconfirmed);
        // Again after Redis: a load here may have read the old token meanwhile (other
        // processes apply the bus message, which is published after the delete).
        bus::apply_locally(action, target, 0);
    } else {
        drop(unconfirmed);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_scheme_is_the_documented_one() {
        let key = Key::new("user:42").with_tags(vec!["t:1".into(), "t:2".into()]);
        let b = redis_bucket("user:42");
        assert!(b < REDIS_BUCKETS);
        for striped in [false, true] {
            let schema = KeySchema::from_fingerprint(3, 0x0123_4567_89ab_cdef);
            assert_eq!(schema.to_string(), "3.888888", "version . digest");
            let keys = KeyScheme::with_layout("cr", "app::user", schema, striped);
            let entry = keys.entry(&key, true);
            assert_eq!(entry.value, format!("{{cr:{b}}}:v2:3.888888:user:42"));
            assert_eq!(entry.ticket, format!("{{cr:{b}}}:t:user:42"));
            assert_eq!(entry.lock, format!("{{cr:{b}}}:l:3.888888:user:42"));
            assert_eq!(keys.channel, "cr:bus:1");
            assert_eq!(
                crate::key::redis_keys("cr", schema, "user:42"),
                (
                    entry.value.clone(),
                    entry.ticket.clone(),
                    entry.lock.clone()
                )
            );
            let stamps: Vec<&str> = entry.stamps.iter().map(|s| &**s).collect();
            if !striped {
                assert_eq!(
                    stamps,
                    [
                        "{cr:scopes}:c:app::user",
                        "{cr:scopes}:a",
                        "{cr:scopes}:t:t:1",
                        "{cr:scopes}:t:t:2"
                    ]
                );
                continue;
            }
            assert_eq!(
                stamps,
                [
                    format!("{{cr:{b}}}:s:c:app::user"),
                    format!("{{cr:{b}}}:s:a"),
                    format!("{{cr:{b}}}:s:t:t:1"),
                    format!("{{cr:{b}}}:s:t:t:2"),
                ]
            );
            let every = |scope| crate::key::scope_token_keys("cr", &scope_key("cr", scope));
            assert_eq!(every(Scope::Tag("t:1"))[b as usize], stamps[2]);
            assert_eq!(every(Scope::All)[b as usize], stamps[1]);
            // Every key of an entry shares its bucket's slot (one MGET, single-slot scripts).
            let slot = crate::key::cluster_slot(&entry.value);
            for k in stamps.iter().copied().chain([&*entry.ticket, &*entry.lock]) {
                assert_eq!(crate::key::cluster_slot(k), slot, "{k}");
            }
        }
    }

    /// The keys a hit writes straight into its `MGET` are the scheme's, byte for byte.
    #[cfg(feature = "redis")]
    #[test]
    fn a_hit_reads_the_schemes_keys() {
        let long = "x".repeat(80);
        let key = Key::new("user:42").with_tags(vec!["t:1".into(), long]);
        for striped in [false, true] {
            let schema = KeySchema::from_fingerprint(3, 7);
            let keys = KeyScheme::with_layout("cr", "app::user", schema, striped);
            let entry = keys.entry(&key, false);
            let mget = crate::redis_tier::mget_command(&keys.read_keys(&key));
            let args: Vec<String> = mget
                .args_iter()
                .map(|a| match a {
                    redis::Arg::Simple(b) => String::from_utf8(b.to_vec()).unwrap(),
                    _ => unreachable!("a key is a simple argument"),
                })
                .collect();
            let mut want = vec!["MGET".to_string(), entry.value, entry.ticket];
            want.extend(entry.stamps.iter().map(|s| s.to_string()));
            assert_eq!(args, want);
            if striped {
                let slot = crate::key::cluster_slot(&want[1]);
                assert_eq!(keys.read_keys(&key).slot, slot);
            }
        }
    }

    #[test]
    fn tickets_are_random_and_never_zero() {
        let a: std::collections::HashSet<u64> = (0..10_000).map(|_| new_ticket()).collect();
        assert_eq!(a.len(), 10_000);
        assert!(!a.contains(&0));
    }
}
