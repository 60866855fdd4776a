//! A waiter for a key's lock (`lock = true`) stops waiting once the key is written (found by
//! an outside fault run: under a storm of invalidations of one hot key, another process's
//! callers took the lock again and again, and a waiter polled until its deadline, 2 × the
//! lease: 20 s with the default lease, with Redis healthy and a 3 ms body). Once the key's
//! ticket changed since the waiter first looked, the value it waits for may be gone before
//! it looks again, and a body it runs now reads the source after that write: it runs it.
//!
//! Two caches over the same Redis keys stand for two processes: one holds the lock with a
//! body that does not finish until the other returned; the key is invalidated as another
//! process would (`DEL v t`, a fresh ticket).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{Cache, Plain, Sharing, Tier};
use cache_tests::shared_redis;

static ROW: AtomicU64 = AtomicU64::new(1);

fn locked_cache() -> Cache<u64> {
    Cache::builder("lock-storm")
        .tier(Tier::Redis)
        .ttl(Duration::from_secs(60))
        // Far longer than the test: a waiter that waits for the holder never returns.
        .lock(Duration::from_secs(600))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_waiter_stops_waiting_once_the_key_is_written() {
    let server = shared_redis();
    let (holder_cache, waiter_cache) = (locked_cache(), locked_cache());
    let holder_cache: &'static Cache<u64> = Box::leak(Box::new(holder_cache));
    let waiter_cache: &'static Cache<u64> = Box::leak(Box::new(waiter_cache));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(async move {
        holder_cache
            .get_or_load::<u64, Plain>(
                "storm:1",
                async move {
                    started_tx.send(()).unwrap();
                    finish_rx.await.unwrap();
                    ROW.load(SeqCst)
                },
                &Sharing::none(),
            )
            .await
    });
    started_rx.await.unwrap();
    let lock = cache_tests::shared_lock_key(holder_cache, "storm:1");
    assert!(server.exists(&lock), "the holder took the lock");

    // The waiter polls; meanwhile the row changes and another process invalidates.
    let waiter = tokio::spawn(async move {
        waiter_cache
            .get_or_load::<u64, Plain>("storm:1", async { ROW.load(SeqCst) }, &Sharing::none())
            .await
    });
    cache_tests::eventually(WITHIN, "the waiter to poll", || {
        waiter_cache.stats().lock_waits > 0
    })
    .await;
    ROW.store(2, SeqCst);
    let schema = waiter_cache.key_schema().unwrap();
    let (value, ticket, _) = cache_runtime::key::redis_keys("t", schema, "storm:1");
    let _: () = server.cmd(&["DEL", &value, &ticket]).unwrap();
    let _: () = server
        .cmd(&["SET", &ticket, "00000000deadbeef", "PX", "60000"])
        .unwrap();

    // Bounded only so that the old behaviour fails instead of hanging for 20 minutes.
    let got = tokio::time::timeout(WITHIN, waiter)
        .await
        .expect("the waiter still waits for the holder after the key was written")
        .unwrap();
    assert_eq!(got, 2, "the waiter's body read the source after the write");
    let stats = waiter_cache.stats();
    assert_eq!((stats.lock_timeouts, stats.misses), (0, 1), "{stats:?}");
    assert!(server.exists(&lock), "the holder still holds its lock");

    finish_tx.send(()).unwrap();
    assert_eq!(holder.await.unwrap(), 2);
}

const WITHIN: Duration = Duration::from_secs(30);
