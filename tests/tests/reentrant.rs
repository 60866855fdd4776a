//! A cached function whose body calls itself with the same key — directly, or through other
//! functions (a reload-and-retry, a fallback that goes round) — completes, as it does
//! uncached. The inner call does not wait for the outer call's flight, which waits for it:
//! it runs its body apart (`flight.rs`: a call made from inside the polls of its key's
//! running body). Before, such a call waited forever. Calls of one key that are concurrent in
//! one task (`join!`, `join_all` over repeated ids) are not nested: they still share one body.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::cached;
use cache_tests::{shared_redis_with_bus, shared_redis_with_bus_blocking, trusted_throughout};

static RETRY: AtomicBool = AtomicBool::new(true);
static RUNS: AtomicU64 = AtomicU64::new(0);

/// Reloads once by calling itself with the same key.
#[cached(tier = "local+redis", ttl = 60, key = "reentrant:<id>")]
async fn setting(id: u64) -> u64 {
    RUNS.fetch_add(1, SeqCst);
    if RETRY.swap(false, SeqCst) {
        return Box::pin(setting(id)).await + 1;
    }
    id
}

static ROUND: AtomicBool = AtomicBool::new(true);

/// `a` calls `b`, which calls `a` again with the same key.
#[cached(tier = "redis", ttl = 60, key = "reentrant-a:<id>")]
async fn a(id: u64) -> u64 {
    Box::pin(b(id)).await + 1
}

#[cached(ttl = 60, key = "reentrant-b:<id>")]
async fn b(id: u64) -> u64 {
    if ROUND.swap(false, SeqCst) {
        return Box::pin(a(id)).await * 10;
    }
    id
}

static LOCKED_RETRY: AtomicBool = AtomicBool::new(true);

/// With the distributed lock: the inner call does not wait for the lock its own caller holds.
#[cached(
    tier = "redis",
    ttl = 60,
    key = "reentrant-locked:<id>",
    lock = true,
    lock_lease = "30s"
)]
async fn locked_setting(id: u64) -> u64 {
    if LOCKED_RETRY.swap(false, SeqCst) {
        return Box::pin(locked_setting(id)).await + 1;
    }
    id
}

static SYNC_RETRY: AtomicBool = AtomicBool::new(true);

#[cached(tier = "local+redis", ttl = 60, key = "reentrant-sync:<id>")]
fn setting_sync(id: u64) -> u64 {
    if SYNC_RETRY.swap(false, SeqCst) {
        return setting_sync(id) + 1;
    }
    id
}

static SIBLING_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "reentrant-siblings:<id>")]
async fn author(id: u64) -> u64 {
    SIBLING_RUNS.fetch_add(1, SeqCst);
    tokio::task::yield_now().await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_one_key_joined_in_one_task_share_one_body() {
    shared_redis_with_bus().await;
    // A (re)subscription of the bus detaches the flights of `local+redis` caches (messages
    // may have been lost: docs/PROTOCOL.md §5.4), and a call after it runs a body of its
    // own, by design: measured over a run that had the bus up and trusted throughout, each
    // run on a key of its own.
    let mut id = 3;
    let (runs, coalesced) = trusted_throughout("four joined calls of one key", || {
        id += 1;
        async move {
            let runs = SIBLING_RUNS.load(SeqCst);
            let coalesced = author_cache().stats().coalesced;
            let all = tokio::join!(author(id), author(id), author(id), author(id));
            assert_eq!(all, (id, id, id, id));
            (
                SIBLING_RUNS.load(SeqCst) - runs,
                author_cache().stats().coalesced - coalesced,
            )
        }
    })
    .await;
    assert_eq!((runs, coalesced), (1, 3), "one body, three joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_functions_that_call_themselves_with_the_same_key_complete() {
    shared_redis_with_bus().await;
    let direct = tokio::time::timeout(Duration::from_secs(10), setting(7)).await;
    assert_eq!(
        direct,
        Ok(8),
        "completes: the inner call returned 7, the outer 7 + 1"
    );
    assert_eq!(RUNS.load(SeqCst), 2);
    // Then served from the cache, without running the body: a value one of the two calls
    // returned (which one depends on whether the local tier is serving yet: each call
    // stored its own).
    assert!([7, 8].contains(&setting(7).await));
    assert_eq!(RUNS.load(SeqCst), 2);

    let locked = tokio::time::timeout(Duration::from_secs(10), locked_setting(9)).await;
    assert_eq!(locked, Ok(10));
    let s = locked_setting_cache().stats();
    assert_eq!((s.lock_waits, s.lock_timeouts), (0, 0), "{s:?}");

    let round = tokio::time::timeout(Duration::from_secs(10), a(3)).await;
    // a(3) → b(3) → a(3) → b(3) = 3 (b's second round), + 1 → 4, × 10 → 40, + 1 → 41.
    assert_eq!(round, Ok(41));
}

#[test]
fn blocking_functions_that_call_themselves_with_the_same_key_complete() {
    shared_redis_with_bus_blocking();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(setting_sync(5)).unwrap());
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(6));
    assert!(
        [5, 6].contains(&setting_sync(5)),
        "a value one of the calls returned"
    );
    assert_eq!(setting_sync_cache().stats().body_calls, 2);
}
