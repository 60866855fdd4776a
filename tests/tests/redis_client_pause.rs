//! Writes paused by the server while reads go on: `CLIENT PAUSE <ms> WRITE`, what Redis
//! itself does during a coordinated `FAILOVER` and what operators run before a switchover.
//! Reads are answered, every write (and `EVAL`, `PUBLISH`) waits in the server until the
//! pause ends, then runs. An invalidation made during the pause is not confirmed in time,
//! so it is reported (`Err`) and kept: this process never serves the old value meanwhile,
//! and once the pause ends the old value is gone from Redis, so no process reads it again.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::cached;
use cache_tests::{eventually, shared_redis};

static VERSION: AtomicU64 = AtomicU64::new(0);

#[cached(tier = "local+redis", ttl = 60, local_ttl = "1ms", key = "paused:<id>")]
async fn price(id: u64) -> u64 {
    id * 1000 + VERSION.load(SeqCst)
}

static REDIS_VERSION: AtomicU64 = AtomicU64::new(0);

#[cached(tier = "redis", ttl = 60, key = "paused-r:<id>")]
async fn stock(id: u64) -> u64 {
    id * 1000 + REDIS_VERSION.load(SeqCst)
}

/// The value bytes Redis holds for `logical` (`price`'s key or `stock`'s: both cache a
/// `u64`, version 1), or `None`.
fn value_in_redis(logical: &str) -> Option<Vec<u8>> {
    let key = price_cache()
        .redis_key(logical)
        .expect("a cache with a Redis tier");
    shared_redis()
        .cmd::<Option<Vec<u8>>>(&["GET", &key])
        .expect("GET")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_during_a_write_pause_never_let_the_old_value_back() {
    let server = shared_redis();
    assert_eq!(price(1).await, 1000);
    assert_eq!(stock(1).await, 1000);
    let old_price = value_in_redis("paused:1").expect("the value is in Redis");
    let old_stock = value_in_redis("paused-r:1").expect("the value is in Redis");
    // Served from Redis (the local copy lives 1 ms).
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(price(1).await, 1000);

    // Writes wait in the server for 1.5 s; reads are answered.
    let paused_at = Instant::now();
    let pause = Duration::from_millis(1500);
    let _: () = server
        .cmd(&["CLIENT", "PAUSE", "1500", "WRITE"])
        .expect("CLIENT PAUSE WRITE");
    assert_eq!(
        server
            .cmd::<Option<Vec<u8>>>(&["GET", &price_cache().redis_key("paused:1").unwrap()])
            .expect("GET")
            .as_deref(),
        Some(old_price.as_slice()),
        "reads are answered during the pause"
    );

    VERSION.store(1, SeqCst);
    REDIS_VERSION.store(1, SeqCst);
    let price_inv = invalidate_price(1).await;
    let stock_inv = invalidate_stock(1).await;
    if paused_at.elapsed() < pause {
        // Not confirmed within the runtime's timeout: reported, and kept to be retried.
        assert!(
            price_inv.is_err(),
            "an unconfirmed invalidation is reported"
        );
        assert!(
            stock_inv.is_err(),
            "an unconfirmed invalidation is reported"
        );
    }

    // Meanwhile this process never serves the old value, though Redis still holds it.
    let mut reads = 0;
    while paused_at.elapsed() < pause - Duration::from_millis(300) {
        assert_eq!(
            price(1).await,
            1001,
            "after the invalidation, during the pause"
        );
        assert_eq!(
            stock(1).await,
            1001,
            "after the invalidation, during the pause"
        );
        reads += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reads > 0, "the pause outlasted the invalidations");

    // After the pause: the writes that waited ran, the retries confirm, and Redis no longer
    // holds the old values (another process would not read them again).
    eventually(
        Duration::from_secs(15),
        "the invalidations confirmed",
        || cache_runtime::redis_status().pending_writes == 0,
    )
    .await;
    assert_ne!(
        value_in_redis("paused:1").as_deref(),
        Some(old_price.as_slice())
    );
    assert_ne!(
        value_in_redis("paused-r:1").as_deref(),
        Some(old_stock.as_slice())
    );
    assert_eq!(price(1).await, 1001);
    assert_eq!(stock(1).await, 1001);
    // And caching resumes: the new value is stored and served from Redis.
    eventually(Duration::from_secs(15), "the new value in Redis", || {
        value_in_redis("paused-r:1").is_some()
    })
    .await;
    let hits = stock_cache().stats().redis_hits;
    assert_eq!(stock(1).await, 1001);
    assert_eq!(
        stock_cache().stats().redis_hits,
        hits + 1,
        "served from Redis again"
    );
}
