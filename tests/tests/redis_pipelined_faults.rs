//! Auto-pipelined reads (`redis_tier/batch.rs`) when Redis stops answering or goes away
//! while they are in flight: every caller still gets the source's value (its batch's error
//! is its own timeout or lost connection, the body runs), none waits forever, and reads are
//! pipelined again once Redis is back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cache_runtime::{cached, Config};
use cache_tests::{wait_until, RedisServer};

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

/// Waits until `n` more calls have returned (each checked by its task).
fn calls_go_on(n: u64, what: &str) {
    let from = CALLS.load(Ordering::SeqCst);
    wait_until(WITHIN, what, || CALLS.load(Ordering::SeqCst) >= from + n);
}

#[test]
fn pipelined_reads_survive_a_paused_and_a_killed_redis() {
    let server = RedisServer::start();
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url())
            .key_prefix("t")
            .redis_timeout(Duration::from_millis(300))
            .build(),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
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
                            // A call that fails fast (breaker open) never yields: without
                            // this, one task would keep the runtime to itself.
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
    let h = value_cache().stats().redis_hits;
    server.restart();
    wait_until(WITHIN, "Redis hits again after the first restart", || {
        value_cache().stats().redis_hits > h + 1_000
    });

    // Paused: in-flight batches time out, their callers run the body; calls go on.
    let b = bodies();
    server.pause();
    wait_until(
        WITHIN,
        "callers served by the body while Redis is paused",
        || bodies() >= b + TASKS,
    );
    calls_go_on(TASKS * 4, "calls while Redis is paused");
    server.resume();
    let p = pipelined();
    wait_until(WITHIN, "reads pipelined again after the pause", || {
        pipelined() > p + 1_000
    });

    // Killed and restarted empty: batches fail with the lost connection, callers get the
    // body's value, and once reconnected the values are stored and read again.
    let b = bodies();
    server.kill();
    wait_until(
        WITHIN,
        "callers served by the body while Redis is down",
        || bodies() >= b + TASKS,
    );
    calls_go_on(TASKS * 4, "calls while Redis is down");
    server.restart();
    let p = pipelined();
    let h = value_cache().stats().redis_hits;
    wait_until(WITHIN, "Redis hits again after the restart", || {
        value_cache().stats().redis_hits > h + 1_000
    });
    wait_until(WITHIN, "reads pipelined again after the restart", || {
        pipelined() > p + 1_000
    });

    STOP.store(true, Ordering::SeqCst);
    reader.join().expect("a read was wrong");
}
