//! `rediss://`: a TLS-only redis-server with a certificate made by the test, trusted through
//! `Config::tls_root_certificate`.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use cache_runtime::{cached, Config};
use cache_tests::{RedisServer, TlsFiles};
use redis::Commands;

/// The Redis key of a value (docs/PROTOCOL.md §2: bucket hash tag, wire version 2).
fn vkey<V>(cache: &cache_runtime::Cache<V>, logical: &str) -> String {
    cache.redis_key(logical).expect("a cache with a Redis tier")
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "tls:<id>")]
async fn secret(id: u64) -> String {
    RUNS.fetch_add(1, SeqCst);
    format!("value {id}")
}

#[tokio::test]
async fn values_are_cached_through_a_tls_redis() {
    let tls = TlsFiles::generate();
    let server = RedisServer::start_tls(&tls.ca, &tls.cert, &tls.key);
    assert!(server.url().starts_with("rediss://"));
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url())
            .key_prefix("t")
            .tls_root_certificate(server.tls_ca().unwrap().to_vec())
            // What is under test is TLS, not latency: the default 100 ms is shorter than a
            // TLS round trip of this debug build on a loaded 2-core machine, where a timed-out
            // store left nothing in Redis (3 failures in 4 runs at a load average of 12).
            .redis_timeout(std::time::Duration::from_secs(5))
            .build(),
    )
    .unwrap();
    cache_runtime::health_check().await.expect("PING over TLS");
    assert_eq!(secret(1).await, "value 1");
    let stored: bool = server
        .client()
        .exists(vkey(secret_cache(), "tls:1"))
        .unwrap();
    assert!(
        stored,
        "written to Redis over TLS: {:?}",
        secret_cache().stats()
    );
    secret_cache().clear_local();
    assert_eq!(secret(1).await, "value 1");
    assert_eq!(RUNS.load(SeqCst), 1, "read back from Redis over TLS");
    assert_eq!(secret_cache().stats().redis_hits, 1);
    invalidate_secret(1).await.expect("confirmed over TLS");
}
