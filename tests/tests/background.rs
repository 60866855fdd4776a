//! `soft_timeout` and `refresh_ahead`: bodies that finish or start in the background, against
//! the harness Redis. Bodies are held on semaphores, so what runs when is decided by the test;
//! only expiry (time passing, which is what is under test) is waited for.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, Source};
use cache_tests::{eventually, shared_redis_with_bus};
use tokio::sync::Semaphore;

static SOFT_RUNS: AtomicUsize = AtomicUsize::new(0);
static SOFT_VERSION: AtomicU64 = AtomicU64::new(0);
static SOFT_HOLD: AtomicBool = AtomicBool::new(false);
static SOFT_GATE: Semaphore = Semaphore::const_new(0);

#[cached(
    tier = "local+redis",
    ttl = "300ms",
    key = "soft:<id>",
    stale = "1h",
    soft_timeout = "50ms"
)]
async fn soft(id: u64) -> Result<u64, String> {
    SOFT_RUNS.fetch_add(1, SeqCst);
    if SOFT_HOLD.load(SeqCst) {
        SOFT_GATE.acquire().await.unwrap().forget();
    }
    Ok(id * 1000 + SOFT_VERSION.load(SeqCst))
}

/// Waits until `key` is no longer fresh in `cache` (expiry, what these tests are about, is
/// time passing: polled).
async fn until_expired(cache: &'static cache_runtime::Cache<u64>, key: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cache.lookup(key).await.is_some() {
        assert!(std::time::Instant::now() < deadline, "{key} never expired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn soft_timeout_serves_stale_and_the_body_updates_the_cache_in_the_background() {
    shared_redis_with_bus().await;
    assert_eq!(soft(1).await.unwrap(), 1000);
    SOFT_VERSION.store(1, SeqCst);
    // Expired locally and in Redis (whose copy is kept an hour as the fallback).
    until_expired(soft_cache(), "soft:1").await;

    // The body is held past the soft timeout: the caller gets the stale value at once...
    SOFT_HOLD.store(true, SeqCst);
    let e = soft_entry(1).await.unwrap();
    assert_eq!((*e.value(), e.source()), (1000, Source::Stale));
    let s = soft_cache().stats();
    assert_eq!((s.soft_timeouts, s.stale_served), (1, 1));
    assert_eq!(
        SOFT_RUNS.load(SeqCst),
        2,
        "the body runs on, in the background"
    );

    // ...and concurrent callers too, without starting another body.
    let again = soft_entry(1).await.unwrap();
    assert_eq!((*again.value(), again.source()), (1000, Source::Stale));
    assert_eq!(SOFT_RUNS.load(SeqCst), 2, "one body in the background");

    // Once the body finishes, its value is stored and served as a hit.
    SOFT_GATE.add_permits(1);
    eventually(
        Duration::from_secs(5),
        "the background body to store",
        || soft_cache().peek_local("soft:1") == Some(1001),
    )
    .await;
    SOFT_HOLD.store(false, SeqCst);
    let hit = soft_entry(1).await.unwrap();
    assert_eq!((*hit.value(), hit.source()), (1001, Source::Local));
    assert_eq!(SOFT_RUNS.load(SeqCst), 2);
}

static COLD_RUNS: AtomicUsize = AtomicUsize::new(0);
static COLD_GATE: Semaphore = Semaphore::const_new(0);

#[cached(ttl = "1m", key = "cold:<id>", stale = "1h", soft_timeout = "50ms")]
async fn cold(id: u64) -> Result<u64, String> {
    COLD_RUNS.fetch_add(1, SeqCst);
    COLD_GATE.acquire().await.unwrap().forget();
    Ok(id)
}

#[tokio::test]
async fn soft_timeout_without_a_stale_value_waits_for_the_body() {
    shared_redis_with_bus().await;
    let call = tokio::spawn(cold(2));
    eventually(Duration::from_secs(5), "the body to start", || {
        COLD_RUNS.load(SeqCst) == 1
    })
    .await;
    // Time passing is what is under test: well past the 50 ms soft timeout.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !call.is_finished(),
        "nothing stale to serve: the caller waits"
    );
    COLD_GATE.add_permits(1);
    assert_eq!(call.await.unwrap().unwrap(), 2);
    assert_eq!(cold_cache().stats().soft_timeouts, 0);
}

static AHEAD_RUNS: AtomicUsize = AtomicUsize::new(0);
static AHEAD_VERSION: AtomicU64 = AtomicU64::new(0);
static AHEAD_HOLD: AtomicBool = AtomicBool::new(false);
static AHEAD_GATE: Semaphore = Semaphore::const_new(0);

#[cached(
    tier = "local+redis",
    ttl = "2s",
    key = "ahead:<id>",
    refresh_ahead = 0.5
)]
async fn ahead(id: u64) -> u64 {
    AHEAD_RUNS.fetch_add(1, SeqCst);
    if AHEAD_HOLD.load(SeqCst) {
        AHEAD_GATE.acquire().await.unwrap().forget();
    }
    id * 1000 + AHEAD_VERSION.load(SeqCst)
}

#[tokio::test]
async fn refresh_ahead_refreshes_once_in_the_background_while_readers_keep_the_value() {
    shared_redis_with_bus().await;
    assert_eq!(ahead(1).await, 1000);
    let first = ahead_entry(1).await;
    assert_eq!(first.source(), Source::Local);
    assert_eq!(
        ahead_cache().stats().refreshes_ahead,
        0,
        "early reads refresh nothing"
    );

    // Time passing is what is under test: past half of the 2 s TTL.
    AHEAD_VERSION.store(1, SeqCst);
    AHEAD_HOLD.store(true, SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Many readers late in the TTL: all get the current value at once, one refresh starts
    // (and Redis's copy, as old as the local one, does not satisfy it).
    let readers: Vec<_> = (0..50).map(|_| tokio::spawn(ahead(1))).collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), 1000);
    }
    eventually(Duration::from_secs(5), "the refresh body to start", || {
        AHEAD_RUNS.load(SeqCst) == 2
    })
    .await;
    assert_eq!(ahead_cache().stats().refreshes_ahead, 1);
    assert_eq!(
        ahead(1).await,
        1000,
        "readers keep the value during the refresh"
    );

    AHEAD_GATE.add_permits(1);
    eventually(Duration::from_secs(5), "the refreshed value", || {
        ahead_cache().peek_local("ahead:1") == Some(1001)
    })
    .await;
    AHEAD_HOLD.store(false, SeqCst);
    let refreshed = ahead_entry(1).await;
    assert_eq!(*refreshed.value(), 1001);
    assert!(refreshed.created() > first.created());
    assert_eq!(AHEAD_RUNS.load(SeqCst), 2);
    assert_eq!(ahead_cache().stats().refreshes_ahead, 1);
}

/// A service handle methods take as `self: Arc<Self>`: the method owns its receiver, so the
/// body may finish or start after the caller returned, as a free function's does.
struct Catalog {
    version: AtomicU64,
    runs: AtomicUsize,
    hold: AtomicBool,
    gate: Semaphore,
}

impl Catalog {
    #[cached(
        tier = "local+redis",
        ttl = "2s",
        key = "catalog:<id>",
        skip(self),
        refresh_ahead = 0.5
    )]
    async fn price(self: std::sync::Arc<Self>, id: u64) -> u64 {
        self.runs.fetch_add(1, SeqCst);
        if self.hold.load(SeqCst) {
            self.gate.acquire().await.unwrap().forget();
        }
        id * 1000 + self.version.load(SeqCst)
    }

    #[cached(
        tier = "local+redis",
        ttl = "300ms",
        key = "catalog_soft:<id>",
        skip(self),
        stale = "1h",
        soft_timeout = "50ms"
    )]
    async fn stock(self: std::sync::Arc<Self>, id: u64) -> Result<u64, String> {
        self.runs.fetch_add(1, SeqCst);
        if self.hold.load(SeqCst) {
            self.gate.acquire().await.unwrap().forget();
        }
        Ok(id * 1000 + self.version.load(SeqCst))
    }
}

#[tokio::test]
async fn arc_self_methods_refresh_ahead_and_finish_after_a_soft_timeout() {
    use std::sync::Arc;
    shared_redis_with_bus().await;
    let catalog = Arc::new(Catalog {
        version: AtomicU64::new(0),
        runs: AtomicUsize::new(0),
        hold: AtomicBool::new(false),
        gate: Semaphore::new(0),
    });

    assert_eq!(catalog.clone().price(1).await, 1000);
    // Past half of the 2 s TTL (time passing is what is under test): the read returns the
    // current value and starts the refresh, which holds its own clone of the `Arc`.
    catalog.version.store(1, SeqCst);
    catalog.hold.store(true, SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(catalog.clone().price(1).await, 1000);
    eventually(Duration::from_secs(5), "the refresh body to start", || {
        catalog.runs.load(SeqCst) == 2
    })
    .await;
    assert_eq!(Arc::strong_count(&catalog), 2, "the refresh owns a clone");
    assert_eq!(Catalog::price_cache().stats().refreshes_ahead, 1);
    catalog.gate.add_permits(1);
    eventually(Duration::from_secs(5), "the refreshed value", || {
        Catalog::price_cache().peek_local("catalog:1") == Some(1001)
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "the refresh to drop its clone",
        || Arc::strong_count(&catalog) == 1,
    )
    .await;
    catalog.hold.store(false, SeqCst);

    // A stale value served after the soft timeout; the body finishes in the background.
    assert_eq!(catalog.clone().stock(2).await, Ok(2001));
    catalog.version.store(2, SeqCst);
    catalog.hold.store(true, SeqCst);
    // Expired locally and in Redis (whose copy is kept an hour as the fallback).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Catalog::stock_cache()
        .lookup("catalog_soft:2")
        .await
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the entry never expired"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let runs = catalog.runs.load(SeqCst);
    assert_eq!(
        catalog.clone().stock(2).await,
        Ok(2001),
        "stale, at the soft timeout"
    );
    assert_eq!(catalog.runs.load(SeqCst), runs + 1);
    assert_eq!(Catalog::stock_cache().stats().soft_timeouts, 1);
    catalog.gate.add_permits(1);
    eventually(
        Duration::from_secs(5),
        "the background body's value",
        || Catalog::stock_cache().peek_local("catalog_soft:2") == Some(2002),
    )
    .await;
}

/// An error type that is not `Send`, as in many applications.
type BoxError = Box<dyn std::error::Error>;

static BOXED_RUNS: AtomicUsize = AtomicUsize::new(0);
static BOXED_VERSION: AtomicU64 = AtomicU64::new(0);
static BOXED_FAIL: AtomicBool = AtomicBool::new(false);
static BOXED_HOLD: AtomicBool = AtomicBool::new(false);
static BOXED_GATE: Semaphore = Semaphore::const_new(0);

/// The body of both caches below: held on the gate while `BOXED_HOLD` is set; an `Err` while
/// `BOXED_FAIL` is.
async fn boxed_body(id: u64) -> Result<u64, BoxError> {
    BOXED_RUNS.fetch_add(1, SeqCst);
    if BOXED_HOLD.load(SeqCst) {
        BOXED_GATE.acquire().await.unwrap().forget();
    }
    if BOXED_FAIL.load(SeqCst) {
        return Err(format!("row {id} unavailable").into());
    }
    Ok(id * 1000 + BOXED_VERSION.load(SeqCst))
}

#[cached(
    tier = "local+redis",
    ttl = "300ms",
    key = "boxed-soft:<id>",
    stale = "1h",
    soft_timeout = "50ms"
)]
async fn boxed_soft(id: u64) -> Result<u64, BoxError> {
    boxed_body(id).await
}

#[cached(
    tier = "local",
    ttl = "2s",
    key = "boxed-ahead:<id>",
    refresh_ahead = 0.5
)]
async fn boxed_ahead(id: u64) -> Result<u64, BoxError> {
    boxed_body(id).await
}

/// A call as a handler makes it: on a task of its own (so its future must be `Send`), the
/// error turned into the task's own.
async fn spawned<F>(call: F) -> Result<u64, String>
where
    F: std::future::Future<Output = Result<u64, BoxError>> + Send + 'static,
{
    tokio::spawn(async move { call.await.map_err(|e| e.to_string()) })
        .await
        .unwrap()
}

/// `soft_timeout` and `refresh_ahead` with a result that is not `Send` (its error): the body
/// runs on the caller's task until the caller leaves, and the task that finishes it only
/// stores its value (an `Err` is dropped there), so nothing of the result crosses threads.
/// Before, the body ran in a task from the start and its whole result had to be `Send`: a
/// `Box<dyn Error>` function did not compile with either option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_timeout_and_refresh_ahead_take_results_that_are_not_send() {
    shared_redis_with_bus().await;
    assert_eq!(spawned(boxed_soft(1)).await, Ok(1000));
    BOXED_VERSION.store(1, SeqCst);
    until_expired(boxed_soft_cache(), "boxed-soft:1").await;
    // Past the soft timeout the caller gets the stale value; the body goes on in a task.
    BOXED_HOLD.store(true, SeqCst);
    let runs = BOXED_RUNS.load(SeqCst);
    assert_eq!(spawned(boxed_soft(1)).await, Ok(1000));
    assert_eq!(boxed_soft_cache().stats().soft_timeouts, 1);
    assert_eq!(BOXED_RUNS.load(SeqCst), runs + 1);
    BOXED_GATE.add_permits(1);
    eventually(
        Duration::from_secs(5),
        "the background body to store",
        || boxed_soft_cache().peek_local("boxed-soft:1") == Some(1001),
    )
    .await;
    BOXED_HOLD.store(false, SeqCst);
    assert_eq!(spawned(boxed_soft(1)).await, Ok(1001));

    // A background body that fails: its error is dropped, the stale value stays the answer.
    BOXED_FAIL.store(true, SeqCst);
    BOXED_VERSION.store(2, SeqCst);
    until_expired(boxed_soft_cache(), "boxed-soft:1").await;
    BOXED_HOLD.store(true, SeqCst);
    let runs = BOXED_RUNS.load(SeqCst);
    assert_eq!(spawned(boxed_soft(1)).await, Ok(1001));
    BOXED_GATE.add_permits(1);
    eventually(
        Duration::from_secs(5),
        "the failing background body",
        || BOXED_RUNS.load(SeqCst) == runs + 1,
    )
    .await;
    BOXED_HOLD.store(false, SeqCst);
    // A failing body with a stale value kept: the fail-safe answers (the error is not cached).
    assert_eq!(spawned(boxed_soft(1)).await, Ok(1001));
    BOXED_FAIL.store(false, SeqCst);

    // Refresh ahead: a read late in the TTL starts one refresh in a task.
    assert_eq!(spawned(boxed_ahead(2)).await, Ok(2002));
    BOXED_VERSION.store(3, SeqCst);
    // Readers keep getting the current value at once until the refreshed one replaces it
    // (past half the TTL; the entry expires at 2 s, so a read never waits for a body).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let runs = BOXED_RUNS.load(SeqCst);
    loop {
        let v = spawned(boxed_ahead(2)).await;
        if v == Ok(2003) {
            break;
        }
        assert_eq!(v, Ok(2002));
        assert!(std::time::Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        BOXED_RUNS.load(SeqCst),
        runs + 1,
        "one refresh, in the background"
    );
    assert_eq!(boxed_ahead_cache().stats().refreshes_ahead, 1);
}
