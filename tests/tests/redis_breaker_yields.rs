//! With the breaker open, a call skips Redis without awaiting anything. It still takes a unit
//! of its task's cooperative budget, so a loop of such calls whose bodies do not await either
//! yields to its runtime now and then: the tasks that end an outage (the reconnect, the
//! breaker's probe) and the runtime's other tasks keep running. Without it the loop below
//! keeps a current-thread runtime to itself until it ends (the hang traced in
//! docs/BENCHMARKS.md, nineteenth round).

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use cache_runtime::{cached, BreakerState, Config};
use cache_tests::RedisServer;

/// A body that never awaits (a pure computation, or a source already in memory).
#[cached(tier = "redis", ttl = 60, key = "yields:<id>")]
async fn double(id: u64) -> u64 {
    id * 2
}

#[test]
fn calls_with_the_breaker_open_let_the_runtime_run_other_tasks() {
    let server = RedisServer::start();
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url())
            .key_prefix("t")
            .redis_timeout(Duration::from_millis(200))
            .breaker_threshold(1)
            // Open for the whole test: no probe closes it meanwhile.
            .breaker_cooldown(Duration::from_secs(600))
            .build(),
    )
    .unwrap();
    let rt = cache_tests::current_thread_runtime();
    rt.block_on(async {
        assert_eq!(double(1).await, 2);
        server.kill();
        // Calls stay correct while the failures open the breaker.
        let mut id = 2;
        while cache_runtime::redis_status().breaker != BreakerState::Open {
            assert_eq!(double(id).await, id * 2);
            id += 1;
            assert!(id < 1_000, "the breaker did not open after {id} calls");
        }
        let ran = Arc::new(AtomicBool::new(false));
        tokio::spawn({
            let ran = ran.clone();
            async move { ran.store(true, SeqCst) }
        });
        let mut ran_at = None;
        for i in 0..10_000u64 {
            assert_eq!(double(10_000 + i).await, (10_000 + i) * 2);
            if ran_at.is_none() && ran.load(SeqCst) {
                ran_at = Some(i);
            }
        }
        assert_eq!(cache_runtime::redis_status().breaker, BreakerState::Open);
        let ran_at = ran_at.expect("another task of the runtime ran during 10 000 calls");
        // Tokio's budget is 128 units per poll of a task; a call takes at least one.
        assert!(ran_at <= 128, "it ran only after {ran_at} calls");
    });
}
