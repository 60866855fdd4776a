//! Measures invalidation propagation between two processes on this host: process A calls
//! `invalidate_profile(k)` for N keys, one after another; process B records, for each bus
//! message it applies, the time from A's publish to B's eviction (same host clock).
//!
//! `cargo bench -p cache-tests --bench bus_propagation` (N = 4000; the receiver keeps the last 4096 samples). Under `cargo test` it
//! runs a 100-message smoke version.

use std::time::{Duration, Instant};

use cache_tests::{eventually_blocking, Node, RedisServer};

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
    let node = env!("CARGO_BIN_EXE_cache-node");
    let server = RedisServer::start();
    let a = Node::start(node, &server, &[]);
    let b = Node::start(node, &server, &[]);
    eventually_blocking(Duration::from_secs(10), "both subscribed", || {
        [&a, &b].iter().all(|x| x.call("bus").starts_with("true"))
    });
    // Warm up connections and scripts.
    for k in 0..50 {
        a.call(&format!("invalidate {}", 1_000_000 + k));
    }
    eventually_blocking(Duration::from_secs(10), "warm-up delivered", || {
        b.call("delays").split(',').count() >= 50
    });
    let start = Instant::now();
    for k in 0..n {
        a.call(&format!("invalidate {k}"));
    }
    let elapsed = start.elapsed();
    eventually_blocking(Duration::from_secs(30), "all delivered", || {
        b.call("delays").split(',').count() >= 50 + n
    });
    let mut delays: Vec<u64> = b
        .call("delays")
        .split(',')
        .skip(50)
        .map(|s| s.parse().unwrap())
        .collect();
    delays.sort_unstable();
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
