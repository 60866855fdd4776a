//! A cached `async fn` whose error type is not `Send` — `Box<dyn std::error::Error>`, common
//! in applications — keeps its future `Send`, as the function's own future is: a handler or a
//! spawned task can await it (and turn the error into its own). The runtime holds nothing of
//! the function's result type across an await: where the result is stored, only the value
//! (`Send + Sync`) is kept across the store; where it is not (an `Err`), a `lock` is released
//! without waiting for Redis.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::cached;
use cache_tests::{eventually, shared_lock_key, shared_redis};

type BoxError = Box<dyn std::error::Error>;

static RUNS: AtomicU64 = AtomicU64::new(0);
/// Runs for id 0 (the failing one), apart: the two tests run at once.
static FAILED_RUNS: AtomicU64 = AtomicU64::new(0);
static LOCK_HELD_IN_BODY: AtomicBool = AtomicBool::new(false);

#[cached(tier = "local+redis", ttl = 60, key = "send:<id>", lock = true)]
async fn load(id: u64) -> Result<u64, BoxError> {
    tokio::task::yield_now().await;
    if id == 0 {
        FAILED_RUNS.fetch_add(1, SeqCst);
        LOCK_HELD_IN_BODY.store(
            shared_redis().exists(&shared_lock_key(load_cache(), "send:0")),
            SeqCst,
        );
        return Err("no row 0".into());
    }
    RUNS.fetch_add(1, SeqCst);
    Ok(id * 10)
}

#[cached(tier = "redis", ttl = 60, key = "send-local:<id>")]
async fn load_redis_only(id: u64) -> Result<u64, BoxError> {
    tokio::task::yield_now().await;
    if id == 0 {
        return Err("no row 0".into());
    }
    Ok(id)
}

#[cached(tier = "local", ttl = 60, key = "send-r:<id>")]
async fn load_local(id: u64) -> Result<u64, BoxError> {
    tokio::task::yield_now().await;
    Ok(id)
}

/// `Send` but not `Sync`, as an error and as a skipped parameter.
#[cached(
    tier = "local+redis",
    ttl = 60,
    key = "send-ns:<id>",
    skip(conn),
    lock = true
)]
async fn send_not_sync(
    id: u64,
    conn: std::cell::Cell<u8>,
) -> Result<u64, Box<dyn std::error::Error + Send>> {
    tokio::task::yield_now().await;
    Ok(id + u64::from(conn.get()))
}

/// A service that owns a connection that is not `Sync`, called by value.
struct Service {
    conn: std::cell::RefCell<u32>,
    shard: u32,
}

impl Service {
    #[cached(tier = "local+redis", ttl = 60, key = "send-svc:<self.shard>:<id>")]
    async fn get(self, id: u64) -> Result<u64, BoxError> {
        tokio::task::yield_now().await;
        Ok(id + u64::from(*self.conn.borrow()))
    }
}

/// Compiles only for a `Send` future: what `tokio::spawn` and axum ask of a handler's.
fn send<F: Future + Send>(f: F) -> F {
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_stay_send_with_an_error_that_is_not() {
    shared_redis();
    // Every generated async function of each tier, as a `Send` future.
    let _ = send(load(1)).await;
    let _ = send(load_entry(1)).await;
    let _ = send(refresh_load(1)).await;
    let _ = send(lookup_load(1)).await;
    let _ = send(invalidate_load(1)).await;
    let _ = send(populate_load(1, 10)).await;
    let _ = send(load_redis_only(1)).await;
    let _ = send(load_local(1)).await;
    let _ = send(load_local_entry(1)).await;
    assert_eq!(
        send(send_not_sync(1, std::cell::Cell::new(2))).await.ok(),
        Some(3)
    );
    let service = || Service {
        conn: std::cell::RefCell::new(5),
        shard: 1,
    };
    assert_eq!(send(service().get(1)).await.ok(), Some(6));
    // The companions take `&self` (so that a shared instance reaches them): their futures
    // are `Send` where `Self` is `Sync`, as any `&self` method's.
    assert_eq!(service().lookup_get(1).await, Some(6));

    // Spawned, as a handler would be, the error turned into the task's own.
    let spawned = |id| tokio::spawn(async move { load(id).await.map_err(|e| e.to_string()) });
    RUNS.store(0, SeqCst);
    invalidate_load(2).await.expect("invalidate");
    assert_eq!(spawned(2).await.unwrap(), Ok(20));
    assert_eq!(spawned(2).await.unwrap(), Ok(20));
    assert_eq!(RUNS.load(SeqCst), 1, "the second call hit");
    assert_eq!(
        tokio::spawn(async { load_redis_only(0).await.map_err(|e| e.to_string()) })
            .await
            .unwrap(),
        Err("no row 0".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_releases_the_lock_without_holding_the_result() {
    shared_redis();
    let lock = shared_lock_key(load_cache(), "send:0");
    let before = load_cache().stats();
    let runs = FAILED_RUNS.load(SeqCst);
    let err = tokio::spawn(async { load(0).await.map_err(|e| e.to_string()) })
        .await
        .unwrap();
    assert_eq!(err, Err("no row 0".to_string()));
    assert!(
        LOCK_HELD_IN_BODY.load(SeqCst),
        "the body ran under the lock"
    );
    // Released without waiting: it lands about one round trip after the call returned.
    eventually(Duration::from_secs(5), "the lock is released", || {
        !shared_redis().exists(&lock)
    })
    .await;
    // Errors are not cached: the next call runs the body again, and finds no lock to wait for.
    assert!(load(0).await.is_err());
    eventually(Duration::from_secs(5), "the lock is released", || {
        !shared_redis().exists(&lock)
    })
    .await;
    let s = load_cache().stats();
    assert_eq!(FAILED_RUNS.load(SeqCst), runs + 2);
    assert_eq!(
        (
            s.lock_waits - before.lock_waits,
            s.redis_errors - before.redis_errors
        ),
        (0, 0),
        "{s:?}"
    );
}
