//! Measures invalidation propagation between two processes on this host: process A calls
//! `invalidate_profile(k)` for N keys, one after another; process B records, for each bus
//! message it applies, the time from A's publish to B's eviction (same host clock).
//!
//! `cargo bench -p cache-tests --bench bus_propagation` (N = 4000; the receiver keeps the last 4096 samples). Under `cargo test` it
//! runs a 100-message smoke version. It runs on one Redis server (`PUBLISH`/`SUBSCRIBE`),
//! then on a local Redis Cluster of 3 masters + 3 replicas (`SPUBLISH` to bucket channels,
//! every process `SSUBSCRIBE`d to all 1 024 of them); `BUS_ONLY=single` or `cluster` runs
//! one of them.

use std::time::{Duration, Instant};

use cache_tests::{eventually_blocking, Node, RedisCluster, RedisServer};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let n: usize = if std::env::args().any(|a| a == "--bench") {
        4000
    } else {
        100
    };
    let only = std::env::var("BUS_ONLY").unwrap_or_default();
    if only != "cluster" {
        let server = RedisServer::start();
        measure("single node", n, &server, &[]);
    }
    if only != "single" {
        let cluster = RedisCluster::start();
        // The bodies' "database" (unused by invalidations) is a separate server.
        let db = RedisServer::start();
        let seeds = cluster.seed_urls().join(",");
        // Each invalidation waits for its master's replica (`WAIT`); this measures delivery,
        // not confirmation, so a loaded 2-core CI host gets 2 s instead of the node's 500 ms.
        measure(
            "cluster (3 masters + 3 replicas)",
            n,
            &db,
            &[
                ("NODE_CLUSTER_URLS", seeds.as_str()),
                ("NODE_REDIS_TIMEOUT_MS", "2000"),
            ],
        );
    }
}

fn measure(what: &str, n: usize, server: &RedisServer, env: &[(&str, &str)]) {
    let node = env!("CARGO_BIN_EXE_cache-node");
    let a = Node::start(node, server, env);
    let b = Node::start(node, server, env);
    eventually_blocking(Duration::from_secs(10), "both subscribed", || {
        [&a, &b].iter().all(|x| x.call("bus").starts_with("true"))
    });
    // Warm up connections and scripts. The first write is retried until it is confirmed: a
    // cluster just formed can take its replicas' first acknowledgements past the timeout.
    a.call_until_ok("invalidate 1000000", Duration::from_secs(30));
    for k in 1..50 {
        a.call(&format!("invalidate {}", 1_000_000 + k));
    }
    eventually_blocking(Duration::from_secs(10), "warm-up delivered", || {
        b.call("delays").split(',').count() >= 50
    });
    // A retried warm-up write was published too (only its confirmation was late): count
    // what arrived rather than assume 50.
    let base = b.call("delays").split(',').count();
    assert!(
        base + n <= 4096,
        "the receiver keeps 4096 samples; {base} + {n} do not fit"
    );
    let start = Instant::now();
    for k in 0..n {
        a.call(&format!("invalidate {k}"));
    }
    let elapsed = start.elapsed();
    eventually_blocking(Duration::from_secs(30), "all delivered", || {
        b.call("delays").split(',').count() >= base + n
    });
    let mut delays: Vec<u64> = b
        .call("delays")
        .split(',')
        .skip(base)
        .map(|s| s.parse().unwrap())
        .collect();
    delays.sort_unstable();
    println!("## {what}");
    println!("invalidations: {n}, sequential, one process publishing, one receiving");
    println!(
        "driver round trip per invalidate (stdin → node → Redis → reply): {:.1} µs",
        elapsed.as_micros() as f64 / n as f64
    );
    println!("| percentile | publish → eviction in the other process |");
    println!("|---|---|");
    for (label, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        println!("| {label} | {} µs |", percentile(&delays, p));
    }
    println!("| max | {} µs |", delays.last().unwrap());
}
