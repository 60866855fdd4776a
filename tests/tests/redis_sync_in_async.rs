//! Blocking cached functions called from inside async code — a sync helper in an axum
//! handler, a `#[tokio::main(flavor = "current_thread")]` service — on a runtime that has
//! Redis connections of its own (driven by that runtime, which the blocked thread cannot
//! drive): every call completes, and its Redis work is done (a hit from Redis, an
//! invalidation confirmed), instead of waiting on a connection no thread drives.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::OnceLock;
use std::time::Duration;

use cache_runtime::{cached, Config};
use cache_tests::RedisServer;

#[cached(tier = "redis", ttl = 60, key = "sia-async:<id>")]
async fn warm(id: u64) -> u64 {
    id
}

static RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(tier = "redis", ttl = 60, key = "sia-sync:<id>")]
fn sync_value(id: u64) -> u64 {
    RUNS.fetch_add(1, SeqCst);
    id * 3
}

/// A local-only blocking function whose body waits for async Redis work by its own means (a
/// hand-rolled `block_on`, as `futures::executor::block_on` does): its miss runs the body on
/// the caller's stack, marked as blocking all the same, so that work goes to the Redis
/// thread and does not wait for the blocked runtime.
#[cached(tier = "local", ttl = 60, key = "sia-local:<id>")]
fn local_over_redis(id: u64) -> u64 {
    cache_tests::poll_here(warm(id)) + 1
}

/// Runs `f` on a thread, failing the test if it does not finish within `within`.
fn within<T: Send + 'static>(within: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(within)
        .expect("a blocking cached call inside a runtime hung")
}

fn server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = RedisServer::start();
        cache_runtime::init(
            Config::builder()
                .redis_url(server.url())
                .key_prefix("t")
                .redis_timeout(Duration::from_millis(500))
                .build(),
        )
        .unwrap();
        server
    })
}

/// On a runtime `rt` with connections of its own, blocking calls of key `id` from inside it.
fn blocking_calls_inside(rt: tokio::runtime::Runtime, id: u64) {
    server();
    let stats = within(Duration::from_secs(30), move || {
        rt.block_on(async {
            // Enough calls for this runtime to get connections of its own.
            for i in 0..200 {
                assert_eq!(warm(i % 10).await, i % 10);
            }
            let before = (sync_value_cache().stats(), RUNS.load(SeqCst));
            // Blocking calls from inside the runtime's thread.
            assert_eq!(local_over_redis(1000 + id), 1001 + id);
            assert_eq!(sync_value(id), id * 3);
            sync_value_cache().clear_local();
            assert_eq!(sync_value(id), id * 3);
            invalidate_sync_value(id).unwrap();
            assert_eq!(lookup_sync_value(id), None);
            assert_eq!(sync_value(id), id * 3);
            let after = sync_value_cache().stats();
            (
                RUNS.load(SeqCst) - before.1,
                after.redis_hits - before.0.redis_hits,
                after.redis_errors - before.0.redis_errors,
            )
        })
    });
    assert_eq!(
        stats,
        (2, 1, 0),
        "(body runs: the second call hit Redis, the third followed the invalidation; Redis \
         hits; Redis errors)"
    );
}

// One test: both runtimes use the same cache and counters.
#[test]
fn blocking_calls_inside_current_thread_and_one_worker_runtimes_complete() {
    let current_thread = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    blocking_calls_inside(current_thread, 1);
    let one_worker = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    blocking_calls_inside(one_worker, 2);
}
