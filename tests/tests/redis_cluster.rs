//! The Redis tier on a real local Redis Cluster (3 masters + 3 replicas, started by the
//! harness), with cache nodes in separate OS processes (`cache_tests::node`) pointed at it
//! with `NODE_CLUSTER_URLS`: values spread over every master, a second process is served
//! from Redis, invalidations, populates, tags and clears reach every process for keys on
//! every shard, the populate-after-invalidate race stays closed, and the distributed lock
//! runs a body once. The "database" the bodies read is a separate single server.
//!
//! Every test uses its own ids on one cluster shared by the tests of this binary.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use cache_tests::node::{body_runs, set_row};
use cache_tests::{eventually_blocking, Node, RedisCluster, RedisServer};

const V1: &str = env!("CARGO_BIN_EXE_cache-node");
const WITHIN: Duration = Duration::from_secs(20);

struct Setup {
    cluster: RedisCluster,
    db: RedisServer,
    seeds: String,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let cluster = RedisCluster::start();
        let seeds = cluster.seed_urls().join(",");
        Setup {
            cluster,
            db: RedisServer::start(),
            seeds,
        }
    })
}

/// A cache node using the cluster (prefix `t`), subscribed to every shard and trusted.
fn node(s: &Setup) -> Node {
    node_with_prefix(s, "t")
}

/// A node whose keys start with `prefix`: clears of one test do not reach another's.
fn node_with_prefix(s: &Setup, prefix: &str) -> Node {
    let n = Node::start(
        V1,
        &s.db,
        &[("NODE_CLUSTER_URLS", &s.seeds), ("NODE_KEY_PREFIX", prefix)],
    );
    n.wait_subscribed(1, WITHIN);
    eventually_blocking(WITHIN, "the bus to be trusted on every shard", || {
        n.call("trusted") == "true"
    });
    // Opens the data and write connections (a first call racing the cluster connect would
    // time out and run its body: the fail-safe, not what these tests count).
    assert_eq!(n.call("health"), "ok", "health check on the cluster");
    n
}

/// The value key of `profile:<id>` (prefix `t`; `cache-node`'s `profile`: version 1 of a
/// `String`).
fn value_key(id: u64) -> String {
    value_key_with("t", id)
}

fn value_key_with(prefix: &str, id: u64) -> String {
    let schema = cache_runtime::key::KeySchema::of::<String>(1);
    cache_runtime::key::redis_keys(prefix, schema, &format!("profile:{id}")).0
}

/// Ids whose keys (prefix `t`) live on each master: `per` ids for every master.
fn ids_on_every_master(s: &Setup, from: u64, per: usize) -> Vec<u64> {
    ids_on_every_master_with(s, "t", from, per)
}

fn ids_on_every_master_with(s: &Setup, prefix: &str, from: u64, per: usize) -> Vec<u64> {
    let masters: Vec<u16> = s.cluster.masters().iter().map(|m| m.port()).collect();
    let mut picked: Vec<Vec<u64>> = vec![Vec::new(); masters.len()];
    let mut id = from;
    while picked.iter().any(|p| p.len() < per) {
        let owner = s.cluster.master_for_key(&value_key_with(prefix, id)).port();
        let i = masters.iter().position(|&m| m == owner).unwrap();
        if picked[i].len() < per {
            picked[i].push(id);
        }
        id += 1;
    }
    picked.into_iter().flatten().collect()
}

#[test]
fn values_spread_over_every_master_and_another_process_is_served_from_redis() {
    let s = setup();
    let (a, b) = (node(s), node(s));
    let ids: Vec<u64> = (1000..1060).collect();
    for &id in &ids {
        set_row(&s.db, id, &format!("v{id}"));
        assert_eq!(a.call(&format!("get {id}")), format!("v{id}"));
    }
    let mut owners = BTreeSet::new();
    for &id in &ids {
        let key = value_key(id);
        let owner = s.cluster.master_for_key(&key);
        let exists: u64 = owner.cmd(&["EXISTS", &key]).unwrap();
        assert_eq!(exists, 1, "{key} stored on its master {}", owner.port());
        owners.insert(owner.port());
    }
    assert_eq!(owners.len(), 3, "60 values spread over all 3 masters");
    // The runtime's slot function is the server's.
    for key in [
        "foo",
        "{user1000}.following",
        &value_key(1000),
        "{}x",
        "a{b}c{d}",
    ] {
        assert_eq!(
            cache_runtime::key::cluster_slot(key),
            s.cluster.slot_of(key),
            "CLUSTER KEYSLOT {key}"
        );
    }
    for &id in &ids {
        assert_eq!(b.call(&format!("get {id}")), format!("v{id}"));
        assert_eq!(
            body_runs(&s.db, "profile", id),
            1,
            "b read id {id} from Redis"
        );
    }
    let stats = b.call("stats");
    assert!(stats.contains("redis_hits: 60"), "{stats}");
}

#[test]
fn invalidations_and_populates_evict_other_processes_copies_on_every_shard() {
    let s = setup();
    let (a, b) = (node(s), node(s));
    let ids = ids_on_every_master(s, 2000, 4);
    for &id in &ids {
        set_row(&s.db, id, "old");
        assert_eq!(a.call(&format!("get {id}")), "old");
        assert_eq!(b.call(&format!("get {id}")), "old");
        assert_eq!(b.call(&format!("peek {id}")), "old", "b holds a local copy");
    }
    for &id in &ids {
        set_row(&s.db, id, "new");
        assert_eq!(a.call(&format!("invalidate {id}")), "done");
    }
    eventually_blocking(WITHIN, "b's copies evicted on every shard", || {
        ids.iter().all(|id| b.call(&format!("peek {id}")) == "-")
    });
    for &id in &ids {
        assert_eq!(b.call(&format!("get {id}")), "new");
    }
    // Populate in a, read from Redis by b (which holds the old copy until the message).
    for &id in &ids {
        assert_eq!(a.call(&format!("populate {id} pop{id}")), "done");
    }
    eventually_blocking(WITHIN, "b's copies evicted by the populates", || {
        ids.iter().all(|id| b.call(&format!("peek {id}")) == "-")
    });
    let runs_before: Vec<u64> = ids
        .iter()
        .map(|&id| body_runs(&s.db, "profile", id))
        .collect();
    for &id in &ids {
        assert_eq!(b.call(&format!("get {id}")), format!("pop{id}"));
    }
    let runs_after: Vec<u64> = ids
        .iter()
        .map(|&id| body_runs(&s.db, "profile", id))
        .collect();
    assert_eq!(
        runs_before, runs_after,
        "populated values served from Redis"
    );
}

#[test]
fn a_value_read_before_an_invalidation_in_another_process_is_never_stored() {
    let s = setup();
    let (a, b) = (node(s), node(s));
    for id in ids_on_every_master(s, 3000, 1) {
        set_row(&s.db, id, "old");
        // a misses, reads the old row, and is held between its read and its store.
        let pending = a.send(&format!("get_paused {id}"));
        a.wait_event(&format!("paused {id}"));
        set_row(&s.db, id, "new");
        assert_eq!(b.call(&format!("invalidate {id}")), "done");
        assert_eq!(a.call(&format!("resume {id}")), "true");
        assert_eq!(a.reply(pending).unwrap(), "old", "started before the write");
        assert_eq!(a.call(&format!("peek {id}")), "-");
        assert_eq!(b.call(&format!("lookup {id}")), "-", "not stored in Redis");
        assert_eq!(b.call(&format!("get {id}")), "new");
        assert_eq!(a.call(&format!("get {id}")), "new");
    }
}

#[test]
fn tags_and_clears_reach_every_process_and_every_shard() {
    let s = setup();
    // Its own prefix: `clear_all` covers every cache of the prefix, the other tests' too.
    let (a, b) = (node_with_prefix(s, "tc"), node_with_prefix(s, "tc"));
    let ids = ids_on_every_master_with(s, "tc", 4000, 2);
    // Both processes hold `v` for every id, locally and in Redis.
    let load = |v: &str| {
        for &id in &ids {
            set_row(&s.db, id, v);
            assert_eq!(a.call(&format!("invalidate {id}")), "done");
            assert_eq!(a.call(&format!("get {id}")), v);
            eventually_blocking(WITHIN, "b to read the new value", || {
                b.call(&format!("get {id}")) == v
            });
            assert_eq!(b.call(&format!("peek {id}")), v);
        }
    };
    // A tag (`user:<id>`) invalidated in a: b drops its copy, Redis refuses the value.
    load("one");
    for &id in &ids {
        set_row(&s.db, id, "two");
        assert_eq!(a.call(&format!("tag user:{id}")), "done");
    }
    eventually_blocking(WITHIN, "b's tagged copies evicted", || {
        ids.iter().all(|id| b.call(&format!("peek {id}")) == "-")
    });
    for &id in &ids {
        assert_eq!(b.call(&format!("lookup {id}")), "-", "tag token deleted");
        assert_eq!(b.call(&format!("get {id}")), "two");
    }
    // A cache clear in b, then a global clear in a.
    load("three");
    for &id in &ids {
        set_row(&s.db, id, "four");
    }
    assert_eq!(b.call("clear"), "done");
    eventually_blocking(WITHIN, "a's copies cleared", || {
        ids.iter().all(|id| a.call(&format!("peek {id}")) == "-")
    });
    for &id in &ids {
        assert_eq!(a.call(&format!("get {id}")), "four");
    }
    for &id in &ids {
        set_row(&s.db, id, "five");
    }
    assert_eq!(a.call("clear_all"), "done");
    eventually_blocking(WITHIN, "b's copies cleared by clear_all", || {
        ids.iter().all(|id| b.call(&format!("peek {id}")) == "-")
    });
    for &id in &ids {
        assert_eq!(b.call(&format!("lookup {id}")), "-");
        assert_eq!(b.call(&format!("get {id}")), "five");
    }
}

#[test]
fn processes_missing_together_run_a_locked_body_once() {
    let s = setup();
    let nodes: Vec<Node> = (0..3).map(|_| node(s)).collect();
    for id in ids_on_every_master(s, 5000, 1) {
        set_row(&s.db, id, &format!("locked{id}"));
        let sent: Vec<u64> = nodes
            .iter()
            .map(|n| n.send(&format!("burst {id} 8")))
            .collect();
        for (n, req) in nodes.iter().zip(sent) {
            assert_eq!(n.reply(req).unwrap(), format!("locked{id}"));
        }
        assert_eq!(
            body_runs(&s.db, "locked", id),
            1,
            "24 calls in 3 processes, one body (id {id})"
        );
    }
}

#[test]
fn a_single_node_url_pointed_at_a_cluster_node_fails_the_health_check() {
    // The mistake of the issue: `REDIS_URL` at one master. The probe keys of most prefixes
    // live on another master: the health check names the redirection instead of saying Ok.
    let s = setup();
    let prefixes = ["h1", "h2", "h3", "h4", "h5", "h6"];
    let seed = s.cluster.nodes()[0].port();
    let prefix = prefixes
        .iter()
        .find(|p| s.cluster.master_for_key(&format!("{{{p}:health}}")).port() != seed)
        .expect("a prefix whose probe keys live on another node");
    // `--redis` is the cache's URL (and the bodies' database, unused here).
    let n = Node::start(V1, &s.cluster.nodes()[0], &[("NODE_KEY_PREFIX", prefix)]);
    let err = n.reply(n.send("health")).expect_err("not healthy");
    assert!(err.to_ascii_uppercase().contains("MOVED"), "{err}");
}

#[test]
fn the_documented_cluster_acl_is_enough() {
    // docs/PROTOCOL.md §10 and README.md: the cluster line, with the prefix `ta`, on every
    // node (ACL users are per node).
    let s = setup();
    let rules = "on >secret resetkeys resetchannels ~{ta:* &{ta:* -@all +ping +auth +hello \
                 +select +get +mget +set +del +pexpire +pexpireat +pttl +evalsha +script|load +spublish \
                 +ssubscribe +sunsubscribe +time +role +wait +cluster|slots +info +getex";
    for n in s.cluster.nodes() {
        n.acl_setuser(&format!("cache_ta {rules}"));
    }
    let seeds = s
        .cluster
        .nodes()
        .iter()
        .map(|n| n.url_for_user("cache_ta", "secret"))
        .collect::<Vec<_>>()
        .join(",");
    let n = Node::start(
        V1,
        &s.db,
        &[("NODE_CLUSTER_URLS", &seeds), ("NODE_KEY_PREFIX", "ta")],
    );
    n.wait_subscribed(1, WITHIN);
    assert_eq!(n.call("health"), "ok");
    set_row(&s.db, 6000, "acl");
    assert_eq!(n.call("get 6000"), "acl");
    assert_eq!(n.call("invalidate 6000"), "done");
    assert_eq!(n.call("tag user:6000"), "done");
    eventually_blocking(WITHIN, "the bus trusted as the ACL user", || {
        n.call("trusted") == "true"
    });
    // The masters' incarnation was checked and recorded as this user (`+info`): one
    // `run_id` per master.
    let record = "{ta:scopes}:server";
    let recorded: Option<String> = s
        .cluster
        .master_for_key(record)
        .cmd(&["GET", record])
        .unwrap();
    let masters = s.cluster.masters().len();
    assert_eq!(
        recorded.map(|r| r.split(',').count()),
        Some(masters),
        "the incarnation record of the cluster's masters"
    );
}

#[test]
fn with_read_from_replicas_hits_are_served_by_replicas() {
    let s = setup();
    let replicas: Vec<&RedisServer> = s
        .cluster
        .topology()
        .into_iter()
        .filter(|n| n.master_id.is_some())
        .map(|n| s.cluster.node(n.port))
        .collect();
    assert_eq!(replicas.len(), 3);
    let mget_calls = |n: &RedisServer| -> u64 {
        let info: String = n.cmd(&["INFO", "commandstats"]).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_mget:calls="))
            .and_then(|r| r.split(',').next())
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    };
    let before: u64 = replicas.iter().map(|r| mget_calls(r)).sum();
    let writer = node_with_prefix(s, "tr");
    let reader = Node::start(
        V1,
        &s.db,
        &[
            ("NODE_CLUSTER_URLS", &s.seeds),
            ("NODE_KEY_PREFIX", "tr"),
            ("NODE_READ_FROM_REPLICAS", "1"),
        ],
    );
    let ids = ids_on_every_master_with(s, "tr", 7000, 2);
    for &id in &ids {
        set_row(&s.db, id, &format!("r{id}"));
        assert_eq!(writer.call(&format!("get {id}")), format!("r{id}"));
    }
    // Correct values either way: a replica that has not replicated a store yet is a miss
    // (the reader runs the body on the same row), never a wrong value.
    for &id in &ids {
        reader.call("clear_local");
        assert_eq!(reader.call(&format!("get {id}")), format!("r{id}"));
    }
    let after: u64 = replicas.iter().map(|r| mget_calls(r)).sum();
    assert!(
        after > before,
        "replicas served MGETs ({before} -> {after})"
    );
}
