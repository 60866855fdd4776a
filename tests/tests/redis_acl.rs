//! The minimal ACL of README.md ("Redis user and ACL"): every operation works as exactly that
//! user, `health_check()` passes, and removing any one permission makes `health_check()` name
//! the command to grant. A user without permissions (`NOPERM` on every command) still gets
//! correct values from the source and the errors are counted.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use cache_runtime::{cached, CacheError, Config};
use cache_tests::RedisServer;

/// The README's line, for the default key prefix `cr` (the user's name and password aside).
const README_ACL: &str = "on >secret resetkeys resetchannels ~{cr:* &cr:bus:* -@all \
    +ping +auth +hello +select +get +mget +set +del +pexpire +pexpireat +pttl +evalsha \
    +script|load +publish +subscribe +unsubscribe +time +role +wait +client|tracking \
    +client|caching +client|reply +info +getex";

/// The permissions the health check exercises (connection set-up ones aside: `auth`,
/// `hello`, `select` happen before it can run).
const CHECKED: &[&str] = &[
    "ping",
    "get",
    "mget",
    "set",
    "del",
    "pexpire",
    "pexpireat",
    "pttl",
    "evalsha",
    "script|load",
    "publish",
    "subscribe",
    "unsubscribe",
    "time",
    "role",
    "wait",
    "client|tracking",
    "client|caching",
];

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "acl:<id>", tags = ["acl"])]
fn value(id: u64) -> u64 {
    RUNS.fetch_add(1, SeqCst);
    id * 3
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_acl_is_enough_and_each_missing_permission_is_named() {
    // The README's line must be the one tested here.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let documented = format!("ACL SETUSER cache {README_ACL}");
    assert!(
        readme.contains(&documented),
        "README.md must document exactly: {documented}"
    );

    let server = RedisServer::start();
    server.acl_setuser(&format!("cache {README_ACL}"));
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url_for_user("cache", "secret"))
            // Refusals are failures: keep the breaker out of the way of repeated checks.
            .breaker_threshold(10_000)
            .build(),
    )
    .unwrap();
    cache_runtime::health_check()
        .await
        .expect("the documented ACL passes the health check");

    // Every operation works as this user: reads, stores, invalidations, tags, clears.
    let call = |id| tokio::task::spawn_blocking(move || value(id));
    assert_eq!(call(5).await.unwrap(), 15);
    value_cache().clear_local();
    assert_eq!(call(5).await.unwrap(), 15);
    assert_eq!(RUNS.load(SeqCst), 1, "the second call is a Redis hit");
    invalidate_value(5).unwrap();
    populate_value(6, 18).unwrap();
    cache_runtime::invalidate_tag("acl").await.unwrap();
    value_cache().clear().await.unwrap();
    cache_runtime::clear_all().await.unwrap();
    assert_eq!(value_cache().stats().redis_errors, 0);

    for perm in CHECKED {
        server.acl_setuser(&format!("cache -{perm}"));
        let err = cache_runtime::health_check().await.map(|_| ()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("grant +{perm}")),
            "without {perm}, the health check should name it: {msg}"
        );
        server.acl_setuser(&format!("cache +{perm}"));
        cache_runtime::health_check()
            .await
            .unwrap_or_else(|e| panic!("with {perm} back: {e}"));
    }

    // Without `getex` (an ACL written before it was needed): a store under a live ticket
    // still checks and extends it (`GET` + `PEXPIRE … GT`, one command more), keeps its
    // local copy, and counts no error; the health check does not ask for it.
    server.acl_setuser("cache -getex");
    invalidate_value(8).unwrap();
    let ticket_key = server.scan("*:t:acl:8").pop().expect("a fresh ticket");
    let cut: u64 = server.cmd(&["PEXPIRE", &ticket_key, "5000"]).unwrap();
    assert_eq!(cut, 1);
    let before = RUNS.load(SeqCst);
    assert_eq!(call(8).await.unwrap(), 24);
    assert_eq!(RUNS.load(SeqCst), before + 1);
    let left: i64 = server.cmd(&["PTTL", &ticket_key]).unwrap();
    assert!(left > 100_000, "the ticket was extended: {left} ms left");
    assert_eq!(value_cache().peek_local("acl:8"), Some(24));
    assert_eq!(value_cache().stats().redis_errors, 0);
    cache_runtime::health_check()
        .await
        .expect("the health check does not ask for getex");
    value_cache().clear_local();
    assert_eq!(call(8).await.unwrap(), 24);
    assert_eq!(RUNS.load(SeqCst), before + 1, "a Redis hit");
    server.acl_setuser("cache +getex");

    // No permissions at all: values still come from the source, the errors are counted.
    // The bus's probes are refused too, so it stops being trusted (PROTOCOL §5.2) and no
    // local copy is served: an invalidation published now could not reach this process.
    // Awaited rather than raced: whether a call lands before or after the first refused
    // probe (every `BUS_WINDOW / 4`) is timing.
    server.acl_setuser("cache -@all");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cache_runtime::bus_status().trusted {
        assert!(
            std::time::Instant::now() < deadline,
            "the bus stays trusted while every probe is refused: {:?}",
            cache_runtime::bus_status()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = RUNS.load(SeqCst);
    assert_eq!(call(7).await.unwrap(), 21);
    assert_eq!(call(7).await.unwrap(), 21);
    assert_eq!(
        RUNS.load(SeqCst),
        before + 2,
        "a local copy was served while the bus was not trusted"
    );
    assert!(!cache_runtime::bus_status().trusted);
    assert!(value_cache().stats().redis_errors >= 1);
    match cache_runtime::health_check().await {
        Err(CacheError::Redis(msg)) => assert!(msg.to_uppercase().contains("NOPERM"), "{msg}"),
        other => panic!("expected a NOPERM error, got {other:?}"),
    }
}
