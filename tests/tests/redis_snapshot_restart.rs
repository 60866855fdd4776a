//! A Redis restarted from a snapshot (docs/PROTOCOL.md §8.2) brings its values back together
//! with the tickets and tokens saved beside them: every invalidation acknowledged after the
//! save is undone in Redis, and the old values read as current. The runtime notices on
//! reconnect that the data set was written under another server incarnation (`run_id`) and
//! invalidates every value (global clear) before it serves a read: no caller, of a Redis-only,
//! a two-tier or a lock-reading cache, is served a value invalidated before the crash.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::cached;

const KEYS: usize = 16;

/// The source of truth: key `id`'s current version.
static SOURCE: [AtomicU64; KEYS] = [const { AtomicU64::new(1) }; KEYS];

#[cached(tier = "redis", ttl = 300, key = "snap:<id>")]
async fn remote(id: usize) -> u64 {
    SOURCE[id].load(SeqCst)
}

#[cached(tier = "local+redis", ttl = 300, key = "snap2:<id>", tags = ["snap:<id>"])]
async fn two_tier(id: usize) -> u64 {
    SOURCE[id].load(SeqCst) + 1000
}

/// Its reads are the lock script's, on the data connection (not the tracked one).
#[cached(tier = "redis", ttl = 300, key = "snap3:<id>", lock = true)]
async fn locked(id: usize) -> u64 {
    SOURCE[id].load(SeqCst) + 2000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_invalidated_after_a_snapshot_are_not_served_after_a_restart_from_it() {
    let server = cache_tests::own_redis("snap");
    // Version 1 in Redis, and a snapshot of it.
    for id in 0..KEYS {
        assert_eq!(remote(id).await, 1);
        assert_eq!(two_tier(id).await, 1001);
        assert_eq!(locked(id).await, 2001);
    }
    server.save_snapshot();
    // Version 2: every key invalidated (acknowledged), half of them read again (Redis then
    // holds version 2 under a new ticket), half not (Redis holds no value).
    for (id, source) in SOURCE.iter().enumerate() {
        source.store(2, SeqCst);
        invalidate_every_cache(id).await;
        if id % 2 == 0 {
            assert_eq!(remote(id).await, 2);
            assert_eq!(two_tier(id).await, 1002);
            assert_eq!(locked(id).await, 2002);
        }
    }

    // A crash and a restart from the snapshot: version 1 is back in Redis, under the tickets
    // and tokens it was stamped with (checked, or the test would prove nothing).
    server.restart_from_snapshot();
    let (value_key, _, _) = cache_runtime::key::redis_keys(
        "snap",
        remote_cache()
            .key_schema()
            .expect("a cache with a Redis tier"),
        "snap:1",
    );
    let restored: Option<Vec<u8>> = server.cmd(&["GET", &value_key]).expect("GET");
    assert!(
        restored.is_some(),
        "the snapshot's values are back in Redis"
    );

    // Every read from now on is version 2, from the source or from Redis once rewritten
    // (the lock-reading cache first: its reads do not go through the tracked connection).
    for round in 0..20 {
        for id in 0..KEYS {
            assert_eq!(
                locked(id).await,
                2002,
                "key {id}, round {round}: a restored value"
            );
            assert_eq!(
                remote(id).await,
                2,
                "key {id}, round {round}: a restored value"
            );
            assert_eq!(
                two_tier(id).await,
                1002,
                "key {id}, round {round}: a restored value"
            );
        }
    }
    // And the cache works again: values rewritten, then served from Redis.
    let hits = remote_cache().stats().redis_hits;
    let deadline = Instant::now() + Duration::from_secs(10);
    while remote_cache().stats().redis_hits == hits {
        assert!(Instant::now() < deadline, "no Redis hit after the restart");
        assert_eq!(remote(0).await, 2);
    }
}

/// Invalidates key `id` in the three caches.
async fn invalidate_every_cache(id: usize) {
    invalidate_remote(id).await.expect("invalidate");
    invalidate_two_tier(id).await.expect("invalidate");
    invalidate_locked(id).await.expect("invalidate");
}
