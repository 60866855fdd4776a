//! A cluster master SIGKILLed while two cache processes call and write (issue 13): its
//! replica takes over, no call ever returns a wrong value, calls keep returning within a
//! bound set by the configured timeout, Redis hits resume, and no stale value is read
//! afterwards.
//!
//! "Wrong" is the promise of docs/PROTOCOL.md §0: once an invalidation returned `Ok`, the
//! writing process never returns an older value, and another process at most for the bus
//! window (its local copy) after the `Ok`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cache_tests::{eventually_blocking, Node, RedisCluster, RedisServer};
use redis::Commands;

const V1: &str = env!("CARGO_BIN_EXE_cache-node");
const WITHIN: Duration = Duration::from_secs(30);
/// The nodes' Redis operation timeout.
const TIMEOUT_MS: u64 = 200;
/// The longest a call may take: a call makes at most a read, a claim and a store (plus a
/// lock-free body on the local "database"), each bounded by the timeout, writes by twice
/// it (their `WAIT`); the rest is slack for a loaded 2-core CI host and the node protocol.
const CALL_BOUND: Duration = Duration::from_millis(TIMEOUT_MS * 10);

fn gen_of(value: &str) -> u64 {
    value
        .strip_prefix('g')
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("unexpected value {value}"))
}

struct Run<'a> {
    db: &'a RedisServer,
    nodes: [&'a Node; 2],
    ids: Vec<u64>,
    gen: HashMap<u64, u64>,
    /// Per id: (writer node index, generation, instant its invalidation returned Ok).
    committed: HashMap<u64, Vec<(usize, u64, Instant)>>,
    slowest: Duration,
    reads: u64,
    write_errors: u64,
}

impl Run<'_> {
    fn timed(&mut self, node: usize, cmd: &str) -> Result<String, String> {
        let start = Instant::now();
        let n = self.nodes[node];
        let res = n.reply(n.send(cmd));
        self.slowest = self.slowest.max(start.elapsed());
        res
    }

    /// One round: every id gets a new row written by `writer` (row, then invalidate), then
    /// both nodes read every id and the values are checked against the promise.
    fn round(&mut self, writer: usize) {
        for i in 0..self.ids.len() {
            let id = self.ids[i];
            let g = self.gen.entry(id).or_insert(0);
            *g += 1;
            let g = *g;
            let _: () = self
                .db
                .client()
                .set(format!("db:{id}"), format!("g{g}"))
                .unwrap();
            match self.timed(writer, &format!("invalidate {id}")) {
                Ok(_) => self
                    .committed
                    .entry(id)
                    .or_default()
                    .push((writer, g, Instant::now())),
                // Not confirmed during the failover: no promise, retried in the background.
                Err(_) => self.write_errors += 1,
            }
        }
        for i in 0..self.ids.len() {
            let id = self.ids[i];
            for reader in 0..2 {
                let started = Instant::now();
                let value = self
                    .timed(reader, &format!("get {id}"))
                    .unwrap_or_else(|e| panic!("get {id} failed in node {reader}: {e}"));
                self.reads += 1;
                let got = gen_of(&value);
                // The newest generation this reader must see: any the reader itself
                // confirmed before the call, another process's confirmed a bus window
                // before it.
                let floor = self
                    .committed
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .filter(|&&(w, _, at)| {
                        at <= started
                            && (w == reader
                                || started.duration_since(at) > cache_runtime::BUS_WINDOW)
                    })
                    .map(|&(_, g, _)| g)
                    .max()
                    .unwrap_or(0);
                assert!(
                    got >= floor,
                    "node {reader} returned g{got} for id {id}, older than the confirmed g{floor}"
                );
                assert!(got <= self.gen[&id], "a value from the future");
            }
        }
    }
}

/// The Redis key of `logical`'s ticket: in its entry's slot, like its value, whatever the
/// nodes' value type.
fn ticket_key(logical: &str) -> String {
    let any_schema = cache_runtime::key::KeySchema::of::<String>(1);
    cache_runtime::key::redis_keys("t", any_schema, logical).1
}

fn redis_hits(n: &Node) -> u64 {
    let stats = n.call("stats");
    stats
        .split("redis_hits: ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no redis_hits in {stats}"))
}

#[test]
fn a_master_killed_while_two_processes_call_and_write_loses_nothing() {
    let cluster = RedisCluster::start();
    let db = RedisServer::start();
    let seeds = cluster.seed_urls().join(",");
    let env = [
        ("NODE_CLUSTER_URLS", seeds.as_str()),
        ("NODE_REDIS_TIMEOUT_MS", "200"),
    ];
    let (a, b) = (Node::start(V1, &db, &env), Node::start(V1, &db, &env));
    for n in [&a, &b] {
        n.wait_subscribed(1, WITHIN);
        eventually_blocking(WITHIN, "the bus to be trusted", || {
            n.call("trusted") == "true"
        });
    }
    // Three ids on every master.
    let masters: Vec<u16> = cluster.masters().iter().map(|m| m.port()).collect();
    let mut ids = Vec::new();
    let mut per: HashMap<u16, usize> = HashMap::new();
    let mut id = 1;
    while ids.len() < 3 * masters.len() {
        let key = ticket_key(&format!("profile:{id}"));
        let owner = cluster.master_for_key(&key).port();
        let n = per.entry(owner).or_default();
        if *n < 3 {
            *n += 1;
            ids.push(id);
        }
        id += 1;
    }
    let victim_key = ticket_key(&format!("profile:{}", ids[0]));
    let victim = cluster.master_for_key(&victim_key).port();
    let mut run = Run {
        db: &db,
        nodes: [&a, &b],
        ids,
        gen: HashMap::new(),
        committed: HashMap::new(),
        slowest: Duration::ZERO,
        reads: 0,
        write_errors: 0,
    };
    for r in 0..3 {
        run.round(r % 2);
    }
    let hits_before = redis_hits(&b);
    assert!(hits_before > 0, "b was served from Redis before the kill");

    cluster.kill_master(victim);
    // Keep calling and writing from both processes until the replica has taken over.
    let promoted = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| cluster.wait_failover(victim));
        let mut r = 0;
        while !waiter.is_finished() {
            run.round(r % 2);
            r += 1;
        }
        waiter.join().unwrap()
    });
    assert_ne!(promoted, victim);
    // The killed node comes back as a replica of the promoted one, so writes can be
    // confirmed (`WAIT 1`) on that shard again.
    cluster.restart_node(victim);
    cluster.wait_healthy();
    for r in 0..4 {
        run.round(r % 2);
    }
    // Deferred writes drain, then Redis serves b again on every shard and nothing is stale.
    for n in [&a, &b] {
        eventually_blocking(WITHIN, "pending writes drained", || {
            n.call("pending") == "0"
        });
        eventually_blocking(WITHIN, "the bus trusted again", || {
            n.call("trusted") == "true"
        });
    }
    let hits_after_failover = redis_hits(&b);
    run.round(0);
    for &id in &run.ids.clone() {
        let want = format!("g{}", run.gen[&id]);
        assert_eq!(a.call(&format!("get {id}")), want);
        b.call("clear_local");
        assert_eq!(b.call(&format!("get {id}")), want, "b, from Redis");
    }
    assert!(
        redis_hits(&b) > hits_after_failover,
        "Redis hits resumed after the failover"
    );
    assert!(
        run.slowest < CALL_BOUND,
        "a call took {:?} (bound {CALL_BOUND:?})",
        run.slowest
    );
    eprintln!(
        "failover: {} reads, 0 wrong, {} unconfirmed writes, slowest call {:?}",
        run.reads, run.write_errors, run.slowest
    );
}
