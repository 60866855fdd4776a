//! Hand-written local caches on the candidate stores for the local tier (see
//! `docs/LOCAL_TIER.md`): the same key, value, capacity (10 000 entries) and TTL (300 s) as the
//! `local_hit` contenders, each the least code that gives a bounded, concurrent cache with a
//! TTL on that store. They exist to tell the store's own cost from our crate's.

use std::time::{Duration, Instant};

use crate::{our_key, profile, Profile};

/// Capacity of every hand-written store, in entries.
pub const CAPACITY: u64 = 10_000;

/// TTL of every hand-written store.
pub const TTL: Duration = Duration::from_secs(300);

/// A local cache of profiles by id: `get` formats the key, returns a clone on a hit and fills
/// the entry on a miss.
pub trait HandStore: Send + Sync {
    /// The profile of `id`, from the store or computed and stored.
    fn get(&self, id: u64) -> Profile;
}

/// moka's `sync::Cache` with `time_to_live` (what `local_hit`'s `hand_written` is).
pub struct Moka(moka::sync::Cache<String, Profile>);

impl Moka {
    /// An empty store.
    pub fn new() -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TTL)
                .build(),
        )
    }
}

impl Default for Moka {
    fn default() -> Self {
        Self::new()
    }
}

impl HandStore for Moka {
    fn get(&self, id: u64) -> Profile {
        let key = our_key(id);
        if let Some(v) = self.0.get(&key) {
            return v;
        }
        let v = profile(id);
        self.0.insert(key, v.clone());
        v
    }
}

/// moka's `future::Cache` with `time_to_live`: what hand-written async code uses (the
/// `local_hit_future` group's `hand_written`).
pub struct MokaFuture(moka::future::Cache<String, Profile>);

impl MokaFuture {
    /// An empty store.
    pub fn new() -> Self {
        Self(
            moka::future::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TTL)
                .build(),
        )
    }

    /// The profile of `id`, from the store or computed and stored.
    pub async fn get(&self, id: u64) -> Profile {
        let key = our_key(id);
        if let Some(v) = self.0.get(&key).await {
            return v;
        }
        let v = profile(id);
        self.0.insert(key, v.clone()).await;
        v
    }
}

impl Default for MokaFuture {
    fn default() -> Self {
        Self::new()
    }
}

/// A value with the instant it stops being served: stores without per-entry expiry check it
/// on read (lazy expiry; an expired entry still counts against the capacity until evicted).
#[derive(Clone)]
pub struct Expiring {
    /// The cached value.
    pub value: Profile,
    /// Not served from then on.
    pub deadline: Instant,
}

/// `quick_cache::sync::Cache` (sharded, S3-FIFO-like), the deadline checked on read.
pub struct Quick(quick_cache::sync::Cache<String, Expiring>);

impl Quick {
    /// An empty store.
    pub fn new() -> Self {
        Self(quick_cache::sync::Cache::new(CAPACITY as usize))
    }
}

impl Default for Quick {
    fn default() -> Self {
        Self::new()
    }
}

impl HandStore for Quick {
    fn get(&self, id: u64) -> Profile {
        let key = our_key(id);
        if let Some(e) = self.0.get(&key) {
            if e.deadline > Instant::now() {
                return e.value;
            }
        }
        let v = profile(id);
        let e = Expiring {
            value: v.clone(),
            deadline: Instant::now() + TTL,
        };
        self.0.insert(key, e);
        v
    }
}

/// `mini_moka::sync::Cache` (moka's predecessor: TinyLFU on a dashmap) with `time_to_live`.
pub struct MiniMoka(mini_moka::sync::Cache<String, Profile>);

impl MiniMoka {
    /// An empty store.
    pub fn new() -> Self {
        Self(
            mini_moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TTL)
                .build(),
        )
    }
}

impl Default for MiniMoka {
    fn default() -> Self {
        Self::new()
    }
}

impl HandStore for MiniMoka {
    fn get(&self, id: u64) -> Profile {
        let key = our_key(id);
        if let Some(v) = self.0.get(&key) {
            return v;
        }
        let v = profile(id);
        self.0.insert(key, v.clone());
        v
    }
}
