//! Graceful shutdown: `cache_runtime::drain` waits until the writes Redis did not take went
//! through (a process that exits with writes pending loses them, and other processes read
//! the old values from Redis until their TTL), and says so truthfully: `false` while Redis
//! cannot take them, `true` once it did, when the old values are gone from Redis.

use std::time::{Duration, Instant};

use cache_runtime::{cached, Config};
use cache_tests::RedisServer;

#[cached(tier = "local+redis", ttl = 300, key = "drain:<id>")]
async fn value(id: u64) -> u64 {
    id * 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_the_writes_redis_did_not_take() {
    let server = RedisServer::start();
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url())
            .key_prefix("t")
            .redis_timeout(Duration::from_millis(300))
            .build(),
    )
    .unwrap();
    assert!(
        cache_runtime::drain(Duration::ZERO).await,
        "nothing pending"
    );
    for id in 0..4 {
        assert_eq!(value(id).await, id * 10);
    }
    let value_key = |id: u64| {
        value_cache()
            .redis_key(&format!("drain:{id}"))
            .expect("a cache with a Redis tier")
    };
    assert!(server.exists(&value_key(0)), "the values are in Redis");

    // Redis stops answering: the invalidations time out and are kept.
    server.pause();
    for id in 0..2 {
        assert!(invalidate_value(id).await.is_err());
    }
    assert_eq!(cache_runtime::redis_status().pending_writes, 2);
    let started = Instant::now();
    assert!(
        !cache_runtime::drain(Duration::from_millis(300)).await,
        "drain reports writes that did not go through"
    );
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    // The blocking form on a thread of no runtime, likewise.
    let gave_up = std::thread::spawn(|| cache_runtime::drain_blocking(Duration::from_millis(100)))
        .join()
        .unwrap();
    assert!(!gave_up);

    // Redis comes back while a drain waits: it returns once the writes landed.
    let waiting = tokio::spawn(cache_runtime::drain(Duration::from_secs(20)));
    server.resume();
    assert!(waiting.await.unwrap(), "drained once Redis took the writes");
    assert_eq!(cache_runtime::redis_status().pending_writes, 0);
    for id in 0..2 {
        assert!(
            !server.exists(&value_key(id)),
            "key {id}'s old value is gone"
        );
    }
    assert!(server.exists(&value_key(2)), "other keys untouched");

    // And from blocking code, during an outage that ends.
    server.pause();
    assert!(invalidate_value(2).await.is_err());
    let waiting = std::thread::spawn(|| cache_runtime::drain_blocking(Duration::from_secs(20)));
    server.resume();
    assert!(waiting.join().unwrap());
    assert!(!server.exists(&value_key(2)));
    assert_eq!(value(2).await, 20);
}
