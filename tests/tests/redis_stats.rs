//! What the counters say about concurrent calls of one key: callers that joined a running
//! body are misses (coalesced), and callers that came while a Redis hit was being read are
//! Redis hits (each reads for itself, docs/PROTOCOL.md §13 F9): the hit ratio a user reads to
//! decide whether the cache pays must not show them as misses.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, Config};
use cache_tests::{eventually, RedisServer};

static RUNS: AtomicUsize = AtomicUsize::new(0);
/// While set, a body waits for [`GATE`].
static HOLD: AtomicBool = AtomicBool::new(false);
static GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[cached(tier = "redis", ttl = 60, key = "fanout:<id>")]
async fn fanout(id: u64) -> u64 {
    RUNS.fetch_add(1, SeqCst);
    if HOLD.load(SeqCst) {
        GATE.notified().await;
    }
    id * 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_of_a_redis_hit_are_redis_hits_and_followers_of_a_body_are_misses() {
    let server = RedisServer::start();
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url())
            .key_prefix("t")
            .redis_timeout(Duration::from_secs(10))
            .build(),
    )
    .unwrap();
    assert_eq!(fanout(100).await, 300);
    fanout_cache().reset_stats();
    RUNS.store(0, SeqCst);

    // Followers of a body run: misses, coalesced. The body is held until nine callers
    // joined its flight.
    HOLD.store(true, SeqCst);
    let leader = tokio::spawn(fanout(1));
    eventually(Duration::from_secs(10), "the body running", || {
        RUNS.load(SeqCst) == 1
    })
    .await;
    let followers: Vec<_> = (0..9).map(|_| tokio::spawn(fanout(1))).collect();
    eventually(Duration::from_secs(10), "9 joined callers", || {
        fanout_cache().stats().joined == 9
    })
    .await;
    HOLD.store(false, SeqCst);
    GATE.notify_one();
    for t in std::iter::once(leader).chain(followers) {
        assert_eq!(t.await.unwrap(), 3);
    }
    assert_eq!(RUNS.load(SeqCst), 1);
    let s = fanout_cache().stats();
    assert_eq!(
        (s.misses, s.coalesced, s.joined, s.redis_hits),
        (10, 9, 9, 0),
        "{s:?}"
    );

    // Ten concurrent callers of a value in Redis, the server stopped while they come: Redis
    // hits (nothing ran for them), not misses, whether they led or came while a read was
    // under way.
    fanout_cache().reset_stats();
    server.pause();
    let tasks: Vec<_> = (0..10).map(|_| tokio::spawn(fanout(1))).collect();
    server.resume();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 3);
    }
    assert_eq!(RUNS.load(SeqCst), 1, "served from Redis");
    let s = fanout_cache().stats();
    assert_eq!((s.redis_hits, s.misses, s.coalesced), (10, 0, 0), "{s:?}");
    assert_eq!(s.hit_ratio(), 1.0);
    assert_eq!(s.offload_ratio(), 1.0);
}
