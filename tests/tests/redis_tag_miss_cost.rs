//! What a tagged Redis-only miss sends, counted from the server's side (`INFO
//! commandstats`): a read does not claim a tag token the tracked connection keeps, and a
//! store does not send again a tag extension (`PEXPIREAT … GT`) it already made to the same
//! deadline (docs/PROTOCOL.md §7.2). Before: 10 commands per miss with a per-key tag (5
//! `SET`, 2 `PEXPIREAT`, `GET`, `MGET`, `CLIENT CACHING`), 8 with shared tags (5 `SET`, 3
//! `PEXPIREAT`), against 2 for an untagged miss. And every value stays right: hits after
//! the misses, a tag invalidation refuses what carries the tag, and a token deleted behind
//! the process's back (no bus message) is never taken as kept by a later miss's store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use cache_runtime::{cached, invalidate_tag};
use cache_tests::RedisServer;

static PER_KEY_RUNS: AtomicU64 = AtomicU64::new(0);
static SHARED_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(tier = "redis", ttl = 300, key = "tmc:<id>:<org>", tags = ["user:<id>", "org:<org>", "catalog"])]
async fn per_key_tags(id: u64, org: u64) -> u64 {
    PER_KEY_RUNS.fetch_add(1, SeqCst);
    id * 1000 + org
}

#[cached(tier = "redis", ttl = 300, key = "tms:<id>:<org>", tags = ["org:<org>", "catalog", "region:<org>"])]
async fn shared_tags(id: u64, org: u64) -> u64 {
    SHARED_RUNS.fetch_add(1, SeqCst);
    id * 1000 + org
}

/// Calls per command (`cmdstat_<name>`), `INFO` itself left out.
fn calls(server: &RedisServer) -> HashMap<String, u64> {
    let info: String = server
        .cmd(&["INFO", "commandstats"])
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let n = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_string(), n.parse().ok()?))
        })
        .filter(|(name, _)| name != "info")
        .collect()
}

/// The commands sent between `before` and `after`, per command, and their total.
fn sent(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> (HashMap<String, u64>, u64) {
    let per: HashMap<String, u64> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    let total = per.values().sum();
    (per, total)
}

const MISSES: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_miss_claims_and_extends_only_what_it_must() {
    let server = cache_tests::own_redis("tmc");
    // Warm up: the connections, the kept clear and shared tag tokens, and both caches'
    // "mostly new keys" mode (their reads claim).
    for id in 0..300u64 {
        assert_eq!(per_key_tags(id, id % 10).await, id * 1000 + id % 10);
        assert_eq!(shared_tags(id, id % 10).await, id * 1000 + id % 10);
    }

    // Per-key tag (`user:<id>`, new with each key) plus two shared ones.
    let before = calls(&server);
    let runs = PER_KEY_RUNS.load(SeqCst);
    for i in 0..MISSES {
        let id = 1_000_000 + i;
        assert_eq!(per_key_tags(id, id % 10).await, id * 1000 + id % 10);
    }
    assert_eq!(
        PER_KEY_RUNS.load(SeqCst) - runs,
        MISSES,
        "every call a miss"
    );
    let (per, total) = sent(&before, &calls(&server));
    eprintln!("per-key tags: {total} commands for {MISSES} misses: {per:?}");
    // The claims of the ticket and of `user:<id>` (one pipeline), the store's `SET`: 3 per
    // miss. A few more where a quantum of the tag deadline ends (one `PEXPIREAT` per shared
    // token) or a push overtook a read. Before: 10.
    assert!(
        total <= MISSES * 3 + 20,
        "a per-key-tagged miss sent {total} commands for {MISSES} misses: {per:?}"
    );
    assert!(
        per.get("pexpireat").copied().unwrap_or(0) <= 4,
        "the shared tokens' extensions are sent once per deadline: {per:?}"
    );

    // Shared tags only: every token kept.
    let before = calls(&server);
    let runs = SHARED_RUNS.load(SeqCst);
    for i in 0..MISSES {
        let id = 1_000_000 + i;
        assert_eq!(shared_tags(id, id % 10).await, id * 1000 + id % 10);
    }
    assert_eq!(SHARED_RUNS.load(SeqCst) - runs, MISSES, "every call a miss");
    let (per, total) = sent(&before, &calls(&server));
    eprintln!("shared tags: {total} commands for {MISSES} misses: {per:?}");
    // The ticket's claim alone, the store's `SET`: 2 per miss, as untagged. Before: 8.
    assert!(
        total <= MISSES * 2 + 20,
        "a shared-tagged miss sent {total} commands for {MISSES} misses: {per:?}"
    );

    // The values are right and served from Redis.
    for i in 0..MISSES {
        let id = 1_000_000 + i;
        assert_eq!(per_key_tags(id, id % 10).await, id * 1000 + id % 10);
        assert_eq!(shared_tags(id, id % 10).await, id * 1000 + id % 10);
    }
    assert_eq!(
        PER_KEY_RUNS.load(SeqCst),
        300 + MISSES,
        "hits after the misses"
    );
    assert_eq!(
        SHARED_RUNS.load(SeqCst),
        300 + MISSES,
        "hits after the misses"
    );

    // A tag invalidation refuses what carries the tag, and only that.
    invalidate_tag("org:3").await.unwrap();
    let runs = (PER_KEY_RUNS.load(SeqCst), SHARED_RUNS.load(SeqCst));
    for i in 0..20 {
        let id = 1_000_000 + i;
        assert_eq!(per_key_tags(id, id % 10).await, id * 1000 + id % 10);
        assert_eq!(shared_tags(id, id % 10).await, id * 1000 + id % 10);
    }
    assert_eq!(
        (
            PER_KEY_RUNS.load(SeqCst) - runs.0,
            SHARED_RUNS.load(SeqCst) - runs.1
        ),
        (2, 2),
        "ids 1000003 and 1000013 carry org:3"
    );

    // A shared token deleted behind the process's back (no bus message): its push removes
    // it, and what was noted of its expiry, so the misses after it claim a new token, extend
    // it, and never serve a value stamped with the old one.
    let catalog = "{tmc:scopes}:t:catalog";
    assert!(server.exists(catalog));
    let old: String = server.cmd(&["GET", catalog]).unwrap();
    server.cmd::<()>(&["DEL", catalog]).unwrap();
    let runs = SHARED_RUNS.load(SeqCst);
    for i in 0..20 {
        let id = 1_000_000 + i;
        assert_eq!(shared_tags(id, id % 10).await, id * 1000 + id % 10);
    }
    assert_eq!(
        SHARED_RUNS.load(SeqCst) - runs,
        20,
        "the catalog token went: all misses"
    );
    let new: String = server.cmd(&["GET", catalog]).unwrap();
    assert_ne!(new, old, "a new token");
    let left: i64 = server.cmd(&["PTTL", catalog]).unwrap();
    assert!(
        left > 300_000,
        "the new token is extended past its values' lifetime: {left} ms left"
    );
    let runs = SHARED_RUNS.load(SeqCst);
    for i in 0..20 {
        let id = 1_000_000 + i;
        assert_eq!(shared_tags(id, id % 10).await, id * 1000 + id % 10);
    }
    assert_eq!(SHARED_RUNS.load(SeqCst), runs, "hits under the new token");
}
