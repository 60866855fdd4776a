//! Redis absent when the program starts: calls are correct from the start, and caching in
//! Redis begins once a server appears.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, CacheError, Config};
use cache_tests::{eventually_blocking, free_port, RedisServer};
use redis::Commands;

/// The Redis key of a value (docs/PROTOCOL.md §2: bucket hash tag, wire version 2).
fn vkey<V>(cache: &cache_runtime::Cache<V>, logical: &str) -> String {
    cache.redis_key(logical).expect("a cache with a Redis tier")
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "redis", ttl = 60, key = "absent:<id>")]
fn redis_only(id: u64) -> u64 {
    RUNS.fetch_add(1, SeqCst);
    id + 1
}

#[cached(tier = "local+redis", ttl = 60, key = "absent2:<id>")]
fn two_tier(id: u64) -> u64 {
    id + 2
}

#[test]
fn redis_absent_at_start_then_started() {
    let port = free_port();
    cache_runtime::init(
        Config::builder()
            .redis_url(format!("redis://127.0.0.1:{port}/"))
            .key_prefix("t")
            .build(),
    )
    .unwrap();

    for _ in 0..3 {
        assert_eq!(redis_only(1), 2);
    }
    assert_eq!(
        RUNS.load(SeqCst),
        3,
        "no Redis: the redis tier runs the body"
    );
    assert_eq!(two_tier(1), 3);
    assert_eq!(two_tier(1), 3);
    assert_eq!(
        two_tier_cache().stats().body_calls,
        2,
        "without the bus, local+redis does not serve local copies (another process may have \
         invalidated them: docs/PROTOCOL.md §5.4); calls are correct from the source"
    );
    assert!(!cache_runtime::bus_status().trusted);
    let res = invalidate_two_tier(1);
    assert!(
        matches!(
            res,
            Err(CacheError::Unavailable(_) | CacheError::CircuitOpen)
        ),
        "{res:?}"
    );
    assert!(
        pollster_block(cache_runtime::health_check()).is_err(),
        "the boot-time health check reports the outage"
    );

    let server = RedisServer::start_on(port);
    let mut raw = server.client();
    eventually_blocking(Duration::from_secs(15), "caching in the new Redis", || {
        redis_only(9);
        raw.exists::<_, bool>(&vkey(redis_only_cache(), "absent:9"))
            .unwrap()
    });
    let runs = RUNS.load(SeqCst);
    assert_eq!(redis_only(9), 10);
    assert_eq!(RUNS.load(SeqCst), runs, "served from Redis");
    pollster_block(cache_runtime::health_check()).expect("healthy now");
}

fn pollster_block<F: std::future::Future>(f: F) -> F::Output {
    cache_tests::current_thread_runtime().block_on(f)
}
