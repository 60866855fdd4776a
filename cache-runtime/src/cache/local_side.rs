//! The local side of a [`Cache`]: generations (so a value read or computed before a write is
//! never stored after it), the glue to the local tier (peek, hit, store, promote, drop), and
//! the bus targets through which other processes' writes reach this process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bus;
use crate::coarse_clock::Stamp;
use crate::entry::Meta;
use crate::flight::Flights;
use crate::local::{Fresh, LocalTier, Stored};
use crate::tier::Key;

use super::flow::Got;
use super::Cache;

/// Striped generation counters. Every explicit write (invalidate, populate, refresh, clear,
/// a bus eviction) bumps the key's stripe under its lock; a body result or a Redis promotion
/// is stored locally only if the stripe did not move since the lookup started, so a value
/// computed before an invalidation is never stored after it.
///
/// A stripe's count is an atomic beside its lock: reading it (a lookup's start) takes no
/// lock; moving it (a bump) and acting on it (a store) do, so a store and a bump of one
/// stripe never interleave.
pub(super) struct Generations {
    stripes: Box<[Stripe]>,
}

/// One stripe: its count, changed only under `lock`.
struct Stripe {
    lock: Mutex<()>,
    count: AtomicU64,
}

const STRIPES: usize = 64;

impl Generations {
    pub(super) fn new() -> Self {
        Self {
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    lock: Mutex::new(()),
                    count: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    fn stripe(&self, key: &str) -> &Stripe {
        // Any hash that spreads keys over stripes will do; it never leaves the process.
        let h = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        &self.stripes[(h % STRIPES as u64) as usize]
    }

    /// The key's generation now. Without the lock: a bump that this read misses is one the
    /// store's check ([`if_current`](Self::if_current), under the lock) sees.
    pub(super) fn current(&self, key: &str) -> u64 {
        self.stripe(key).count.load(Ordering::Acquire)
    }

    /// Bumps the generation and runs `f` while holding the stripe.
    pub(super) fn bump_with(&self, key: &str, f: impl FnOnce()) {
        let stripe = self.stripe(key);
        let _held = stripe.lock.lock().unwrap_or_else(|p| p.into_inner());
        stripe.count.fetch_add(1, Ordering::AcqRel);
        f();
    }

    /// Runs `f` only if the generation is still `seen`.
    pub(super) fn if_current(&self, key: &str, seen: u64, f: impl FnOnce()) -> bool {
        let stripe = self.stripe(key);
        let _held = stripe.lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = stripe.count.load(Ordering::Acquire) == seen;
        if current {
            f();
        }
        current
    }

    fn bump_all(&self) {
        for s in self.stripes.iter() {
            let _held = s.lock.lock().unwrap_or_else(|p| p.into_inner());
            s.count.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The local tier with its generations; registered with the bus.
pub(super) struct LocalSide<V> {
    /// What `clear()` messages name (see `CacheBuilder::key_space`).
    pub(super) clear_scope: String,
    pub(super) tier: LocalTier<V>,
    pub(super) generations: Generations,
    pub(super) shared: bool,
    /// Whether entries carry tags: an untagged cache ignores tag invalidations.
    pub(super) tagged: bool,
    pub(super) flights: Arc<Flights<Got<V>>>,
}

/// A Redis-only cache's in-flight bodies, registered with the bus so that a write elsewhere
/// keeps later callers from joining a body that started before it.
pub(super) struct FlightSide<V> {
    pub(super) clear_scope: String,
    pub(super) flights: Arc<Flights<Got<V>>>,
    pub(super) tagged: bool,
}

impl<V: Send + Sync + 'static> bus::Target for FlightSide<V> {
    fn clear_scope(&self) -> &str {
        &self.clear_scope
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
    fn clear_scope(&self) -> &str {
        &self.clear_scope
    }

    fn shared(&self) -> bool {
        self.shared
    }

    /// Unconditional (docs/PROTOCOL.md §5.1): whatever the copy, it goes.
    fn evict(&self, key: &str, _generation: u64) {
        self.flights.detach(key);
        // Every stored copy is below `u64::MAX`: removed whatever it was written under.
        self.generations
            .bump_with(key, || self.tier.remove_older_than(key, u64::MAX));
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

/// A key as the local side reads it: the logical key and its tags, borrowed (from a
/// [`Key`], or from a blocking call's key still on its stack).
pub(super) type Named<'a> = (&'a str, &'a [String]);

/// `key` as the local side reads it.
pub(super) fn named(key: &Key) -> Named<'_> {
    (&key.logical, &key.tags)
}

/// When and under what a value was written: the generation (first stamp) it was written
/// under, when its Redis write began, and its TTL.
#[derive(Clone, Copy)]
pub(super) struct Written {
    pub(super) generation: u64,
    /// Both clocks, read once: the entry's lifetime starts at its precise reading, and the
    /// insert builds the entry's coarse check from it (no clock read at the insert).
    pub(super) start: Stamp,
    pub(super) ttl: Duration,
}

/// Registers a bus target; the bus keeps it only while the cache holds the `Arc`. A
/// Redis-only cache's flights are one (this process's writes detach them) without needing
/// the subscription: they vouch for their values with the store (docs/PROTOCOL.md §13 F9).
pub(super) fn register<T: bus::Target + 'static>(target: &Arc<T>) {
    let weak: std::sync::Weak<dyn bus::Target> =
        Arc::downgrade(target) as std::sync::Weak<dyn bus::Target>;
    bus::register(weak);
}

impl<V: Clone + Send + Sync + 'static> Cache<V> {
    /// A fresh local copy, if it may be served: a `local+redis` cache serves its copies only
    /// while the bus is trusted (docs/PROTOCOL.md §5.4); otherwise the call goes on to Redis.
    pub(super) fn local_peek(&self, key: &str) -> Option<(V, Meta)> {
        let local = self.local.as_ref()?;
        if local.shared && !bus::trusted() {
            return None;
        }
        local.tier.get(key)
    }

    /// A local copy kept past its TTL, as a fallback. A `local+redis` cache's copy only while
    /// the bus is trusted (another process may have invalidated it unheard: an invalidated
    /// value is never a fallback), or when `outage` (Redis did not answer this call's read:
    /// the fail-safe's documented fallback during an outage, when the body fails too).
    pub(super) fn local_stale(&self, key: &str, outage: bool) -> Option<(V, Meta)> {
        let local = self.local.as_ref()?;
        if local.shared && !outage && !bus::trusted() {
            return None;
        }
        local.tier.get_stale(key)
    }

    pub(super) fn local_hit(&self, key: &str) -> Option<(V, Meta)> {
        let hit = self.local_peek(key)?;
        self.counters.local_hits.add(1);
        Some(hit)
    }

    /// [`local_hit`](Self::local_hit), uncloned: the fast path of a plain call, inlined into
    /// it (same trust check, same counter). The caller clones the value into its return
    /// slot; the entry is released after that.
    #[inline]
    pub(super) fn local_hit_fresh(&self, key: &str) -> Option<Fresh<V>> {
        let local = self.local.as_ref()?;
        if local.shared && !bus::trusted() {
            return None;
        }
        let hit = local.tier.get_fresh(key)?;
        self.counters.local_hits.add(1);
        Some(hit)
    }

    pub(super) fn local_generation(&self, key: &str) -> u64 {
        self.local
            .as_ref()
            .map_or(0, |l| l.generations.current(key))
    }

    pub(super) fn drop_local(&self, key: &str) {
        self.flights.detach(key);
        if let Some(local) = &self.local {
            local.generations.bump_with(key, || local.tier.remove(key));
        }
    }

    /// An entry's weight: 1, or its estimated bytes when bounded by `max_bytes`. A value in
    /// memory (headers, heap blocks) is about 3 × its compact encoding, and the store's
    /// bookkeeping plus ours is at most about 480 bytes per entry: calibrated with
    /// `examples/bounded_memory.rs` on moka (see docs/BENCHMARKS.md; quick_cache's own
    /// bookkeeping is smaller, docs/LOCAL_TIER.md), so that `max_bytes` bounds resident memory.
    fn weight_of(&self, key: &str, value: &V) -> u32 {
        const ENTRY_OVERHEAD: usize = 480;
        match self.weigh {
            Some(size) => {
                (key.len() + 3 * size(value) + ENTRY_OVERHEAD).min(u32::MAX as usize) as u32
            }
            None => 1,
        }
    }

    /// A local entry for a value just stored (by a body or an explicit write): fresh for
    /// `min(local_ttl, ttl)` from its Redis write's start, kept as a stale fallback as long
    /// as Redis keeps it.
    fn entry_for(&self, key: Named<'_>, value: V, meta: Meta, w: Written) -> Stored<V> {
        let start = w.start.instant();
        let lifetime = (
            start + self.local_ttl.min(w.ttl),
            start + w.ttl + self.stale_window(),
        );
        self.entry_with(key, value, meta, w.generation, lifetime)
    }

    /// A local entry fresh until `fresh_until` and kept as a fallback until `deadline`.
    /// Weighed here, before any stripe is taken: only the insert runs under it.
    fn entry_with(
        &self,
        (logical, tags): Named<'_>,
        value: V,
        meta: Meta,
        generation: u64,
        (fresh_until, deadline): (Instant, Instant),
    ) -> Stored<V> {
        Stored {
            weight: self.weight_of(logical, &value),
            value,
            fresh_until,
            deadline,
            generation,
            // No allocation for an untagged entry.
            tags: (!tags.is_empty()).then(|| tags.into()),
            meta,
        }
    }

    /// Stores a body result locally if no local write happened since the lookup (`seen`).
    pub(super) fn store_local_if_current(
        &self,
        key: Named<'_>,
        value: &V,
        meta: Meta,
        written: Written,
        seen: u64,
    ) -> Option<bool> {
        let local = self.local.as_ref()?;
        // Cloned only here: a cache without a local tier copies nothing.
        let entry = self.entry_for(key, value.clone(), meta, written);
        Some(local.generations.if_current(key.0, seen, || {
            local.tier.insert_at(key.0, entry, written.start)
        }))
    }

    /// Stores an explicit write locally, bumping the generation (so loads that started
    /// before it do not overwrite it).
    pub(super) fn store_local_bumped(&self, key: &Key, value: V, meta: Meta, written: Written) {
        let Some(local) = &self.local else {
            return;
        };
        let entry = self.entry_for(named(key), value, meta, written);
        local.generations.bump_with(&key.logical, || {
            local.tier.insert_at(&key.logical, entry, written.start)
        });
    }

    /// Promotes a value read from Redis at `sent` (`pttl`: its remaining Redis lifetime),
    /// unless a local write happened since the lookup (`seen`). A current value is fresh for
    /// at most `local_ttl` and never past Redis's own expiry; a value past its TTL (`fresh`
    /// false) is kept only as a fail-safe fallback, never a hit.
    pub(super) fn promote(
        &self,
        key: &Key,
        (value, meta): (&V, Meta),
        generation: u64,
        (sent, pttl, fresh): (Instant, Option<Duration>, bool),
        seen: u64,
    ) {
        let Some(local) = &self.local else {
            return;
        };
        let lifetime = if fresh {
            // Redis keeps the value `stale` past its TTL: only the rest is fresh.
            let until_stale_end = pttl.unwrap_or(self.local_ttl + self.stale_window());
            let fresh = until_stale_end
                .saturating_sub(self.stale_window())
                .min(self.local_ttl);
            (sent + fresh, sent + until_stale_end.max(fresh))
        } else {
            match (pttl, &self.fail_safe) {
                (Some(pttl), Some(_)) => (sent, sent + pttl),
                _ => return,
            }
        };
        let entry = self.entry_with(named(key), value.clone(), meta, generation, lifetime);
        local.generations.if_current(&key.logical, seen, || {
            local.tier.insert(&key.logical, entry)
        });
    }
}
