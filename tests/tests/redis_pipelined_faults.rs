//! Auto-pipelined reads (`redis_tier/batch.rs`) when Redis stops answering or goes away
//! while they are in flight: every caller still gets the source's value (its batch's error
//! is its own timeout or lost connection, the body runs), none waits forever, and reads are
//! pipelined again once Redis is back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cache_runtime::cached;
use cache_tests::{shared_redis, wait_until};

const TASKS: u64 = 64;
/// Each task reads keys of its own (no flights joined: 64 reads in flight).
const KEYS_PER_TASK: u64 = 4;
const KEYS: u64 = TASKS * KEYS_PER_TASK;
const WITHIN: Duration = Duration::from_secs(60);

static STOP: AtomicBool = AtomicBool::new(false);
static CALLS: AtomicU64 = AtomicU64::new(0);

#[cached(tier = "redis", ttl = 600, key = "pipe_fault:<id>")]
async fn value(id: u64) -> u64 {
    id * 31 + 5
}

fn pipelined() -> u64 {
    cache_runtime::redis_status().pipelined_reads
}

fn bodies() -> u64 {
    value_cache().stats().body_calls
}

fn redis_hits() -> u64 {
    value_cache().stats().redis_hits
}

/// While a fault lasts: callers get the body's value (their batch's error is their own) and
/// calls go on (each checked by its task).
fn callers_served_by_the_body(during: &str) {
    let b = bodies();
    wait_until(
        WITHIN,
        &format!("callers served by the body {during}"),
        || bodies() >= b + TASKS,
    );
    let from = CALLS.load(Ordering::SeqCst);
    wait_until(WITHIN, &format!("calls {during}"), || {
        CALLS.load(Ordering::SeqCst) >= from + TASKS * 4
    });
}

/// Once Redis is back: hits from Redis again, pipelined again.
fn served_from_redis_again(after: &str) {
    let (h, p) = (redis_hits(), pipelined());
    wait_until(WITHIN, &format!("Redis hits again {after}"), || {
        redis_hits() > h + 1_000
    });
    wait_until(WITHIN, &format!("reads pipelined again {after}"), || {
        pipelined() > p + 1_000
    });
}

#[test]
fn pipelined_reads_survive_a_paused_and_a_killed_redis() {
    // The harness server (key prefix `t`, 200 ms operation timeout).
    let server = shared_redis();
    let rt = cache_tests::current_thread_runtime();
    rt.block_on(async {
        for _ in 0..4 {
            for id in 0..KEYS {
                assert_eq!(value(id).await, id * 31 + 5);
            }
        }
    });
    let reader = std::thread::spawn(move || {
        rt.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    tokio::spawn(async move {
                        let mut i = 0;
                        while !STOP.load(Ordering::SeqCst) {
                            let id = t * KEYS_PER_TASK + i % KEYS_PER_TASK;
                            assert_eq!(value(id).await, id * 31 + 5, "id {id}");
                            CALLS.fetch_add(1, Ordering::SeqCst);
                            i += 1;
                            // As a request handler does between requests: a call that
                            // fails fast (breaker open) yields only once its task's
                            // cooperative budget is spent (redis_breaker_yields.rs).
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("a reading task panicked");
            }
        })
    });

    let start = pipelined();
    wait_until(WITHIN, "reads to be pipelined", || {
        pipelined() > start + 1_000
    });

    // Killed and restarted at once: recovers (with pipelining as without).
    server.kill();
    server.restart();
    served_from_redis_again("after the first restart");

    // Paused: in-flight batches time out, their callers run the body; calls go on.
    server.pause();
    callers_served_by_the_body("while Redis is paused");
    server.resume();
    served_from_redis_again("after the pause");

    // Killed and restarted empty: batches fail with the lost connection, callers get the
    // body's value, and once reconnected the values are stored and read again.
    server.kill();
    callers_served_by_the_body("while Redis is down");
    server.restart();
    served_from_redis_again("after the restart");

    STOP.store(true, Ordering::SeqCst);
    reader.join().expect("a read was wrong");
}
