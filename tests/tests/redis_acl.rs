//! A Redis user without permissions (`NOPERM` on every command): every call still returns the
//! correct value, the error is counted, the health check says why, and the refusals count as
//! failures for the breaker (a refusing Redis is not a working one).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use cache_runtime::{cached, BreakerState, CacheError, Config};
use cache_tests::RedisServer;

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "acl:<id>")]
fn value(id: u64) -> u64 {
    RUNS.fetch_add(1, SeqCst);
    id * 3
}

#[tokio::test]
async fn a_user_without_permissions_gets_correct_values_from_the_source() {
    let server = RedisServer::start();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "limited", "on", ">secret", "~*", "-@all"][..])
        .query(&mut server.client())
        .unwrap();
    let port = server.port();
    cache_runtime::init(
        Config::builder()
            .redis_url(format!("redis://limited:secret@127.0.0.1:{port}/"))
            .build(),
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(tokio::task::spawn_blocking(|| value(5)).await.unwrap(), 15);
    }
    assert_eq!(RUNS.load(SeqCst), 1, "the local tier still caches");
    value_cache().clear_local();
    assert_eq!(tokio::task::spawn_blocking(|| value(5)).await.unwrap(), 15);
    assert_eq!(RUNS.load(SeqCst), 2);
    assert!(value_cache().stats().redis_errors >= 2);
    match cache_runtime::health_check().await {
        Err(CacheError::Redis(msg)) => assert!(msg.to_uppercase().contains("NOPERM"), "{msg}"),
        other => panic!("expected a NOPERM error, got {other:?}"),
    }
    for _ in 0..5 {
        assert!(cache_runtime::health_check().await.is_err());
    }
    assert_eq!(cache_runtime::redis_status().breaker, BreakerState::Open);
}
