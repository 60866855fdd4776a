//! The in-process tier: a moka cache with a deadline per entry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache as Moka;
use moka::Expiry;

use crate::entry::Meta;

#[derive(Clone)]
struct Entry<V> {
    value: V,
    /// Served until then; kept until `deadline` as a stale fallback (`stale = ...`).
    fresh_until: Instant,
    deadline: Instant,
    epoch: u64,
    /// The Redis generation the value was read or written under (0 without Redis).
    generation: u64,
    /// Tags of the entry, for tag invalidation (empty for untagged caches).
    tags: Arc<[String]>,
    /// Estimated bytes, for a cache bounded by `max_bytes` (1 otherwise).
    weight: u32,
    /// Creation time, expiry and ETag (for HTTP responses), computed once at insert.
    meta: Meta,
}

/// Expires each entry at its own deadline: a value promoted from Redis must not outlive the
/// Redis copy it came from.
struct DeadlineExpiry;

impl<V> Expiry<String, Entry<V>> for DeadlineExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &Entry<V>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(entry.deadline.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &Entry<V>,
        updated_at: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.deadline.saturating_duration_since(updated_at))
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
    pub tags: Arc<[String]>,
    /// Estimated bytes for a `max_bytes` cache, 1 otherwise.
    pub weight: u32,
    pub meta: Meta,
}

pub(crate) struct LocalTier<V> {
    moka: Moka<String, Entry<V>>,
    /// Bumped by `clear`: entries from an older epoch are never returned, even before moka's
    /// lazy `invalidate_all` has reached them.
    epoch: AtomicU64,
    /// Every entry lives the same TTL, enforced by moka itself: no per-entry expiry and no
    /// clock read on a hit.
    uniform: bool,
}

impl<V: Clone + Send + Sync + 'static> LocalTier<V> {
    /// `capacity` counts entries, or bytes when `weighted` (then every insert says its weight).
    /// `uniform_ttl`: every entry has this TTL (a local-only cache without jitter, stale or a
    /// separate `none_ttl`), so moka's cheaper time-to-live replaces per-entry deadlines.
    pub(crate) fn new(
        name: &str,
        capacity: u64,
        tagged: bool,
        weighted: bool,
        uniform_ttl: Option<Duration>,
    ) -> Self {
        let builder = Moka::builder().name(name).max_capacity(capacity);
        let builder = match uniform_ttl {
            Some(ttl) => builder.time_to_live(ttl),
            None => builder.expire_after(DeadlineExpiry),
        };
        let builder = if weighted {
            builder.weigher(|_: &String, e: &Entry<V>| e.weight)
        } else {
            builder
        };
        let moka = if tagged {
            builder.support_invalidation_closures().build()
        } else {
            builder.build()
        };
        Self {
            moka,
            epoch: AtomicU64::new(0),
            uniform: uniform_ttl.is_some(),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<(V, Meta)> {
        let entry = self.moka.get(key)?;
        let fresh = self.uniform || entry.fresh_until > Instant::now();
        (fresh && entry.epoch == self.epoch.load(Ordering::Acquire))
            .then_some((entry.value, entry.meta))
    }

    /// A fresh or stale (past `fresh_until`, before `deadline`) value.
    pub(crate) fn get_stale(&self, key: &str) -> Option<(V, Meta)> {
        let entry = self.moka.get(key)?;
        (entry.deadline > Instant::now() && entry.epoch == self.epoch.load(Ordering::Acquire))
            .then_some((entry.value, entry.meta))
    }

    pub(crate) fn insert(&self, key: String, stored: Stored<V>) {
        let Stored {
            value,
            fresh_until,
            deadline,
            generation,
            tags,
            weight,
            meta,
        } = stored;
        if deadline <= Instant::now() {
            self.moka.invalidate(&key);
            return;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        self.moka.insert(
            key,
            Entry {
                value,
                fresh_until: fresh_until.min(deadline),
                deadline,
                epoch,
                generation,
                tags,
                weight,
                meta,
            },
        );
    }

    pub(crate) fn remove(&self, key: &str) {
        self.moka.invalidate(key);
    }

    /// Removes the entry unless it already is at `generation` or newer.
    pub(crate) fn remove_older_than(&self, key: &str, generation: u64) {
        if let Some(e) = self.moka.get(key) {
            if e.generation < generation {
                self.moka.invalidate(key);
            }
        }
    }

    /// Removes every entry carrying `tag` (a no-op for an untagged cache).
    pub(crate) fn remove_tagged(&self, tag: &str) {
        let tag = tag.to_string();
        let _ = self
            .moka
            .invalidate_entries_if(move |_, e| e.tags.contains(&tag));
    }

    pub(crate) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.moka.invalidate_all();
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.moka.run_pending_tasks();
        self.moka.entry_count()
    }

    /// Total weight (bytes for a `max_bytes` cache, entries otherwise).
    pub(crate) fn weighted_size(&self) -> u64 {
        self.moka.run_pending_tasks();
        self.moka.weighted_size()
    }
}
