//! Two cache processes behind Sentinel (1 master, 1 replica, 3 sentinels) during a
//! `SENTINEL FAILOVER` (issue 11, item 7): process A writes (bumps a row in the source of
//! truth, then `invalidate_*` until it returns `Ok`) while process B reads the same keys
//! through its `local+redis` cache. No read of B that starts more than the bus window after
//! an `Ok` may return the value that invalidation removed: not from B's local copies, not
//! from either master. The source of truth is a separate `redis-server`, so the failover
//! never touches it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cache_runtime::BUS_WINDOW;
use cache_tests::node::set_row;
use cache_tests::{Node, RedisServer, SentinelSet};

const V1: &str = env!("CARGO_BIN_EXE_cache-node");
const WITHIN: Duration = Duration::from_secs(30);
/// Scheduling slack between the test and the node processes, on top of the window.
const SLACK: Duration = Duration::from_millis(100);
const KEYS: u64 = 20;

#[test]
fn a_failover_under_two_processes_serves_nothing_invalidated() {
    let set = SentinelSet::start("twoproc");
    let db = RedisServer::start();
    let urls = set.sentinel_urls().join(",");
    let env = [
        ("NODE_SENTINEL_URLS", urls.as_str()),
        ("NODE_SENTINEL_MASTER", set.master_name()),
    ];
    let a = Node::start(V1, &db, &env);
    let b = Node::start(V1, &db, &env);
    a.wait_subscribed(1, WITHIN);
    b.wait_subscribed(1, WITHIN);
    let old_master = set.master_port();

    // Both processes cache every key; B holds local copies.
    let mut settled: HashMap<u64, (String, Instant)> = HashMap::new();
    for id in 1..=KEYS {
        let v = format!("r0-{id}");
        set_row(&db, id, &v);
        assert_eq!(a.call(&format!("get {id}")), v);
        assert_eq!(b.call(&format!("get {id}")), v);
        assert_eq!(b.call(&format!("peek {id}")), v, "B holds a local copy");
        settled.insert(id, (v, Instant::now()));
    }

    let mut stale = Vec::new();
    let mut reads = 0u64;
    let mut in_window = 0u64;
    let new_master = std::thread::scope(|scope| {
        let failover = scope.spawn(|| set.failover());
        let mut round = 0;
        // Rounds of writes and reads during the failover, and two more after it.
        let mut after = 0;
        while after < 2 {
            if failover.is_finished() {
                after += 1;
            }
            round += 1;
            for id in 1..=KEYS {
                let v = format!("r{round}-{id}");
                set_row(&db, id, &v);
                // `Err` while the failover is under way (unconfirmed by the replica,
                // `READONLY`, the master unreachable): retried.
                let at = a.call_until_ok(&format!("invalidate {id}"), WITHIN);
                settled.insert(id, (v, at));
                // B reads a key invalidated earlier in this round (or the last round).
                let probe = (id * 7) % KEYS + 1;
                let (want, at) = settled[&probe].clone();
                let started = Instant::now();
                let got = b.call(&format!("get {probe}"));
                reads += 1;
                if got != want {
                    let since = started.duration_since(at);
                    if since > BUS_WINDOW + SLACK {
                        stale.push(format!(
                            "round {round}: B read {got} for key {probe}, {since:?} after the Ok that settled {want}"
                        ));
                    } else {
                        in_window += 1;
                    }
                }
            }
        }
        failover.join().expect("the failover")
    });
    assert_ne!(new_master, old_master, "the master changed");
    println!(
        "{reads} reads by B during and after the failover: {} stale beyond {BUS_WINDOW:?} + {SLACK:?}, {in_window} within it",
        stale.len()
    );
    assert!(stale.is_empty(), "stale reads: {stale:#?}");

    // Afterwards, both processes and a newcomer read every key's last settled value.
    std::thread::sleep(BUS_WINDOW + SLACK);
    let c = Node::start(V1, &db, &env);
    for id in 1..=KEYS {
        let want = &settled[&id].0;
        for (who, node) in [("A", &a), ("B", &b), ("a new process", &c)] {
            assert_eq!(
                &node.call(&format!("get {id}")),
                want,
                "{who} read an invalidated value of key {id} after the failover"
            );
        }
    }
}
