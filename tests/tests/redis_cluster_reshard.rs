//! A slot moved between cluster masters while two cache processes call and write
//! (resharding: `redis-cli --cluster reshard`'s steps, one at a time). While the entry's keys
//! sit on the importing master, writes to them are redirected there (`ASK`) and reads of
//! several keys are refused (`TRYAGAIN`), but every subscription still listens on the
//! slot's owner. At every step, once a write returned `Ok`, neither process serves the
//! older value past the bus window (docs/PROTOCOL.md §0, §5.3), and the breaker stays
//! closed.

use std::time::{Duration, Instant};

use cache_tests::{eventually_blocking, node::set_row, Node, RedisCluster, RedisServer};

const V1: &str = env!("CARGO_BIN_EXE_cache-node");
const WITHIN: Duration = Duration::from_secs(30);
const TIMEOUT_MS: u64 = 500;

fn ticket_key(logical: &str) -> String {
    let any_schema = cache_runtime::key::KeySchema::of::<String>(1);
    cache_runtime::key::redis_keys("t", any_schema, logical).1
}

/// The value's row, per id, in the source and in both processes.
struct Steps<'a> {
    db: &'a RedisServer,
    a: &'a Node,
    b: &'a Node,
    gen: std::collections::HashMap<u64, u64>,
}

impl Steps<'_> {
    fn get(&self, n: &Node, id: u64) -> String {
        n.call(&format!("get {id}"))
    }

    /// Both processes hold `id`'s current row (b's local copy included); then the source
    /// gets a new row and `write` tells the cache (in a), returning once it is confirmed;
    /// when the bus window has passed since then, both serve the new row.
    fn change(&mut self, what: &str, id: u64, write: impl FnOnce(&Node, &str)) {
        let gen = self.gen.entry(id).or_insert(0);
        let want = format!("g{gen}");
        *gen += 1;
        let next = format!("g{gen}");
        assert_eq!(self.get(self.a, id), want, "{what}: a before");
        assert_eq!(self.get(self.b, id), want, "{what}: b before");
        set_row(self.db, id, &next);
        write(self.a, &next);
        let confirmed = Instant::now();
        assert_eq!(self.get(self.a, id), next, "{what}: the writer");
        let window = cache_runtime::BUS_WINDOW + Duration::from_millis(50);
        std::thread::sleep(window.saturating_sub(confirmed.elapsed()));
        assert_eq!(
            self.get(self.b, id),
            next,
            "{what}: the other process served the older row past the bus window"
        );
    }

    fn invalidate(&mut self, what: &str, id: u64) {
        self.change(what, id, |a, _| {
            assert_eq!(a.call(&format!("invalidate {id}")), "done", "{what}");
        });
    }
}

/// The hash tag of `id`'s keys (its bucket: one slot).
fn bucket_of(id: u64) -> String {
    let key = ticket_key(&format!("profile:{id}"));
    key[..=key.find('}').expect("a hash tag")].to_string()
}

#[test]
fn a_slot_moved_between_masters_loses_no_write() {
    let cluster = RedisCluster::start();
    let db = RedisServer::start();
    let seeds = cluster.seed_urls().join(",");
    let timeout = TIMEOUT_MS.to_string();
    let env = [
        ("NODE_CLUSTER_URLS", seeds.as_str()),
        ("NODE_REDIS_TIMEOUT_MS", timeout.as_str()),
    ];
    let (a, b) = (Node::start(V1, &db, &env), Node::start(V1, &db, &env));
    for n in [&a, &b] {
        n.wait_subscribed(1, WITHIN);
        eventually_blocking(WITHIN, "the bus to be trusted", || {
            n.call("trusted") == "true"
        });
    }
    // Three entries in one bucket, so in the slot that moves.
    let bucket = bucket_of(7);
    let ids: Vec<u64> = std::iter::once(7)
        .chain((8..).filter(|&id| bucket_of(id) == bucket).take(2))
        .collect();
    let (populated, invalidated, deferred) = (ids[0], ids[1], ids[2]);
    let slot = cluster.slot_of(&ticket_key(&format!("profile:{}", ids[0])));
    let topo = cluster.topology();
    let source = topo
        .iter()
        .find(|n| n.is_live_master() && n.serves(slot))
        .expect("a master serves the slot")
        .clone();
    let target = topo
        .iter()
        .find(|n| n.is_live_master() && !n.slots.is_empty() && n.id != source.id)
        .expect("another master")
        .clone();
    let (src, dst) = (cluster.node(source.port), cluster.node(target.port));
    let s = slot.to_string();

    let mut steps = Steps {
        db: &db,
        a: &a,
        b: &b,
        gen: std::collections::HashMap::new(),
    };
    for &id in &ids {
        set_row(&db, id, "g0");
        steps.invalidate("before the move", id);
    }

    // The slot is migrating; every key in it moves to the target (as `redis-cli` does, in
    // one `MIGRATE`), and writes to them are redirected there.
    dst.cmd::<()>(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &source.id])
        .unwrap();
    src.cmd::<()>(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &target.id])
        .unwrap();
    let keys: Vec<String> = src.cmd(&["CLUSTER", "GETKEYSINSLOT", &s, "1000"]).unwrap();
    assert!(
        keys.len() >= 6,
        "the entries' values and tickets are in the slot: {keys:?}"
    );
    let port = target.port.to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
    migrate.extend(keys.iter().map(String::as_str));
    assert_eq!(src.cmd::<String>(&migrate).unwrap(), "OK");

    // A populate's first half (the old value and ticket deleted, the message) runs; its
    // store is refused (`TRYAGAIN`: the value it writes is one of its keys, and gone), so it
    // returns `Err`, and the next read of the key runs the body. The message must still
    // reach the other process, or its local copy would outlive the populate's `DEL`.
    steps.change(
        "a populate, the keys on the target",
        populated,
        |a, next| {
            let res = a.reply(a.send(&format!("populate {populated} {next}")));
            assert!(
                res.as_ref().is_err_and(|e| e.contains("TryAgain")),
                "the populate's store is refused until the move is final: {res:?}"
            );
        },
    );
    steps.invalidate("an invalidation, the keys on the target", invalidated);
    // An invalidation the target could not take in time (its writes paused) is retried in
    // the background, in a batch; confirmed once it drained.
    steps.change(
        "a deferred invalidation, the keys on the target",
        deferred,
        |a, _| {
            let pause = (TIMEOUT_MS * 3).to_string();
            dst.cmd::<()>(&["CLIENT", "PAUSE", &pause, "WRITE"])
                .unwrap();
            let res = a.reply(a.send(&format!("invalidate {deferred}")));
            assert!(
                res.is_err(),
                "the paused target took the invalidation: {res:?}"
            );
            eventually_blocking(WITHIN, "the deferred invalidation to drain", || {
                a.call("pending") == "0"
            });
        },
    );
    // An invalidated entry's ticket is on the importing master and its value is gone: a
    // read of both is refused with `TRYAGAIN` until the move is final. A healthy cluster
    // answering that for one slot must not open the breaker for every key.
    for _ in 0..8 {
        b.call("clear_local");
        assert_eq!(
            steps.get(&b, invalidated),
            format!("g{}", steps.gen[&invalidated])
        );
    }
    assert_eq!(
        b.call("breaker"),
        "Closed",
        "a slot on the move opened the breaker"
    );
    // Its invalidation now: the script is refused (`TRYAGAIN`), its commands sent apart.
    steps.invalidate(
        "an invalidation, the value gone from the target",
        invalidated,
    );
    // A tag's token stripe for the moving bucket is on the importing master too.
    steps.change(
        "a tag invalidation, the keys on the target",
        populated,
        |a, _| {
            assert_eq!(a.call(&format!("tag user:{populated}")), "done");
        },
    );

    // The move is final: the source drops the slot's shard subscriptions (`sunsubscribe`),
    // and every process subscribes again on the new owner.
    for m in cluster.masters() {
        m.cmd::<()>(&["CLUSTER", "SETSLOT", &s, "NODE", &target.id])
            .unwrap();
    }
    for n in [&a, &b] {
        eventually_blocking(WITHIN, "the bus to be trusted again", || {
            n.call("trusted") == "true"
        });
    }
    for &id in &ids {
        steps.invalidate("after the move", id);
    }
}
