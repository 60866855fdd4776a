//! Acceptance test of issue 11, item 8: a million invalidations while Redis hangs stay within
//! bounded memory and drain fast (docs/PROTOCOL.md).
//!
//! In a test binary of its own: it measures this process's resident memory, which tests running
//! beside it in the same process would move (their threads' allocator arenas grow and are not
//! given back; in `redis_protocol_faults.rs`, beside the tests that send megabytes of commands,
//! it once read 70 MiB under CPU load, against 7 MiB alone), and it runs the cache runtime in
//! this process (one runtime per test binary).

use std::time::{Duration, Instant};

use cache_runtime::cached;
use cache_tests::node::set_row;
use cache_tests::{eventually_blocking, Node};

const V1: &str = env!("CARGO_BIN_EXE_cache-node");
const WITHIN: Duration = Duration::from_secs(10);

// Same name, key, version and tier as the nodes' `profile` (the same function deployed in
// another process), so its writes, folded or not, reach their entries.
#[cached(name = "cache_node::profile", tier = "local+redis", ttl = 60, local_ttl = 30, key = "profile:<id>", tags = ["user:<id>"], version = 1)]
async fn profile(id: u64) -> String {
    format!("in-process-{id}")
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Item 8: a million invalidations while Redis hangs stay within bounded memory, drain within
/// seconds of Redis returning, and afterwards no process reads an invalidated value.
#[test]
fn a_million_invalidations_during_a_hang_stay_bounded_and_drain_fast() {
    const KEYS: u64 = 1_000_000;
    const RSS_BOUND: u64 = 64 << 20;
    // Its own server, with this process's runtime configured for it (key prefix `t`, as the
    // nodes', and a 200 ms timeout).
    let server = cache_tests::shared_redis();
    let reader = Node::start(V1, server, &[]);
    reader.wait_subscribed(1, WITHIN);
    let watched: Vec<u64> = (0..100).collect();
    for &id in &watched {
        set_row(server, id, "old");
        assert_eq!(reader.call(&format!("get {id}")), "old");
        set_row(server, id, "new");
    }

    let rt = cache_tests::current_thread_runtime();
    server.pause();
    let before = rss_bytes();
    rt.block_on(async {
        for id in 0..KEYS {
            assert!(
                invalidate_profile(id).await.is_err(),
                "Redis hangs: nothing is confirmed"
            );
        }
    });
    let grown = rss_bytes().saturating_sub(before);
    let pending = cache_runtime::redis_status().pending_writes;
    server.resume();
    assert!(
        grown < RSS_BOUND,
        "{KEYS} pending invalidations grew RSS by {} MiB ({pending} pending entries)",
        grown >> 20
    );
    let resumed = Instant::now();
    eventually_blocking(
        Duration::from_secs(10),
        "the pending writes to drain",
        || cache_runtime::redis_status().pending_writes == 0,
    );
    eprintln!("drained in {:?}", resumed.elapsed());

    let newcomer = Node::start(V1, server, &[]);
    for &id in &watched {
        assert_eq!(newcomer.call(&format!("get {id}")), "new", "a new process");
        assert_eq!(reader.call(&format!("get {id}")), "new", "the reader");
        assert_ne!(rt.block_on(profile(id)), "old", "this process");
    }
}
