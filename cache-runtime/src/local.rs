//! The in-process tier: a moka cache with a deadline per entry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::sync::Cache as Moka;
use moka::Expiry;

#[derive(Clone)]
struct Entry<V> {
    value: V,
    deadline: Instant,
    epoch: u64,
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

pub(crate) struct LocalTier<V> {
    moka: Moka<String, Entry<V>>,
    /// Bumped by `clear`: entries from an older epoch are never returned, even before moka's
    /// lazy `invalidate_all` has reached them.
    epoch: AtomicU64,
}

impl<V: Clone + Send + Sync + 'static> LocalTier<V> {
    pub(crate) fn new(name: &str, capacity: u64) -> Self {
        Self {
            moka: Moka::builder()
                .name(name)
                .max_capacity(capacity)
                .expire_after(DeadlineExpiry)
                .build(),
            epoch: AtomicU64::new(0),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<V> {
        let entry = self.moka.get(key)?;
        (entry.deadline > Instant::now() && entry.epoch == self.epoch.load(Ordering::Acquire))
            .then_some(entry.value)
    }

    pub(crate) fn insert(&self, key: String, value: V, deadline: Instant) {
        if deadline <= Instant::now() {
            self.moka.invalidate(&key);
            return;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        self.moka.insert(
            key,
            Entry {
                value,
                deadline,
                epoch,
            },
        );
    }

    pub(crate) fn remove(&self, key: &str) {
        self.moka.invalidate(key);
    }

    pub(crate) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.moka.invalidate_all();
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.moka.run_pending_tasks();
        self.moka.entry_count()
    }
}
