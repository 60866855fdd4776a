//! The cost of write confirmation, as a timed loop (not a test: it asserts nothing about
//! time). Run it twice and compare (numbers in docs/RESILIENCE.md):
//!
//! ```text
//! WAIT_MODE=auto cargo test -p cache-tests --test redis_sentinel_wait_cost -- --ignored --nocapture
//! WAIT_MODE=off  cargo test -p cache-tests --test redis_sentinel_wait_cost -- --ignored --nocapture
//! ```
//!
//! A master and a replica on loopback; 3 000 sequential `invalidate_*` calls on distinct keys
//! through the runtime (`WaitReplicas::Auto`: the invalidate script then `WAIT 1`; `Off`: the
//! script alone).

use std::time::{Duration, Instant};

use cache_runtime::{cached, Config, WaitReplicas};
use cache_tests::{wait_until, RedisOptions, RedisServer};

#[cached(tier = "redis", ttl = 60, key = "cost:<id>")]
fn value(id: u64) -> u64 {
    id
}

#[test]
#[ignore = "a measurement, run by hand (see the module docs)"]
fn time_invalidations_with_and_without_wait() {
    let mode = match std::env::var("WAIT_MODE").as_deref() {
        Ok("off") => WaitReplicas::Off,
        _ => WaitReplicas::Auto,
    };
    let master = RedisServer::start();
    let replica = RedisServer::start_with_options(RedisOptions::new().replica_of(master.port()));
    wait_until(Duration::from_secs(30), "the replica's link", || {
        replica.info_field("master_link_status").as_deref() == Some("up")
    });
    cache_runtime::init(
        Config::builder()
            .redis_url(master.url())
            .redis_timeout(Duration::from_secs(1))
            .wait_replicas(mode)
            .build(),
    )
    .unwrap();
    // Warm up: connections, scripts loaded, `ROLE` read.
    for id in 0..200 {
        invalidate_value(id).unwrap();
    }
    let n = 3_000u64;
    let mut lat = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for id in 1_000..1_000 + n {
        let t = Instant::now();
        invalidate_value(id).unwrap();
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "wait_replicas={mode:?}: {n} invalidations in {total:?}: mean {:?}, p50 {:?}, p99 {:?}, max {:?}",
        total / n as u32,
        pct(0.50),
        pct(0.99),
        lat[lat.len() - 1]
    );
    assert_eq!(cache_runtime::redis_status().unconfirmed_writes, 0);
}
