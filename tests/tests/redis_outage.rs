//! A hung Redis (SIGSTOP): the circuit breaker opens so calls stop paying the timeout, values
//! stay correct, and an invalidation issued during the outage is retried afterwards: the
//! invalidated value is never served again.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, BreakerState, CacheError, Config};
use cache_tests::{eventually, RedisServer};
use redis::Commands;

/// The Redis key of a value (docs/PROTOCOL.md §2: bucket hash tag, wire version 2).
fn vkey<V>(cache: &cache_runtime::Cache<V>, logical: &str) -> String {
    cache.redis_key(logical).expect("a cache with a Redis tier")
}

static VERSION: AtomicUsize = AtomicUsize::new(1);
static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "outage:<id>")]
async fn row(id: u64) -> String {
    RUNS.fetch_add(1, SeqCst);
    format!("row {id} v{}", VERSION.load(SeqCst))
}

/// Same keys and type: stands in for another process that reads Redis after the outage.
#[cached(tier = "local+redis", ttl = 60, key = "outage:<id>")]
async fn row_elsewhere(id: u64) -> String {
    format!("row {id} v{}", VERSION.load(SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_opens_the_breaker_and_invalidations_are_retried() {
    let server = RedisServer::start();
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url())
            .key_prefix("t")
            .redis_timeout(Duration::from_millis(100))
            .breaker_threshold(3)
            .breaker_cooldown(Duration::from_millis(200))
            .build(),
    )
    .unwrap();
    assert_eq!(row(1).await, "row 1 v1");
    assert!(server
        .client()
        .exists::<_, bool>(&vkey(row_cache(), "outage:1"))
        .unwrap());
    let ticket_key =
        cache_runtime::key::redis_keys("t", row_cache().key_schema().unwrap(), "outage:1").1;
    let ticket_before: String = server.client().get(&ticket_key).unwrap();

    server.pause();
    // The row changes and the writer invalidates while Redis hangs.
    VERSION.store(2, SeqCst);
    let res = invalidate_row(1).await;
    assert!(
        matches!(res, Err(CacheError::Timeout(_) | CacheError::CircuitOpen)),
        "{res:?}"
    );
    assert_eq!(
        cache_runtime::redis_status().pending_writes,
        1,
        "kept for retry"
    );
    // Calls stay correct; after a few timeouts the breaker opens and Redis is skipped.
    for id in 10..20 {
        assert_eq!(row(id).await, format!("row {id} v2"));
    }
    assert_eq!(cache_runtime::redis_status().breaker, BreakerState::Open);
    assert_eq!(
        row(1).await,
        "row 1 v2",
        "the local copy was dropped by the invalidation"
    );

    server.resume();
    // Whether or not the retry already ran, the old value in Redis is never served.
    row_elsewhere_cache().clear_local();
    assert_eq!(row_elsewhere(1).await, "row 1 v2");
    eventually(
        Duration::from_secs(15),
        "the deferred invalidation applied",
        || cache_runtime::redis_status().pending_writes == 0,
    )
    .await;
    assert_eq!(cache_runtime::redis_status().breaker, BreakerState::Closed);
    let ticket_after: Option<String> = server.client().get(&ticket_key).unwrap();
    assert_ne!(
        ticket_after.as_deref(),
        Some(ticket_before.as_str()),
        "the invalidation reached Redis (it deleted the key's ticket)"
    );
    row_elsewhere_cache().clear_local();
    assert_eq!(row_elsewhere(1).await, "row 1 v2");
    assert!(row_cache().stats().redis_errors >= 3);
}
