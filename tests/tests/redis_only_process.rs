//! A process whose caches are all Redis-only, on a single node with client tracking, does
//! not subscribe to the bus (docs/PROTOCOL.md §5.2): no connection, no probes, and no echo
//! of its own writes waking it. Its writes still publish, and evict other processes' local
//! copies. Its invalidations are plain pipelines, `DEL` · `PUBLISH` · `SET` (§7.4), on the
//! invalidation lane when it is free and on the shared connection otherwise: no script and
//! no `CLIENT REPLY SKIP` (their reply order is for a process that hears its own echo).

use std::time::Duration;

use cache_runtime::cached;
use cache_tests::node::set_row;
use cache_tests::{eventually_blocking, Node, RedisServer};

const NODE: &str = env!("CARGO_BIN_EXE_cache-node");
const WITHIN: Duration = Duration::from_secs(10);

/// The nodes' `profile` key and value type (version 1 of a `String`), without a local tier.
#[cached(tier = "redis", ttl = 60, key = "profile:<id>")]
async fn profile(id: u64) -> String {
    format!("from the test process {id}")
}

static TEAM_RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A Redis-only cache with a tag.
#[cached(tier = "redis", ttl = 60, key = "team:<id>", tags = ["team:<id>"])]
async fn team(id: u64) -> u64 {
    TEAM_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + id
}

/// A cache with a local tier, built only at the end.
#[cached(tier = "local+redis", ttl = 60, key = "copy:<id>")]
async fn copy(id: u64) -> u64 {
    id
}

/// The subscribers of the bus's channel, as the server counts them.
fn subscribers(server: &RedisServer) -> u64 {
    let reply: (String, u64) = server
        .cmd(&["PUBSUB", "NUMSUB", "t:bus:1"])
        .expect("PUBSUB NUMSUB");
    reply.1
}

#[test]
fn a_redis_only_process_does_not_subscribe_and_its_writes_still_evict_other_copies() {
    let server = cache_tests::own_redis("t");
    let node = Node::start(NODE, &server, &[]);
    node.wait_subscribed(1, WITHIN);
    set_row(&server, 1, "ada");
    assert_eq!(node.call("get 1"), "ada");
    assert_eq!(node.call("peek 1"), "ada", "the node holds a local copy");

    let rt = cache_tests::current_thread_runtime();
    // Another cache (another name, no tags): its own entry under the same key's ticket.
    assert_eq!(rt.block_on(profile(1)), "from the test process 1");
    assert_eq!(rt.block_on(profile(1)), "from the test process 1");
    assert_eq!(profile_cache().stats().redis_hits, 1, "cached in Redis");
    let bus = cache_runtime::bus_status();
    assert!(
        !bus.wanted && !bus.connected && bus.subscriptions == 0,
        "{bus:?}"
    );
    assert_eq!(subscribers(&server), 1, "the node alone is subscribed");

    set_row(&server, 1, "grace");
    rt.block_on(invalidate_profile(1)).expect("invalidate");
    eventually_blocking(WITHIN, "the node's copy evicted by the message", || {
        node.call("peek 1") == "-"
    });
    assert_eq!(node.call("get 1"), "grace");
    assert_eq!(subscribers(&server), 1, "still the node alone");
    assert_eq!(cache_runtime::bus_status().subscriptions, 0);

    // The invalidations, counted from the server's side: 16 at once, each its `DEL`,
    // `PUBLISH` and `SET` (the fresh ticket), without `CLIENT REPLY SKIP` and without the
    // script (the lane takes one at a time; the others went to the script, and now are
    // plain pipelines on the shared connection).
    let calls = |c: &str| server.command_stats(c).0;
    let (del, publish, set, scripts) = (
        calls("del"),
        calls("publish"),
        calls("set"),
        calls("evalsha"),
    );
    let ids: Vec<u64> = (10..26).collect();
    let rounds = rt.block_on(async {
        for &id in &ids {
            profile(id).await;
        }
        let mut runs = tokio::task::JoinSet::new();
        for &id in &ids {
            runs.spawn(invalidate_profile(id));
        }
        runs.join_all()
            .await
            .into_iter()
            .filter(Result::is_ok)
            .count()
    });
    assert_eq!(rounds, ids.len(), "every invalidation Ok");
    assert_eq!(calls("del") - del, 16, "one DEL each");
    assert_eq!(calls("publish") - publish, 16, "one message each");
    assert!(
        calls("set") - set >= 16,
        "a fresh ticket each (and the reads' stores)"
    );
    assert!(
        calls("client|reply") <= 1,
        "no CLIENT REPLY but the lane's proof when it opens"
    );
    assert_eq!(calls("evalsha"), scripts, "no invalidate script");
    let misses = profile_cache().stats().misses;
    rt.block_on(profile(10));
    assert_eq!(
        profile_cache().stats().misses,
        misses + 1,
        "invalidated in Redis"
    );

    // A tag's invalidation: `DEL` of its token, the message and the fresh token, once each,
    // without `CLIENT REPLY SKIP` (three in a row: under the lane's skip order each would send
    // one; the lane's proof when it opens is the only one allowed).
    let first = rt.block_on(team(7));
    assert_eq!(rt.block_on(team(7)), first, "cached");
    let (del, publish, set) = (calls("del"), calls("publish"), calls("set"));
    for _ in 0..3 {
        rt.block_on(cache_runtime::invalidate_tag("team:7"))
            .expect("invalidate_tag");
    }
    assert_eq!(calls("del") - del, 3, "one DEL of the tag's token each");
    assert_eq!(calls("publish") - publish, 3, "one message each");
    assert_eq!(calls("set") - set, 3, "one fresh token each");
    assert!(
        calls("client|reply") <= 1,
        "no CLIENT REPLY but the lane's proof when it opens"
    );
    assert_ne!(rt.block_on(team(7)), first, "the tagged entry invalidated");

    // `noeviction` OOM refuses the fresh ticket's `SET`, not the `DEL` or the message: the
    // invalidation is Ok and took (the key simply has no ticket, as the script leaves it).
    rt.block_on(profile(11));
    let hits = profile_cache().stats().redis_hits;
    rt.block_on(profile(11));
    assert_eq!(profile_cache().stats().redis_hits, hits + 1, "cached again");
    server.config_set("maxmemory-policy", "noeviction");
    server.config_set("maxmemory", "1");
    let result = rt.block_on(invalidate_profile(11));
    server.config_set("maxmemory", "0");
    result.expect("an invalidation under OOM is Ok");
    let schema = profile_cache().key_schema().expect("a Redis tier");
    let ticket_key = cache_runtime::key::redis_keys("t", schema, "profile:11").1;
    assert_eq!(
        server.cmd::<Option<String>>(&["GET", &ticket_key]).unwrap(),
        None
    );
    let misses = profile_cache().stats().misses;
    rt.block_on(profile(11));
    assert_eq!(
        profile_cache().stats().misses,
        misses + 1,
        "invalidated under OOM"
    );

    // A cache with a local tier built later: the process subscribes from then on, hears its
    // own messages, and its invalidations go back to the lane's `CLIENT REPLY SKIP` order.
    copy_cache();
    eventually_blocking(WITHIN, "the process to subscribe", || {
        cache_runtime::bus_status().connected
    });
    assert_eq!(subscribers(&server), 2, "the node and this process");
    let replies = calls("client|reply");
    eventually_blocking(WITHIN, "an invalidation under CLIENT REPLY SKIP", || {
        rt.block_on(invalidate_profile(12)).expect("invalidate");
        calls("client|reply") > replies
    });
}
