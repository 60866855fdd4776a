//! A restart from a snapshot (docs/PROTOCOL.md §8.2) in a process whose only cache reads with
//! the lock script (`lock = true`): those reads go on the data connection, which redis-rs
//! reconnects by itself, so nothing else would reopen the connections and check the server's
//! incarnation. A lock read first reopens them when the tracked connection was found closed:
//! no restored value is served (without that, every read after the restart returned it).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::cached;

const KEYS: usize = 16;

/// The source of truth: key `id`'s current version.
static SOURCE: [AtomicU64; KEYS] = [const { AtomicU64::new(1) }; KEYS];

#[cached(tier = "redis", ttl = 300, key = "snaplock:<id>", lock = true)]
async fn locked(id: usize) -> u64 {
    SOURCE[id].load(SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_reads_after_a_restart_from_a_snapshot_serve_no_restored_value() {
    let server = cache_tests::own_redis("snaplock");
    for id in 0..KEYS {
        assert_eq!(locked(id).await, 1);
    }
    server.save_snapshot();
    for (id, source) in SOURCE.iter().enumerate() {
        source.store(2, SeqCst);
        invalidate_locked(id).await.expect("invalidate");
        if id % 2 == 0 {
            assert_eq!(locked(id).await, 2);
        }
    }
    server.restart_from_snapshot();
    let (value_key, _, _) = cache_runtime::key::redis_keys(
        "snaplock",
        locked_cache()
            .key_schema()
            .expect("a cache with a Redis tier"),
        "snaplock:1",
    );
    let restored: Option<Vec<u8>> = server.cmd(&["GET", &value_key]).expect("GET");
    assert!(
        restored.is_some(),
        "the snapshot's values are back in Redis"
    );
    for round in 0..5 {
        for id in 0..KEYS {
            assert_eq!(
                locked(id).await,
                2,
                "key {id}, round {round}: a restored value"
            );
        }
    }
    // And it serves Redis hits again (once the reconnect's backoff and the breaker, which
    // the reads failed during the reconnect may have opened, let it), values still correct.
    let deadline = Instant::now() + Duration::from_secs(10);
    while locked_cache().stats().redis_hits == 0 {
        assert!(Instant::now() < deadline, "no Redis hit after the restart");
        assert_eq!(locked(0).await, 2);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
