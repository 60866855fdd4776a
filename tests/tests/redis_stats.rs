//! What the counters say about calls that joined a concurrent load: a leader that finds the
//! value in Redis serves its followers a Redis hit, and they are counted as Redis hits (the
//! hit ratio a user reads to decide whether the cache pays must not show them as misses).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, Config};
use cache_tests::{eventually, RedisServer};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "redis", ttl = 60, key = "fanout:<id>")]
async fn fanout(id: u64) -> u64 {
    RUNS.fetch_add(1, SeqCst);
    id * 3
}

/// Ten concurrent `fanout(1)` calls, all joined to one load: the server is stopped until
/// nine have joined the first one's (which is still reading).
async fn ten_callers_of_one_load(server: &RedisServer) {
    server.pause();
    let tasks: Vec<_> = (0..10).map(|_| tokio::spawn(fanout(1))).collect();
    eventually(Duration::from_secs(10), "9 joined callers", || {
        fanout_cache().stats().joined == 9
    })
    .await;
    server.resume();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_redis_hit_are_redis_hits_and_followers_of_a_body_are_misses() {
    let server = RedisServer::start();
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url())
            .key_prefix("t")
            // The leader's read waits while the server is stopped; it must not time out.
            .redis_timeout(Duration::from_secs(10))
            .build(),
    )
    .unwrap();
    // Connected (a read on a stopped server waits; one before connecting fails at once).
    assert_eq!(fanout(100).await, 300);
    fanout_cache().reset_stats();
    RUNS.store(0, SeqCst);

    // Followers of a body run: misses, coalesced. The server is stopped while they join,
    // so the leader is still reading (then runs the body).
    ten_callers_of_one_load(&server).await;
    assert_eq!(RUNS.load(SeqCst), 1);
    let s = fanout_cache().stats();
    assert_eq!(
        (s.misses, s.coalesced, s.joined, s.redis_hits),
        (10, 9, 9, 0),
        "{s:?}"
    );

    // Followers of a Redis hit: Redis hits (nothing ran for them), not misses.
    fanout_cache().reset_stats();
    ten_callers_of_one_load(&server).await;
    assert_eq!(RUNS.load(SeqCst), 1, "served from Redis");
    let s = fanout_cache().stats();
    assert_eq!(
        (s.redis_hits, s.misses, s.coalesced, s.joined),
        (10, 0, 0, 9),
        "{s:?}"
    );
    assert_eq!(s.hit_ratio(), 1.0);
    assert_eq!(s.offload_ratio(), 1.0);
}
