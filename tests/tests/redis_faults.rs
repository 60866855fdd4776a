//! Redis killed, restarted and paused under a running program: every call still returns the
//! correct value, and caching resumes by itself.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::cached;
use cache_tests::{eventually, shared_redis};
use redis::Commands;

/// The Redis key of a value (docs/PROTOCOL.md §2: bucket hash tag, wire version 2).
fn vkey<V>(cache: &cache_runtime::Cache<V>, logical: &str) -> String {
    cache.redis_key(logical).expect("a cache with a Redis tier")
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, local_ttl = "1ms", key = "fault:<id>")]
async fn two_tier(id: u64) -> String {
    RUNS.fetch_add(1, SeqCst);
    format!("value {id}")
}

static REDIS_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "redis", ttl = 60, key = "fault-r:<id>")]
fn redis_only(id: u64) -> u64 {
    REDIS_RUNS.fetch_add(1, SeqCst);
    id * 2
}

fn in_redis(key: &str) -> bool {
    shared_redis().client().exists(key).unwrap_or(false)
}

/// One test drives the whole outage so that nothing else runs against the server meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stay_correct_through_kill_restart_and_pause() {
    let server = shared_redis();

    // Healthy: values are cached in Redis.
    for id in 0..20 {
        assert_eq!(two_tier(id).await, format!("value {id}"));
        assert_eq!(
            tokio::task::spawn_blocking(move || redis_only(id))
                .await
                .unwrap(),
            id * 2
        );
    }
    assert!(
        in_redis(&vkey(two_tier_cache(), "fault:0"))
            && in_redis(&vkey(redis_only_cache(), "fault-r:0"))
    );
    let healthy_runs = RUNS.load(SeqCst);

    // Killed: every call is still correct (from the body), and writes report the failure.
    server.kill();
    for round in 0..3 {
        for id in 0..20 {
            assert_eq!(two_tier(id).await, format!("value {id}"), "round {round}");
            assert_eq!(
                tokio::task::spawn_blocking(move || redis_only(id))
                    .await
                    .unwrap(),
                id * 2
            );
        }
    }
    assert!(
        RUNS.load(SeqCst) > healthy_runs,
        "bodies ran while Redis was down"
    );
    assert!(two_tier_cache().stats().redis_errors > 0);
    assert!(
        invalidate_two_tier(1).await.is_err(),
        "an unconfirmed invalidation is reported"
    );

    // Restarted (empty, like a crashed Redis without persistence): caching resumes by itself.
    server.restart();
    eventually(
        Duration::from_secs(15),
        "a populate reaching the restarted Redis",
        || {
            let _ = futures_lite_block(two_tier(7));
            in_redis(&vkey(two_tier_cache(), "fault:7"))
        },
    )
    .await;
    let runs = RUNS.load(SeqCst);
    two_tier_cache().clear_local();
    assert_eq!(two_tier(7).await, "value 7");
    assert_eq!(RUNS.load(SeqCst), runs, "served from Redis again");
    invalidate_two_tier(7).await.expect("redis confirms again");
    eventually(
        Duration::from_secs(15),
        "the redis-only cache writing again",
        || {
            redis_only(3);
            in_redis(&vkey(redis_only_cache(), "fault-r:3"))
        },
    )
    .await;

    // Paused (SIGSTOP): the connection hangs; calls time out into the body and stay correct.
    server.pause();
    for id in 100..105 {
        assert_eq!(two_tier(id).await, format!("value {id}"));
    }
    server.resume();
    eventually(Duration::from_secs(15), "caching after SIGCONT", || {
        let _ = futures_lite_block(two_tier(200));
        in_redis(&vkey(two_tier_cache(), "fault:200"))
    })
    .await;
}

/// Runs a future to completion from a sync closure inside `eventually`.
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
