//! A `local+redis` cache's kept copy is a fallback only while the bus is trusted (found by
//! an outside fault run): with the subscription refused (here `SUBSCRIBE` is renamed away,
//! as behind a proxy without pub/sub; an ACL without `+subscribe` or repeated subscriber
//! kills look the same), another process's invalidation is never heard, so the copy may be
//! invalidated. A body past `soft_timeout` is only slow: the fallback must be a value Redis
//! still vouches for (ticket and tokens), or none. Before, the invalidated local copy was
//! served as the stale value. When Redis itself does not answer and the body fails, the kept
//! copy still stands in (the fail-safe's documented outage fallback).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, Config, Source};
use cache_tests::{RedisOptions, RedisServer};

/// The source of truth.
static ROW: AtomicU64 = AtomicU64::new(1);
/// Makes the body slow (past the soft timeout) or failing.
static SLOW: AtomicBool = AtomicBool::new(false);
static FAIL: AtomicBool = AtomicBool::new(false);

#[cached(
    tier = "local+redis",
    ttl = "1s",
    stale = "10m",
    soft_timeout = "20ms",
    key = "fallback:<id>"
)]
async fn row(id: u64) -> Result<u64, String> {
    if SLOW.load(SeqCst) {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if FAIL.load(SeqCst) {
        return Err(format!("source down for {id}"));
    }
    Ok(ROW.load(SeqCst))
}

/// What another process's invalidation does in Redis (`DEL v t`, a fresh ticket): its
/// message is what this process cannot hear.
fn invalidate_elsewhere(server: &RedisServer, logical: &str) {
    let schema = row_cache().key_schema().expect("a Redis tier");
    let (value, ticket, _) = cache_runtime::key::redis_keys("cr", schema, logical);
    assert_eq!(row_cache().redis_key(logical), Some(value.clone()));
    let _: () = server.cmd(&["DEL", &value, &ticket]).unwrap();
    let _: () = server
        .cmd(&["SET", &ticket, "00000000deadbeef", "PX", "60000"])
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_local_copy_is_no_soft_timeout_fallback_while_the_bus_is_down() {
    let server =
        RedisServer::start_with_options(RedisOptions::new().rename_command("SUBSCRIBE", ""));
    cache_runtime::init(Config::builder().redis_url(server.url()).build()).unwrap();

    assert_eq!(row(1).await, Ok(1));
    assert_eq!(row_entry(1).await.map(|e| e.source()), Ok(Source::Redis));
    assert!(
        !cache_runtime::bus_status().trusted,
        "the bus cannot subscribe"
    );
    assert_eq!(row_cache().local_entry_count(), 1, "a local copy is kept");

    // The row changes and another process invalidates; this one hears nothing.
    ROW.store(2, SeqCst);
    invalidate_elsewhere(&server, "fallback:1");
    SLOW.store(true, SeqCst);
    let got = row_entry(1).await.expect("the body's value");
    assert_eq!(
        (*got.value(), got.source()),
        (2, Source::Body),
        "a slow body's fallback was the invalidated local copy"
    );
    SLOW.store(false, SeqCst);

    // Invalidated again elsewhere, and now the body fails while Redis answers: the kept
    // copy may be invalidated, Redis holds no value it vouches for, so there is no fallback.
    ROW.store(3, SeqCst);
    invalidate_elsewhere(&server, "fallback:1");
    FAIL.store(true, SeqCst);
    assert_eq!(
        row(1).await,
        Err("source down for 1".to_string()),
        "a failing body's fallback was the invalidated local copy"
    );

    // Redis down as well (an outage): the kept copy stands in for the failing body, as
    // documented for the fail-safe.
    server.kill();
    let got = row_entry(1).await.expect("the kept copy");
    assert_eq!((*got.value(), got.source()), (2, Source::Stale));
}
