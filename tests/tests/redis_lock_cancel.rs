//! A caller that holds a key's lock (`lock = true`) and is cancelled while its body runs — a
//! client gone (the server drops the handler's future), a `timeout` or `select!` around the
//! call, an aborted task — releases the lock at once, from the Redis thread: the next caller
//! of the key, in this process or another, runs the body without waiting out the lease
//! (30 s here; 10 s by default). A body that panics under the lock releases it the same way.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::cached;
use cache_tests::{eventually, shared_lock_key, shared_redis};
use tokio::sync::Notify;

static RUNS: AtomicU64 = AtomicU64::new(0);
/// While set, a body waits forever (until its caller is cancelled).
static HANG: AtomicBool = AtomicBool::new(true);
static STARTED: Notify = Notify::const_new();
static LOCKED_IN_BODY: AtomicBool = AtomicBool::new(false);

#[cached(
    tier = "redis",
    ttl = 60,
    key = "cancel-lock:<id>",
    lock = true,
    lock_lease = "30s"
)]
async fn slow(id: u64) -> u64 {
    RUNS.fetch_add(1, SeqCst);
    LOCKED_IN_BODY.store(
        shared_redis().exists(&shared_lock_key(slow_cache(), &format!("cancel-lock:{id}"))),
        SeqCst,
    );
    STARTED.notify_one();
    if HANG.load(SeqCst) {
        std::future::pending::<()>().await;
    }
    id
}

static PANICS: AtomicBool = AtomicBool::new(true);
static PANICKED_UNDER_LOCK: AtomicBool = AtomicBool::new(false);

#[cached(
    tier = "redis",
    ttl = 60,
    key = "panic-lock:<id>",
    lock = true,
    lock_lease = "30s"
)]
async fn panicky(id: u64) -> u64 {
    PANICKED_UNDER_LOCK.store(
        shared_redis().exists(&shared_lock_key(
            panicky_cache(),
            &format!("panic-lock:{id}"),
        )),
        SeqCst,
    );
    assert!(!PANICS.load(SeqCst), "the body panics");
    id
}

/// Cancels a caller of `slow(id)` once its body started, in each way a caller goes away,
/// then checks that the lock is released and the next caller runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lock_holder_releases_the_lock() {
    shared_redis();
    // 1. An aborted task.
    HANG.store(true, SeqCst);
    let task = tokio::spawn(slow(1));
    STARTED.notified().await;
    assert!(
        LOCKED_IN_BODY.swap(false, SeqCst),
        "the body ran under the lock"
    );
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    eventually(Duration::from_secs(5), "the lock is released", || {
        !shared_redis().exists(&shared_lock_key(slow_cache(), "cancel-lock:1"))
    })
    .await;

    // 2. `select!` (what `tokio::time::timeout` and a server dropping a handler do).
    tokio::select! {
        _ = slow(2) => panic!("the body hangs"),
        _ = STARTED.notified() => {}
    }
    assert!(
        LOCKED_IN_BODY.swap(false, SeqCst),
        "the body ran under the lock"
    );
    eventually(Duration::from_secs(5), "the lock is released", || {
        !shared_redis().exists(&shared_lock_key(slow_cache(), "cancel-lock:2"))
    })
    .await;

    // The next callers take the lock at once and run the body (no value was stored).
    HANG.store(false, SeqCst);
    let before = (slow_cache().stats(), RUNS.load(SeqCst));
    assert_eq!(slow(1).await, 1);
    assert_eq!(slow(2).await, 2);
    let s = slow_cache().stats();
    assert_eq!(RUNS.load(SeqCst), before.1 + 2);
    assert_eq!(
        (
            s.lock_waits - before.0.lock_waits,
            s.lock_timeouts - before.0.lock_timeouts,
            s.redis_errors - before.0.redis_errors
        ),
        (0, 0, 0),
        "{s:?}"
    );
    // Stored, and the store released the lock.
    assert!(!shared_redis().exists(&shared_lock_key(slow_cache(), "cancel-lock:1")));
    assert_eq!(slow(1).await, 1);
    assert_eq!(RUNS.load(SeqCst), before.1 + 2, "a hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_panics_under_the_lock_releases_it() {
    shared_redis();
    let task = tokio::spawn(panicky(1));
    assert!(task.await.unwrap_err().is_panic());
    assert!(
        PANICKED_UNDER_LOCK.load(SeqCst),
        "the body ran under the lock"
    );
    eventually(Duration::from_secs(5), "the lock is released", || {
        !shared_redis().exists(&shared_lock_key(panicky_cache(), "panic-lock:1"))
    })
    .await;
    PANICS.store(false, SeqCst);
    let before = panicky_cache().stats();
    assert_eq!(panicky(1).await, 1);
    let s = panicky_cache().stats();
    assert_eq!(s.lock_waits - before.lock_waits, 0, "{s:?}");
}
