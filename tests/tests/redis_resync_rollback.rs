//! The data set replaced under a running server (docs/PROTOCOL.md §8.2): an operator makes
//! the node a replica of another that holds an older copy of its data (here: a node that
//! replicated it earlier and was then detached), and promotes it back. The node keeps its
//! `run_id` and its clients' connections; its data set is the older copy, with the tickets and
//! tokens stamped then, so every invalidation acknowledged since is undone. The full resync
//! sends every tracked connection a null invalidation, which makes the runtime reopen its
//! connections and judge the incarnation (`run_id` and `master_replid`, which the resync and
//! the promotion change) before the next read: no caller, of a Redis-only, a two-tier or a
//! lock-reading or a blocking caller's cache, is served a value invalidated before the
//! rollback.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::cached;
use cache_tests::RedisServer;

const KEYS: usize = 16;
const WITHIN: Duration = Duration::from_secs(20);

/// The source of truth: key `id`'s current version.
static SOURCE: [AtomicU64; KEYS] = [const { AtomicU64::new(1) }; KEYS];

#[cached(tier = "redis", ttl = 300, key = "rsy:<id>")]
async fn remote(id: usize) -> u64 {
    SOURCE[id].load(SeqCst)
}

#[cached(tier = "local+redis", ttl = 300, key = "rsy2:<id>", tags = ["rsy:<id>"])]
async fn two_tier(id: usize) -> u64 {
    SOURCE[id].load(SeqCst) + 1000
}

/// Its reads are the lock script's, on the data connection (not the tracked one).
#[cached(tier = "redis", ttl = 300, key = "rsy3:<id>", lock = true)]
async fn locked(id: usize) -> u64 {
    SOURCE[id].load(SeqCst) + 2000
}

/// A blocking caller's: its reads run on the runtime's Redis thread, on that thread's own
/// tracked connection.
#[cached(tier = "redis", ttl = 300, key = "rsy4:<id>")]
fn blocking(id: usize) -> u64 {
    SOURCE[id].load(SeqCst) + 3000
}

/// `blocking(id)` off the async worker threads.
async fn blocking_call(id: usize) -> u64 {
    tokio::task::spawn_blocking(move || blocking(id))
        .await
        .expect("blocking call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_invalidated_before_a_rollback_by_resync_are_not_served() {
    let node = RedisServer::start();
    let older = RedisServer::start();
    cache_runtime::init(
        cache_runtime::Config::builder()
            .redis_url(node.url())
            .key_prefix("rsy")
            .build(),
    )
    .expect("init");
    // Version 1 in Redis, and a copy of it on `older` (a replica detached since).
    for id in 0..KEYS {
        assert_eq!(remote(id).await, 1);
        assert_eq!(two_tier(id).await, 1001);
        assert_eq!(locked(id).await, 2001);
        assert_eq!(blocking_call(id).await, 3001);
        assert_eq!(blocking_call(id).await, 3001);
    }
    older.replicate_from(&node);
    older.promote();
    // Version 2: every key invalidated (acknowledged), half of them read again (Redis then
    // holds version 2 under a new ticket), half not (Redis holds no value).
    for (id, source) in SOURCE.iter().enumerate() {
        source.store(2, SeqCst);
        invalidate_remote(id).await.expect("invalidate");
        invalidate_two_tier(id).await.expect("invalidate");
        invalidate_locked(id).await.expect("invalidate");
        tokio::task::spawn_blocking(move || invalidate_blocking(id))
            .await
            .expect("blocking call")
            .expect("invalidate");
        if id % 2 == 0 {
            assert_eq!(remote(id).await, 2);
            assert_eq!(two_tier(id).await, 1002);
            assert_eq!(locked(id).await, 2002);
            assert_eq!(blocking_call(id).await, 3002);
        }
    }

    // The rollback: the node resyncs from the older copy and is promoted back, with the same
    // `run_id` and without closing a client's connection. Version 1 is back in Redis
    // (checked, or the test would prove nothing).
    let run_id = node.info_field("run_id");
    node.replicate_from(&older);
    node.promote();
    assert_eq!(node.info_field("run_id"), run_id, "the same server");
    let (value_key, _, _) = cache_runtime::key::redis_keys(
        "rsy",
        remote_cache()
            .key_schema()
            .expect("a cache with a Redis tier"),
        "rsy:1",
    );
    let restored: Option<Vec<u8>> = node.cmd(&["GET", &value_key]).expect("GET");
    assert!(restored.is_some(), "the older values are back in Redis");

    // Every read from now on is version 2, from the source or from Redis once rewritten
    // (the lock-reading cache first: its reads do not go through the tracked connection).
    for round in 0..20 {
        for id in 0..KEYS {
            let what = format!("key {id}, round {round}: a value from before the rollback");
            assert_eq!(locked(id).await, 2002, "{what}");
            assert_eq!(remote(id).await, 2, "{what}");
            assert_eq!(two_tier(id).await, 1002, "{what}");
            assert_eq!(blocking_call(id).await, 3002, "{what}");
        }
    }
    // And the cache works again: values rewritten, then served from Redis.
    let hits = remote_cache().stats().redis_hits;
    let deadline = Instant::now() + WITHIN;
    while remote_cache().stats().redis_hits == hits {
        assert!(Instant::now() < deadline, "no Redis hit after the rollback");
        assert_eq!(remote(0).await, 2);
    }
}
