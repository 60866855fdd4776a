//! Async callers on a Tokio runtime get Redis connections driven by that runtime (no hop to
//! the runtime's Redis thread per request), once the runtime has made a few calls; runtimes
//! built for a handful of calls never open any. Counted from the server side.

use std::time::Duration;

use cache_runtime::cached;
use cache_tests::{wait_until, RedisServer};

#[cached(tier = "redis", ttl = 60, key = "caller_rt:<id>")]
async fn value(id: u64) -> u64 {
    id * 7
}

fn clients(server: &RedisServer) -> u64 {
    server
        .info_field("connected_clients")
        .and_then(|v| v.parse().ok())
        .expect("connected_clients")
}

#[test]
fn a_busy_runtime_gets_its_own_connections_and_short_lived_ones_do_not() {
    let server = cache_tests::own_redis("t");
    // The main connections come up with the first calls. This process's one cache is
    // Redis-only, on a single node with client tracking: no subscription (PROTOCOL §5.2).
    let short_lived = || cache_tests::current_thread_runtime();
    short_lived().block_on(async { assert_eq!(value(1).await, 7) });
    let bus = cache_runtime::bus_status();
    assert!(
        !bus.wanted && !bus.connected && bus.subscriptions == 0,
        "{bus:?}"
    );
    let baseline = clients(&server);

    // Twenty runtimes of one call each: served, no connection of their own.
    for id in 0..20 {
        short_lived().block_on(async { assert_eq!(value(id).await, id * 7) });
    }
    assert_eq!(
        clients(&server),
        baseline,
        "a runtime that makes one call opens no connections"
    );

    // A runtime that keeps calling gets its own (data and write connections).
    let busy = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the busy runtime's own connections",
        || {
            busy.block_on(async {
                for id in 0..50 {
                    assert_eq!(value(id).await, id * 7);
                }
            });
            clients(&server) > baseline
        },
    );
    // And keeps answering correctly through them, hits from Redis included.
    let hits_before = value_cache().stats().redis_hits;
    busy.block_on(async {
        for id in 0..200 {
            assert_eq!(value(id % 20).await, (id % 20) * 7);
        }
    });
    assert!(value_cache().stats().redis_hits >= hits_before + 200);
}
