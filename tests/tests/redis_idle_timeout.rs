//! Connections Redis closes while they are idle (its `timeout` setting; a proxy's idle
//! timeout and `CLIENT KILL` look the same to the client): the next calls reconnect and are
//! served from Redis, with no body run, no error counted and the breaker left closed — for
//! async callers (on their runtime's own connections and on the main ones) and blocking
//! callers alike, and invalidations still return `Ok`. Every connection carries TCP
//! keepalive (what keeps it in a NAT's or load balancer's table while idle).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, BreakerState};
use cache_tests::{eventually, RedisServer};

static BODIES: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "idle:two:<id>")]
async fn two_tier(id: u64) -> String {
    BODIES.fetch_add(1, SeqCst);
    format!("two {id}")
}

#[cached(tier = "redis", ttl = 60, key = "idle:redis:<id>")]
async fn redis_only(id: u64) -> String {
    BODIES.fetch_add(1, SeqCst);
    format!("redis {id}")
}

#[cached(tier = "local+redis", ttl = 60, key = "idle:blocking:<id>")]
fn blocking(id: u64) -> String {
    BODIES.fetch_add(1, SeqCst);
    format!("blocking {id}")
}

/// Established TCP connections to the server from this host: how many, and how many have a
/// keepalive timer (`ss`, Debian's iproute2).
fn connections_with_keepalive(server: &RedisServer) -> (usize, usize) {
    let filter = format!("( dport = :{} )", server.port());
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established", &filter])
        .output()
        .expect("ss, from Debian's iproute2 (apt-get install -y iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let kept = lines
        .iter()
        .filter(|l| l.contains("timer:(keepalive"))
        .count();
    (lines.len(), kept)
}

/// Redis hits and errors of the three caches, summed.
fn totals() -> (u64, u64) {
    [
        two_tier_cache().stats(),
        redis_only_cache().stats(),
        blocking_cache().stats(),
    ]
    .iter()
    .fold((0, 0), |(h, e), s| (h + s.redis_hits, e + s.redis_errors))
}

/// One Redis read of each cache (local copies dropped first); each must be a Redis hit.
async fn read_each_from_redis(id: u64) {
    two_tier_cache().clear_local();
    blocking_cache().clear_local();
    assert_eq!(two_tier(id).await, format!("two {id}"));
    assert_eq!(redis_only(id).await, format!("redis {id}"));
    let v = tokio::task::spawn_blocking(move || blocking(id))
        .await
        .unwrap();
    assert_eq!(v, format!("blocking {id}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_redis_closes_while_idle_cost_no_body_and_no_error() {
    let server = cache_tests::own_redis("t");
    // Filled, then read from Redis often enough that this runtime opens connections of its
    // own (the blocking caller keeps using the main ones).
    for _ in 0..40 {
        read_each_from_redis(1).await;
    }
    let bodies = BODIES.load(SeqCst);
    assert_eq!(bodies, 3, "one body per cache");
    let (hits, errors) = totals();
    assert_eq!(errors, 0);
    // A connection the runtime is opening in the background (its own connections, the bus)
    // gets its keepalive right after `connect`: `ss` may see it in between.
    eventually(
        Duration::from_secs(10),
        "every connection to Redis (data, tracked and bus at least) to have TCP keepalive",
        || {
            let (open, kept_alive) = connections_with_keepalive(&server);
            open >= 4 && kept_alive == open
        },
    )
    .await;

    server.config_set("timeout", "1");
    eventually(
        Duration::from_secs(10),
        "Redis to close every idle connection of the process",
        || server.normal_clients() == 0,
    )
    .await;

    read_each_from_redis(1).await;
    let (hits_after, errors_after) = totals();
    assert_eq!(
        errors_after, 0,
        "a closed idle connection failed a call instead of being reopened"
    );
    assert_eq!(
        BODIES.load(SeqCst),
        bodies,
        "no body ran: every read was a Redis hit"
    );
    assert_eq!(hits_after, hits + 3);
    assert_eq!(cache_runtime::redis_status().breaker, BreakerState::Closed);

    // And once more, after the reopened connections idled out in turn: writes too.
    eventually(
        Duration::from_secs(10),
        "Redis to close the reopened connections",
        || server.normal_clients() == 0,
    )
    .await;
    invalidate_two_tier(1)
        .await
        .expect("an invalidation on a connection Redis closed while idle");
    invalidate_redis_only(1).await.expect("idem");
    assert_eq!(two_tier(1).await, "two 1");
    assert_eq!(
        BODIES.load(SeqCst),
        bodies + 1,
        "the invalidated key ran its body"
    );
    assert_eq!(totals().1, 0, "no error counted");
}
