//! A full Redis (`maxmemory` reached under `noeviction`) refuses writes with `OOM` and serves
//! every read. Refused writes must not open the circuit breaker: it would send every read to
//! the source while Redis could serve it (found by an outside fault run under a tiny
//! `maxmemory`: a Redis-only cache's bodies ran 27 times as often while Redis was full). Here
//! 20 lock-taking reads refused at once opened it before (the hits below went to the body).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use cache_runtime::cached;

static BODIES: AtomicU64 = AtomicU64::new(0);

#[cached(tier = "redis", ttl = 300, key = "oom:<id>")]
async fn value(id: u64) -> u64 {
    BODIES.fetch_add(1, SeqCst);
    id * 10
}

/// Its reads take the lock in a script that reads before it writes, which a full server
/// refuses (`OOM`) as a whole.
#[cached(tier = "redis", ttl = 300, key = "oom-locked:<id>", lock = true)]
async fn locked(id: u64) -> u64 {
    id * 100
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_keeps_serving_reads() {
    let server = cache_tests::own_redis("oom");
    for id in 0..4 {
        assert_eq!(value(id).await, id * 10);
        assert_eq!(value(id).await, id * 10);
    }
    server.config_set("maxmemory-policy", "noeviction");
    server.config_set("maxmemory", "1");
    // Writes refused one after another, more than the breaker's threshold (5): stores, and
    // the lock-taking reads of another cache.
    let refused = |c: &str| server.command_stats(c).1;
    // A script's own refusal is its `failed_calls`.
    let failed = |c: &str| -> u64 {
        let info: String = server.cmd(&["INFO", "commandstats"]).expect("INFO");
        info.lines()
            .find(|l| l.starts_with(&format!("cmdstat_{c}:")))
            .and_then(|l| l.split("failed_calls=").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let (sets, scripts) = (refused("set"), failed("evalsha"));
    for id in 100..120 {
        assert_eq!(refresh_value(id).await, id * 10, "the body's value");
    }
    // At once, as under load: no success of another call between the refusals.
    let mut reads = tokio::task::JoinSet::new();
    for id in 100..120 {
        reads.spawn(async move { (id, locked(id).await) });
    }
    for (id, v) in reads.join_all().await {
        assert_eq!(v, id * 100, "the body's value");
    }
    assert!(
        refused("set") >= sets + 20 && failed("evalsha") >= scripts + 20,
        "the writes were refused (or the test proves nothing)"
    );
    // The cached values are still served by Redis.
    let (hits, bodies) = (value_cache().stats().redis_hits, BODIES.load(SeqCst));
    for id in 0..4 {
        assert_eq!(value(id).await, id * 10);
    }
    server.config_set("maxmemory", "0");
    assert_eq!(
        value_cache().stats().redis_hits,
        hits + 4,
        "served by Redis while it was full"
    );
    assert_eq!(BODIES.load(SeqCst), bodies, "no body ran");
}
