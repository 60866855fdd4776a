//! The in-process tier: a `quick_cache` store (sharded, S3-FIFO eviction, bounded by entries
//! or by weight) with a deadline per entry, checked on read.
//!
//! Why `quick_cache` and not moka (which this tier used before): a hit costs about a quarter
//! of moka's store work (no read buffer, no maintenance, no per-entry timer wheel) and its hit
//! ratio on Zipf traces is as good or better. Measurements and the decision:
//! `docs/LOCAL_TIER.md`.
//!
//! Expiry is lazy: an entry past its deadline is never returned and is removed when read (or
//! evicted like any other entry). Until then it counts against the capacity, so the bound
//! holds whatever the clock does.
//!
//! A hit checks freshness on the coarse clock while its entry is far from stale, and on the
//! precise one in the last [`MAX_LAG`](crate::coarse_clock::MAX_LAG) before it
//! ([`coarse_clock`](crate::coarse_clock)): an entry is never served past `fresh_until`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quick_cache::sync::Cache as Store;
use quick_cache::{OptionsBuilder, Weighter};
use smol_str::SmolStr;

use crate::coarse_clock::{Stamp, SurelyBefore};
use crate::entry::Meta;

/// One stored value. The store holds it behind an `Arc`: a hit clones the pointer under the
/// shard's read lock and then only the value, instead of copying the whole entry out
/// (docs/LOCAL_TIER.md, third round). One more allocation per insert, none per hit.
struct Entry<V> {
    value: V,
    /// Creation time, expiry and ETag (for HTTP responses), computed once at insert.
    meta: Meta,
    /// Served until then; kept until `deadline` as a stale fallback (`stale = ...`).
    fresh_until: Instant,
    /// `fresh_until` on the coarse clock: while it holds, a hit reads no precise clock.
    surely_fresh: SurelyBefore,
    /// Never served from then on (a stale fallback either).
    deadline: Instant,
    /// The tier's epoch at insert: entries of an older epoch (before a `clear`) are dead.
    epoch: u64,
    /// The Redis generation the value was read or written under (0 without Redis).
    generation: u64,
    /// Tags of the entry, for tag invalidation (`None` when it has none: a hit clones no
    /// `Arc` then).
    tags: Option<Arc<[String]>>,
    /// Estimated bytes, for a cache bounded by `max_bytes` (1 otherwise). Never 0: quick_cache
    /// never evicts a weightless entry.
    weight: u32,
}

/// A fresh entry as read from the tier (shared with it: holding it costs no copy).
pub(crate) struct Fresh<V>(Arc<Entry<V>>);

impl<V> Fresh<V> {
    /// The value.
    #[inline]
    pub(crate) fn value(&self) -> &V {
        &self.0.value
    }

    /// Its creation time, expiry and ETag.
    #[inline]
    pub(crate) fn meta(&self) -> Meta {
        self.0.meta
    }
}

/// Weighs an entry by what the cache computed at insert.
#[derive(Clone, Copy)]
struct ByWeight;

impl<V> Weighter<SmolStr, Arc<Entry<V>>> for ByWeight {
    fn weight(&self, _key: &SmolStr, entry: &Arc<Entry<V>>) -> u64 {
        u64::from(entry.weight)
    }
}

/// What to insert: a value with its lifetime, generation and validators.
pub(crate) struct Stored<V> {
    pub value: V,
    /// Served until then; kept until `deadline` as a stale fallback.
    pub fresh_until: Instant,
    pub deadline: Instant,
    /// The Redis generation the value was read or written under (0 without Redis).
    pub generation: u64,
    /// The entry's tags (`None` for an untagged entry).
    pub tags: Option<Arc<[String]>>,
    /// Estimated bytes for a `max_bytes` cache, 1 otherwise.
    pub weight: u32,
    pub meta: Meta,
}

/// Assumed mean weight of an entry of a `max_bytes` cache, to size quick_cache's shards and
/// ghost list (a hint: the bound itself is by weight). About the calibrated weight of a
/// ~1 KB value (see `local_side::weight_of`).
const MEAN_WEIGHT: u64 = 4096;

/// Smallest number of entries a shard is sized for (quick_cache's own rule): fewer shards for
/// small caches, so that one entry may weigh up to about `capacity / shards`.
const MIN_SHARD_ENTRIES: u64 = 32;

pub(crate) struct LocalTier<V> {
    /// Hashed with foldhash (a per-process random seed), as the flight map. Keys up to 23
    /// bytes are inline (`SmolStr`, as a flight's): storing one copies the caller's key
    /// without an allocation. A `SmolStr` hashes and compares as its `str`.
    store: Store<SmolStr, Arc<Entry<V>>, ByWeight, foldhash::fast::RandomState>,
    /// Bumped by `clear`: entries inserted under an older epoch are never returned, even if
    /// an insert raced with the clear.
    epoch: AtomicU64,
}

impl<V: Clone + Send + Sync + 'static> LocalTier<V> {
    /// `capacity` counts entries, or bytes when `weighted` (then every insert says its weight).
    /// The total weight never exceeds `capacity`. Tags are matched on invalidation, and every
    /// entry's deadline is checked on read, so neither needs a setting here.
    pub(crate) fn new(capacity: u64, weighted: bool) -> Self {
        let capacity = capacity.max(1);
        let items = if weighted {
            (capacity / MEAN_WEIGHT).max(1)
        } else {
            capacity
        };
        // quick_cache's default (4 per core, a power of two), halved while a shard would be
        // sized for fewer than 32 entries.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let mut shards = (cores * 4).next_power_of_two();
        while shards > 1 && items / shards < MIN_SHARD_ENTRIES {
            shards /= 2;
        }
        // Each shard holds `capacity / shards` (rounded down): the sum never passes `capacity`.
        let per_shard = (capacity / shards).max(1);
        let options = OptionsBuilder::new()
            .shards(shards as usize)
            .estimated_items_capacity(items.max(shards * MIN_SHARD_ENTRIES) as usize)
            .weight_capacity(per_shard * shards)
            .build()
            .expect("every option is set");
        Self {
            store: Store::with_options(
                options,
                ByWeight,
                foldhash::fast::RandomState::default(),
                Default::default(),
            ),
            epoch: AtomicU64::new(0),
        }
    }

    /// A fresh value (before its `fresh_until`, of the current epoch) with its metadata.
    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<(V, Meta)> {
        self.get_fresh(key).map(|e| (e.value().clone(), e.meta()))
    }

    /// The entry of `key` if it is fresh, not cloned: a plain hit clones the value alone,
    /// straight into its return slot.
    #[inline]
    pub(crate) fn get_fresh(&self, key: &str) -> Option<Fresh<V>> {
        let entry = self.store.get(key)?;
        let current = entry.epoch == self.epoch.load(Ordering::Acquire);
        if current && entry.surely_fresh.holds() {
            return Some(Fresh(entry));
        }
        let now = Instant::now();
        if current && entry.fresh_until > now {
            return Some(Fresh(entry));
        }
        self.drop_expired(key, now, entry.deadline);
        None
    }

    /// A fresh or stale (past `fresh_until`, before `deadline`) value.
    pub(crate) fn get_stale(&self, key: &str) -> Option<(V, Meta)> {
        let entry = self.store.get(key)?;
        let now = Instant::now();
        if entry.deadline > now && entry.epoch == self.epoch.load(Ordering::Acquire) {
            return Some((entry.value.clone(), entry.meta));
        }
        self.drop_expired(key, now, entry.deadline);
        None
    }

    /// Frees an entry read past its deadline (unless it was replaced meanwhile).
    #[cold]
    fn drop_expired(&self, key: &str, now: Instant, deadline: Instant) {
        if deadline <= now {
            self.store.remove_if(key, |e| e.deadline <= now);
        }
    }

    /// Stores `stored` under `key`, its deadline check built from the clocks read now.
    pub(crate) fn insert(&self, key: &str, stored: Stored<V>) {
        self.insert_at(key, stored, Stamp::now());
    }

    /// [`insert`](Self::insert) with the clocks as `now` read them, earlier (a store reads
    /// them once, when its value is ready): the entry's coarse check is then built from that
    /// reading, which only shortens the time it holds (`SurelyBefore::stamped`); a value
    /// whose deadline passed since is stored dead (never returned, freed when read) instead of
    /// removing the key.
    pub(crate) fn insert_at(&self, key: &str, stored: Stored<V>, now: Stamp) {
        let Stored {
            value,
            fresh_until,
            deadline,
            generation,
            tags,
            weight,
            meta,
        } = stored;
        if deadline <= now.instant() {
            self.store.remove(key);
            return;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let fresh_until = fresh_until.min(deadline);
        // An entry heavier than a shard's capacity is not kept (and any older one of the key
        // is removed): quick_cache's rule, as moka's for one heavier than the whole cache.
        self.store.insert(
            SmolStr::new(key),
            Arc::new(Entry {
                value,
                meta,
                fresh_until,
                surely_fresh: SurelyBefore::stamped(fresh_until, now),
                deadline,
                epoch,
                generation,
                tags,
                weight: weight.max(1),
            }),
        );
    }

    pub(crate) fn remove(&self, key: &str) {
        self.store.remove(key);
    }

    /// Removes the entry unless it already is at `generation` or newer.
    pub(crate) fn remove_older_than(&self, key: &str, generation: u64) {
        self.store.remove_if(key, |e| e.generation < generation);
    }

    /// Removes every entry carrying `tag` (none in an untagged cache). Synchronous: one pass
    /// over the entries, each shard under its write lock in turn.
    pub(crate) fn remove_tagged(&self, tag: &str) {
        self.store
            .retain(|_, e| e.tags.as_ref().is_none_or(|t| !t.iter().any(|x| x == tag)));
    }

    /// Drops every entry; those inserted concurrently under the old epoch are never returned.
    pub(crate) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.store.clear();
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.store.len() as u64
    }

    /// Total weight (bytes for a `max_bytes` cache, entries otherwise).
    pub(crate) fn weighted_size(&self) -> u64 {
        self.store.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meta() -> Meta {
        Meta::fresh(Duration::from_secs(60), None)
    }

    fn stored(value: u64, fresh: Duration, deadline: Duration, tags: &[&str]) -> Stored<u64> {
        let now = Instant::now();
        Stored {
            value,
            fresh_until: now + fresh,
            deadline: now + deadline,
            generation: 0,
            tags: (!tags.is_empty()).then(|| tags.iter().map(|t| t.to_string()).collect()),
            weight: 1,
            meta: meta(),
        }
    }

    fn tier(capacity: u64) -> LocalTier<u64> {
        LocalTier::new(capacity, false)
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_value_past_fresh_until_is_not_a_hit_but_a_stale_fallback() {
        let t = tier(100);
        t.insert("k", stored(7, Duration::ZERO, MIN, &[]));
        assert_eq!(t.get("k").map(|(v, _)| v), None);
        assert_eq!(t.get_stale("k").map(|(v, _)| v), Some(7));
        t.insert("f", stored(8, MIN, MIN, &[]));
        assert_eq!(t.get("f").map(|(v, _)| v), Some(8));
    }

    #[test]
    fn an_entry_past_its_deadline_is_never_returned_and_is_freed_when_read() {
        let t = tier(100);
        let short = Duration::from_millis(20);
        t.insert("k", stored(7, short, short, &[]));
        assert_eq!(t.entry_count(), 1);
        std::thread::sleep(short * 3);
        assert!(t.get("k").is_none());
        assert!(t.get_stale("k").is_none());
        assert_eq!(t.entry_count(), 0, "the expired entry was freed on read");
    }

    /// Hits check freshness on the coarse clock while the entry is far from stale: however
    /// far, no entry is served once the precise clock has reached its `fresh_until`.
    #[test]
    fn no_entry_is_served_past_fresh_until() {
        let lag = crate::coarse_clock::MAX_LAG;
        let t = tier(100);
        let lives = [
            Duration::from_millis(3),
            lag,
            lag + Duration::from_millis(7),
            lag * 2,
        ];
        let start = Instant::now();
        for (i, life) in lives.iter().enumerate() {
            let mut s = stored(i as u64, MIN, MIN, &[]);
            s.fresh_until = start + *life;
            t.insert(&format!("k{i}"), s);
        }
        let mut hits = 0;
        while Instant::now() < start + lag * 3 {
            for (i, life) in lives.iter().enumerate() {
                let read_at = Instant::now();
                let hit = t.get(&format!("k{i}"));
                if read_at >= start + *life {
                    assert!(hit.is_none(), "k{i} served past its fresh_until");
                } else if hit.is_some() {
                    hits += 1;
                }
            }
            std::thread::yield_now();
        }
        assert!(hits > 0, "fresh entries were served");
        for i in 0..lives.len() {
            assert_eq!(
                t.get_stale(&format!("k{i}")).map(|(v, _)| v),
                Some(i as u64)
            );
        }
    }

    #[test]
    fn an_insert_already_past_its_deadline_removes_the_older_value() {
        let t = tier(100);
        t.insert("k", stored(7, MIN, MIN, &[]));
        let mut dead = stored(8, MIN, MIN, &[]);
        dead.deadline = Instant::now();
        t.insert("k", dead);
        assert!(t.get_stale("k").is_none());
        assert_eq!(t.entry_count(), 0);
    }

    #[test]
    fn the_entry_bound_holds() {
        for capacity in [1, 16, 100, 1_000, 10_000] {
            let t = tier(capacity);
            for i in 0..capacity * 5 + 100 {
                t.insert(&format!("k{i}"), stored(i, MIN, MIN, &[]));
                assert!(t.entry_count() <= capacity, "capacity {capacity}");
            }
            assert!(
                t.entry_count() * 10 >= capacity * 9,
                "{} of {capacity} entries used",
                t.entry_count()
            );
        }
    }

    #[test]
    fn the_byte_bound_holds() {
        let capacity = 256 * 1024;
        let t: LocalTier<u64> = LocalTier::new(capacity, true);
        for i in 0..2_000u64 {
            let mut s = stored(i, MIN, MIN, &[]);
            s.weight = 1_000 + (i % 7) as u32 * 500;
            t.insert(&format!("k{i}"), s);
            assert!(t.weighted_size() <= capacity);
        }
        assert!(t.weighted_size() * 10 >= capacity * 8, "mostly used");
        // Heavier than the cache: not kept, and an older value of the key goes too.
        let mut huge = stored(1, MIN, MIN, &[]);
        huge.weight = capacity as u32 + 1;
        t.insert("k1999", huge);
        assert!(t.get("k1999").is_none());
        assert!(t.weighted_size() <= capacity);
    }

    #[test]
    fn clear_drops_every_entry_and_a_racing_insert_of_the_old_epoch() {
        let t = tier(100);
        t.insert("a", stored(1, MIN, MIN, &[]));
        // An insert that read the epoch before the clear but stores after it.
        let old_epoch = t.epoch.load(Ordering::Acquire);
        t.clear();
        assert!(t.get("a").is_none());
        assert_eq!(t.entry_count(), 0);
        let now = Instant::now();
        t.store.insert(
            "late".into(),
            Arc::new(Entry {
                value: 2,
                meta: meta(),
                fresh_until: now + MIN,
                surely_fresh: SurelyBefore::new(now + MIN),
                deadline: now + MIN,
                epoch: old_epoch,
                generation: 0,
                tags: None,
                weight: 1,
            }),
        );
        assert!(t.get("late").is_none());
        assert!(t.get_stale("late").is_none());
        t.insert("b", stored(3, MIN, MIN, &[]));
        assert_eq!(t.get("b").map(|(v, _)| v), Some(3));
    }

    #[test]
    fn a_tag_removes_only_the_entries_carrying_it() {
        let t = tier(100);
        t.insert("a", stored(1, MIN, MIN, &["t:1"]));
        t.insert("b", stored(2, MIN, MIN, &["t:2", "t:1"]));
        t.insert("c", stored(3, MIN, MIN, &["t:2"]));
        t.insert("d", stored(4, MIN, MIN, &[]));
        t.remove_tagged("t:1");
        assert!(t.get("a").is_none());
        assert!(t.get("b").is_none());
        assert_eq!(t.get("c").map(|(v, _)| v), Some(3));
        assert_eq!(t.get("d").map(|(v, _)| v), Some(4));
        assert_eq!(t.entry_count(), 2);
    }

    #[test]
    fn remove_older_than_keeps_newer_generations() {
        let t = tier(100);
        let mut s = stored(1, MIN, MIN, &[]);
        s.generation = 5;
        t.insert("k", s);
        t.remove_older_than("k", 5);
        assert_eq!(t.get("k").map(|(v, _)| v), Some(1));
        t.remove_older_than("k", 6);
        assert!(t.get("k").is_none());
    }

    #[test]
    fn many_threads_share_one_tier_within_its_bound() {
        let t = Arc::new(tier(500));
        std::thread::scope(|s| {
            for w in 0..4u64 {
                let t = &t;
                s.spawn(move || {
                    for i in 0..5_000u64 {
                        let k = format!("k{}", (i * 7 + w) % 2_000);
                        match t.get(&k) {
                            Some((v, _)) => assert_eq!(format!("k{v}"), k),
                            None => t.insert(&k, stored((i * 7 + w) % 2_000, MIN, MIN, &[])),
                        }
                    }
                });
            }
        });
        assert!(t.entry_count() <= 500);
    }
}
