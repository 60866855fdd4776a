//! Several OS processes (cache nodes, see `cache_tests::node`) sharing one harness-started
//! Redis: invalidation propagation, the stale write-back race, bus reconnects, distributed
//! single-flight, tags and clears, and a rolling deploy of two schema versions.

use std::time::Duration;

use cache_tests::node::{body_runs, set_row};
use cache_tests::{eventually_blocking, Node, RedisOptions, RedisServer};
use redis::Commands;

const V1: &str = env!("CARGO_BIN_EXE_cache-node");
const V2: &str = env!("CARGO_BIN_EXE_cache-node-v2");
const WITHIN: Duration = Duration::from_secs(10);

/// `b` holds a local copy of key 1 (`ada`); the row changes and `a` invalidates: the bus
/// evicts `b`'s copy, and `b` then reads the new row.
fn an_invalidation_evicts_the_other_copy(server: &RedisServer, a: &Node, b: &Node) {
    assert_eq!(b.call("peek 1"), "ada", "b holds a local copy");
    set_row(server, 1, "grace");
    assert_eq!(a.call("invalidate 1"), "done");
    eventually_blocking(WITHIN, "b's local copy evicted by the bus", || {
        b.call("peek 1") == "-"
    });
    assert_eq!(b.call("get 1"), "grace");
}

#[test]
fn writes_in_one_process_evict_local_copies_in_the_others() {
    let server = RedisServer::start();
    let (a, b) = (Node::start(V1, &server, &[]), Node::start(V1, &server, &[]));
    a.wait_subscribed(1, WITHIN);
    b.wait_subscribed(1, WITHIN);
    set_row(&server, 1, "ada");
    assert_eq!(a.call("get 1"), "ada");
    assert_eq!(b.call("get 1"), "ada");
    assert_eq!(
        body_runs(&server, "profile", 1),
        1,
        "b read a's value from Redis"
    );
    an_invalidation_evicts_the_other_copy(&server, &a, &b);

    assert_eq!(a.call("populate 1 hopper"), "done");
    eventually_blocking(WITHIN, "b's copy evicted after a populate", || {
        b.call("peek 1") == "-"
    });
    assert_eq!(
        b.call("get 1"),
        "hopper",
        "served from the populated Redis entry"
    );
    assert_eq!(body_runs(&server, "profile", 1), 2);

    // Only real writes publish: a miss that fills the cache sends nothing.
    let (_, _, received_before, _) = b.bus();
    set_row(&server, 2, "x");
    assert_eq!(a.call("get 2"), "x");
    assert_eq!(a.call("invalidate 3"), "done");
    eventually_blocking(WITHIN, "b receiving the invalidation", || {
        b.bus().2 > received_before
    });
    assert_eq!(b.bus().2, received_before + 1, "the fill published nothing");
}

/// `CLIENT LIST`'s `resp` field of every connection subscribed to a channel.
fn subscriber_protocols(server: &RedisServer) -> Vec<String> {
    let list: String = server.cmd(&["CLIENT", "LIST"]).unwrap();
    let field = |line: &str, name: &str| {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_default()
            .to_string()
    };
    list.lines()
        .filter(|l| !matches!(field(l, "sub").as_str(), "" | "0"))
        .map(|l| field(l, "resp"))
        .collect()
}

#[test]
fn the_bus_speaks_resp3_and_falls_back_to_resp2_where_hello_is_refused() {
    // RESP3: the connection's driver applies messages itself (docs/PROTOCOL.md §5.2). A server
    // (or proxy, or ACL) that refuses `HELLO 3` gets the RESP2 pub/sub connection, and
    // invalidations still reach the other process either way.
    for refuse_hello in [false, true] {
        let server = if refuse_hello {
            RedisServer::start_with_options(
                RedisOptions::new().rename_command("HELLO", "hello-is-not-served-here"),
            )
        } else {
            RedisServer::start()
        };
        let (a, b) = (Node::start(V1, &server, &[]), Node::start(V1, &server, &[]));
        a.wait_subscribed(1, WITHIN);
        b.wait_subscribed(1, WITHIN);
        let expected = if refuse_hello { "2" } else { "3" };
        assert_eq!(
            subscriber_protocols(&server),
            vec![expected.to_string(); 2],
            "one subscriber per process, speaking RESP{expected} (HELLO refused: {refuse_hello})"
        );
        set_row(&server, 1, "ada");
        assert_eq!(b.call("get 1"), "ada");
        an_invalidation_evicts_the_other_copy(&server, &a, &b);
        let (_, _, received, _) = a.bus();
        assert_eq!(received, 0, "a's own message is not counted as received");
    }
}

#[test]
fn a_value_read_before_an_invalidation_in_another_process_is_never_stored() {
    let server = RedisServer::start();
    let (a, b) = (Node::start(V1, &server, &[]), Node::start(V1, &server, &[]));
    a.wait_subscribed(1, WITHIN);
    set_row(&server, 5, "old");
    // a misses, reads the old row, and is held between its body and its populate.
    let pending = a.send("get_paused 5");
    a.wait_event("paused 5");
    // Meanwhile the row changes and b invalidates.
    set_row(&server, 5, "new");
    assert_eq!(b.call("invalidate 5"), "done");
    assert_eq!(a.call("resume 5"), "true");
    assert_eq!(
        a.reply(pending).unwrap(),
        "old",
        "that caller started before the write"
    );
    // The old row was not written back, in either tier or process.
    assert_eq!(a.call("peek 5"), "-");
    assert_eq!(b.call("lookup 5"), "-");
    assert_eq!(a.call("lookup 5"), "-");
    assert_eq!(b.call("get 5"), "new");
    assert_eq!(a.call("get 5"), "new");
    assert!(
        a.call("stats").contains("superseded: 1"),
        "{}",
        a.call("stats")
    );
}

#[test]
fn a_value_read_before_an_invalidation_in_the_same_process_is_never_stored() {
    let server = RedisServer::start();
    let a = Node::start(V1, &server, &[]);
    set_row(&server, 6, "old");
    let pending = a.send("get_paused 6");
    a.wait_event("paused 6");
    set_row(&server, 6, "new");
    assert_eq!(a.call("invalidate 6"), "done");
    assert_eq!(a.call("resume 6"), "true");
    assert_eq!(a.reply(pending).unwrap(), "old");
    assert_eq!(a.call("peek 6"), "-");
    assert_eq!(a.call("lookup 6"), "-");
    assert_eq!(a.call("get 6"), "new");
}

#[test]
fn a_bus_disconnect_drops_local_copies_and_the_bus_comes_back() {
    let server = RedisServer::start();
    let a = Node::start(V1, &server, &[]);
    a.wait_subscribed(1, WITHIN);
    set_row(&server, 7, "x");
    assert_eq!(a.call("get 7"), "x");
    assert_eq!(a.call("peek 7"), "x");
    server.kill();
    // Messages may now be lost: the node must not keep serving its local copy.
    eventually_blocking(
        WITHIN,
        "the local copy dropped after the disconnect",
        || a.call("peek 7") == "-",
    );
    server.restart();
    a.wait_subscribed(2, WITHIN);
    set_row(&server, 7, "y");
    assert_eq!(a.call("get 7"), "y");
}

#[test]
fn four_processes_missing_together_run_the_body_once() {
    let server = RedisServer::start();
    let nodes: Vec<Node> = (0..4).map(|_| Node::start(V1, &server, &[])).collect();
    set_row(&server, 9, "v9");
    let pending: Vec<u64> = nodes.iter().map(|n| n.send("burst 9 100")).collect();
    for (node, id) in nodes.iter().zip(pending) {
        assert_eq!(
            node.reply(id).unwrap(),
            "v9",
            "every caller got the one value"
        );
    }
    assert_eq!(
        body_runs(&server, "locked", 9),
        1,
        "4 processes × 100 tasks, one body run"
    );
}

#[test]
fn a_killed_lock_holder_does_not_block_the_others() {
    let server = RedisServer::start();
    let nodes: Vec<Node> = (0..4)
        .map(|_| Node::start(V1, &server, &[("NODE_SLOW_FIRST_LOCK", "1")]))
        .collect();
    set_row(&server, 10, "v10");
    let pending: Vec<u64> = nodes.iter().map(|n| n.send("burst 10 50")).collect();
    let mut raw = server.client();
    let mut holder: Option<u32> = None;
    eventually_blocking(WITHIN, "a lock holder in its body", || {
        holder = raw.get("holder:10").unwrap();
        holder.is_some()
    });
    let holder = holder.unwrap();
    let victim = nodes
        .iter()
        .position(|n| n.pid() == holder)
        .expect("holder is a node");
    nodes[victim].kill();
    for (i, (node, id)) in nodes.iter().zip(pending).enumerate() {
        if i != victim {
            assert_eq!(node.reply(id).unwrap(), "v10");
        }
    }
    assert_eq!(
        body_runs(&server, "locked", 10),
        2,
        "the killed holder's run, then exactly one takeover after its lease"
    );
}

#[test]
fn tags_and_clears_reach_every_process() {
    let server = RedisServer::start();
    let (a, b) = (Node::start(V1, &server, &[]), Node::start(V1, &server, &[]));
    b.wait_subscribed(1, WITHIN);
    for id in [11, 12, 13] {
        set_row(&server, id, &format!("v{id}"));
        assert_eq!(a.call(&format!("get {id}")), format!("v{id}"));
        assert_eq!(b.call(&format!("get {id}")), format!("v{id}"));
        assert_eq!(b.call(&format!("peek {id}")), format!("v{id}"));
    }

    assert_eq!(a.call("tag user:11"), "done");
    eventually_blocking(WITHIN, "b's tagged copy evicted", || {
        b.call("peek 11") == "-"
    });
    assert_eq!(
        a.call("lookup 11"),
        "-",
        "the Redis entry is stale by its tag version"
    );
    assert_eq!(b.call("peek 12"), "v12", "other tags untouched");

    assert_eq!(a.call("clear"), "done");
    eventually_blocking(WITHIN, "b's copies cleared", || b.call("peek 12") == "-");
    assert_eq!(b.call("lookup 12"), "-");

    assert_eq!(
        b.call("get 13"),
        "v13",
        "recomputed: the cache clear covered 13 too"
    );
    assert_eq!(b.call("clear_all"), "done");
    eventually_blocking(WITHIN, "a's copies cleared", || a.call("peek 13") == "-");
    assert_eq!(a.call("lookup 13"), "-");
    assert_eq!(a.call("get 13"), "v13");
    assert_eq!(
        body_runs(&server, "profile", 13),
        3,
        "first fill, after clear, after clear_all"
    );
}

#[test]
fn a_rolling_deploy_shares_invalidations_but_never_bytes() {
    let server = RedisServer::start();
    let (old, new) = (Node::start(V1, &server, &[]), Node::start(V2, &server, &[]));
    old.wait_subscribed(1, WITHIN);
    new.wait_subscribed(1, WITHIN);
    set_row(&server, 20, "ada");
    assert_eq!(old.call("get 20"), "ada");
    assert_eq!(new.call("get 20"), "ada#v2");
    assert_eq!(
        body_runs(&server, "profile", 20),
        2,
        "each version has its own entry"
    );
    // No eviction loop: each keeps reading its own entry from Redis.
    for _ in 0..3 {
        old.call("clear_local");
        new.call("clear_local");
        assert_eq!(old.call("get 20"), "ada");
        assert_eq!(new.call("get 20"), "ada#v2");
    }
    assert_eq!(body_runs(&server, "profile", 20), 2);

    // An invalidation by either version clears the entry for both.
    set_row(&server, 20, "grace");
    assert_eq!(old.call("invalidate 20"), "done");
    eventually_blocking(WITHIN, "the new version's local copy evicted", || {
        new.call("peek 20") == "-"
    });
    assert_eq!(new.call("lookup 20"), "-", "its Redis entry is stale too");
    assert_eq!(new.call("get 20"), "grace#v2");
    assert_eq!(old.call("get 20"), "grace");

    set_row(&server, 20, "hopper");
    assert_eq!(new.call("invalidate 20"), "done");
    eventually_blocking(WITHIN, "the old version's local copy evicted", || {
        old.call("peek 20") == "-"
    });
    assert_eq!(old.call("get 20"), "hopper");
    assert_eq!(new.call("get 20"), "hopper#v2");
}

#[test]
fn an_invalidation_issued_during_an_outage_reaches_the_other_processes_afterwards() {
    let server = RedisServer::start();
    let (a, b) = (Node::start(V1, &server, &[]), Node::start(V1, &server, &[]));
    b.wait_subscribed(1, WITHIN);
    set_row(&server, 30, "old");
    assert_eq!(a.call("get 30"), "old");
    assert_eq!(b.call("get 30"), "old");
    // The row changes; the writer's invalidation hits a hung Redis.
    set_row(&server, 30, "new");
    server.pause();
    let res = a.send("invalidate 30");
    assert!(a.reply(res).is_err(), "Redis did not confirm");
    assert_eq!(a.call("pending"), "1");
    // (The "database" lives in the same hung Redis, so the body cannot read it now.)
    assert_ne!(
        a.call("get 30"),
        "old",
        "the writer never serves the old value"
    );
    server.resume();
    eventually_blocking(WITHIN, "the deferred invalidation applied", || {
        a.call("pending") == "0"
    });
    // The retry deleted the key's ticket in Redis and told the bus; b applies the message
    // asynchronously, so its eviction is awaited (not assumed the instant a drained).
    eventually_blocking(
        WITHIN,
        "b's copy evicted by the retried invalidation",
        || b.call("peek 30") != "old",
    );
    assert_eq!(b.call("get 30"), "new");
    assert_eq!(b.call("lookup 30"), "new");
}
