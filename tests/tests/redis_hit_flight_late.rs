//! A call that starts after another process's invalidation returned `Ok` never gets the value
//! a concurrent call's Redis read found before that invalidation (docs/PROTOCOL.md §13 F9):
//! it does not join a flight whose leader may have sent its read already; it reads for
//! itself. Deterministic: a proxy holds the server's replies, so the leader's read executes
//! before the invalidation while its reply arrives only after the second call started.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, Config};
use cache_tests::proxy::Proxy;
use cache_tests::RedisServer;

/// The source: the row's version.
static VERSION: AtomicU64 = AtomicU64::new(1);
static RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(tier = "redis", ttl = 60, key = "late:<id>")]
async fn row(id: u64) -> u64 {
    RUNS.fetch_add(1, SeqCst);
    id * 100 + VERSION.load(SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_after_an_invalidation_does_not_take_a_read_sent_before_it() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    cache_runtime::init(
        Config::builder()
            .redis_url(proxy.url())
            .key_prefix("t")
            .redis_timeout(Duration::from_secs(10))
            .build(),
    )
    .unwrap();
    // Warm: the value in Redis, its ticket kept; this runtime on connections of its own.
    for _ in 0..64 {
        assert_eq!(row(1).await, 101);
    }
    assert_eq!(RUNS.load(SeqCst), 1, "a Redis hit from the second call on");
    let schema = row_cache().key_schema().unwrap();
    let (value_key, ticket_key, _) = cache_runtime::key::redis_keys("t", schema, "late:1");

    // The leader's read executes; its reply waits in the proxy.
    server.log_every_command();
    proxy.hold_replies();
    let joined = row_cache().stats().joined;
    let leader = tokio::spawn(row(1));
    cache_tests::eventually(
        Duration::from_secs(10),
        "the leader's read executed",
        || server.slowlog_reads_of(&value_key) > 0,
    )
    .await;

    // Another process's invalidation (no bus message reaches this one): the source changes,
    // then the key's value and ticket are gone. It has returned.
    VERSION.store(2, SeqCst);
    let deleted: u64 = server.cmd(&["DEL", &value_key, &ticket_key]).expect("DEL");
    assert_eq!(
        deleted, 2,
        "the invalidation removed the value and its ticket"
    );

    // A call that starts now: it joins the leader's flight, or sends a read of its own.
    let after = server.slowlog_reads_of(&value_key);
    let late = tokio::spawn(row(1));
    cache_tests::eventually(
        Duration::from_secs(10),
        "the second call joined the flight or sent its own read",
        || row_cache().stats().joined > joined || server.slowlog_reads_of(&value_key) > after,
    )
    .await;
    proxy.release_replies();

    assert_eq!(
        leader.await.unwrap(),
        101,
        "the leader started before the invalidation"
    );
    assert_eq!(
        late.await.unwrap(),
        102,
        "a call that started after the invalidation returned gets the source after it, \
         not what a read sent before it found"
    );
    assert_eq!(RUNS.load(SeqCst), 2, "the body ran for it");
    assert_eq!(row(1).await, 102, "and Redis holds the new value");
}
