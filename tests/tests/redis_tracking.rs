//! Scope tokens and entry tickets kept in the process, exact by Redis's client tracking
//! (docs/PROTOCOL.md §7.1, §12): a Redis hit reads only the value, and compares the
//! envelope's ticket and stamps with those the process keeps; Redis pushes an invalidation
//! when one changes.
//!
//! Each test first gets a reader node to serve a value from Redis with its tokens kept
//! (its local copy dropped, so the Redis check is what decides), then removes a token behind
//! its back, with no bus message (as eviction, expiry or another deployment's write would),
//! and asserts the reader does not serve the old value again.

use std::time::Duration;

use cache_tests::node::set_row;
use cache_tests::{eventually_blocking, Node, RedisServer};

const V1: &str = env!("CARGO_BIN_EXE_cache-node");
const WITHIN: Duration = Duration::from_secs(10);
/// The reader's tag token for id 1, its cache-clear token, the global clear token (prefix
/// `t`, the nodes' `profile` cache).
const TAG_TOKEN: &str = "{t:scopes}:t:user:1";
const GLOBAL_TOKEN: &str = "{t:scopes}:a";

/// A node that has served id 1 = `old` from Redis twice (so its tokens and the entry's
/// ticket are kept), with no local copy left.
fn reader_with_kept_tokens(server: &RedisServer) -> Node {
    let reader = Node::start(V1, server, &[]);
    reader.wait_subscribed(1, WITHIN);
    set_row(server, 1, "old");
    assert_eq!(reader.call("get 1"), "old");
    for _ in 0..2 {
        assert_eq!(reader.call("clear_local"), "done");
        let hits = reader.stat("redis_hits");
        assert_eq!(reader.call("get 1"), "old");
        assert_eq!(reader.stat("redis_hits"), hits + 1, "served from Redis");
    }
    assert_eq!(reader.call("clear_local"), "done");
    assert_eq!(
        reader.stat("body_calls"),
        1,
        "the body ran once before the token is removed"
    );
    reader
}

/// After a token of the value was removed behind the reader's back, the reader's next read
/// must not be the old value.
fn reads_new_after(remove: impl FnOnce(&RedisServer)) {
    let server = RedisServer::start();
    let reader = reader_with_kept_tokens(&server);
    set_row(&server, 1, "new");
    remove(&server);
    assert_eq!(
        reader.call("get 1"),
        "new",
        "a value stamped with a token Redis no longer holds was served from the kept tokens"
    );
}

#[test]
fn a_deleted_tag_token_is_seen() {
    reads_new_after(|s| assert_eq!(s.cmd::<u64>(&["DEL", TAG_TOKEN]).unwrap(), 1));
}

#[test]
fn a_deleted_cache_clear_token_is_seen() {
    reads_new_after(|s| {
        let keys = s.scan("{t:scopes}:c:*");
        assert_eq!(keys.len(), 1, "one cache-clear token: {keys:?}");
        assert_eq!(s.cmd::<u64>(&["DEL", &keys[0]]).unwrap(), 1);
    });
}

#[test]
fn a_deleted_global_clear_token_is_seen() {
    reads_new_after(|s| assert_eq!(s.cmd::<u64>(&["DEL", GLOBAL_TOKEN]).unwrap(), 1));
}

#[test]
fn a_replaced_tag_token_is_seen() {
    reads_new_after(|s| {
        s.cmd::<()>(&["SET", TAG_TOKEN, "0123456789abcdef"])
            .unwrap();
    });
}

#[test]
fn an_expired_tag_token_is_seen() {
    reads_new_after(|s| {
        assert_eq!(s.cmd::<u64>(&["PEXPIRE", TAG_TOKEN, "1"]).unwrap(), 1);
        eventually_blocking(WITHIN, "the token to expire", || {
            s.cmd::<u64>(&["EXISTS", TAG_TOKEN]).unwrap() == 0
        });
    });
}

#[test]
fn an_evicted_tag_token_is_seen() {
    reads_new_after(|s| {
        // Eviction under memory pressure: only the token is volatile enough to go first
        // (`volatile-ttl` evicts the key nearest its expiry; the token's is made nearest).
        s.cmd::<u64>(&["PEXPIRE", TAG_TOKEN, "50000"]).unwrap();
        for k in s.scan("{t:*") {
            if k != TAG_TOKEN {
                s.cmd::<u64>(&["PERSIST", &k]).unwrap();
            }
        }
        let used: u64 = s.info_field("used_memory").unwrap().parse().unwrap();
        s.config_set("maxmemory-policy", "volatile-ttl");
        s.config_set("maxmemory", &used.to_string());
        let _ = s.cmd::<()>(&["SET", "filler", &"f".repeat(64 * 1024)]);
        s.config_set("maxmemory", "0");
        assert_eq!(
            s.cmd::<u64>(&["EXISTS", TAG_TOKEN]).unwrap(),
            0,
            "the token was evicted"
        );
        let evicted: u64 = s.info_field("evicted_keys").unwrap().parse().unwrap();
        assert!(evicted >= 1);
    });
}

#[test]
fn flushall_empties_the_kept_tokens() {
    reads_new_after(|s| {
        // The value goes too; put it back (as a replica's stale copy would) to see that the
        // tokens went with the flush.
        let value = s.scan("{t:*}:v2:*");
        assert_eq!(value.len(), 1, "{value:?}");
        let bytes: Vec<u8> = s.cmd(&["GET", &value[0]]).unwrap();
        let ticket_key = s.scan("{t:*}:t:profile:1");
        let ticket: String = s.cmd(&["GET", &ticket_key[0]]).unwrap();
        s.flushall();
        set_row(s, 1, "new");
        let mut c = s.client();
        redis::cmd("SET")
            .arg(&value[0])
            .arg(bytes)
            .query::<()>(&mut c)
            .unwrap();
        s.cmd::<()>(&["SET", &ticket_key[0], &ticket]).unwrap();
    });
}

/// The tracking connections are cut, a token is deleted while none is there to be told,
/// and the reader reconnects: the tokens it kept went with the connection.
#[test]
fn a_dropped_tracking_connection_takes_its_tokens_along() {
    let server = RedisServer::start();
    let reader = reader_with_kept_tokens(&server);
    set_row(&server, 1, "new");
    let list: String = server.cmd(&["CLIENT", "LIST"]).unwrap();
    let tracking: Vec<&str> = list
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|v| v.contains('t')))
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert!(!tracking.is_empty(), "a tracking client: {list}");
    for id in tracking {
        server.cmd::<u64>(&["CLIENT", "KILL", "ID", id]).unwrap();
    }
    assert_eq!(server.cmd::<u64>(&["DEL", TAG_TOKEN]).unwrap(), 1);
    // Reconnected: a read of another key no longer fails.
    eventually_blocking(WITHIN, "the reader to reach Redis again", || {
        let before = reader.stat("redis_errors");
        reader.call("lookup 999999");
        reader.stat("redis_errors") == before
    });
    assert_eq!(
        reader.call("get 1"),
        "new",
        "tokens kept by a lost connection were used after the reconnect"
    );
}

/// A cache of mostly new keys claims each key's ticket in its read's round trip
/// (PROTOCOL.md §7.2); those reads too check the kept tokens (the read is `GET value`: the
/// claim answers the ticket), and a clear token deleted behind the reader's back is seen.
#[test]
fn claiming_reads_use_the_kept_tokens_and_see_a_deleted_clear_token() {
    let server = RedisServer::start();
    let reader = reader_with_kept_tokens(&server);
    // Eight keys without a ticket: the reader now claims on every read.
    for id in 100..108 {
        reader.call(&format!("get {id}"));
    }
    server.log_every_command();
    assert_eq!(reader.call("get 1"), "old", "served from Redis, claiming");
    let commands = server.slowlog_commands();
    let claims: Vec<&Vec<String>> = commands
        .iter()
        .filter(|c| c[0].eq_ignore_ascii_case("set") && c.iter().any(|a| a == "NX"))
        .collect();
    assert!(
        claims.iter().any(|c| c[1].contains(":t:profile:1")),
        "the read claimed the ticket: {commands:?}"
    );
    // The claim answers the ticket in force: the read itself is `GET value`, and the
    // ticket is read by nothing else. (Scope tokens this connection does not keep yet are
    // read behind `CLIENT CACHING yes`: the reader's runtime moves to connections of its own
    // after its first calls, whose cache starts empty, at a moment the test does not choose.)
    let reads: Vec<&Vec<String>> = commands
        .iter()
        .filter(|c| c[0].eq_ignore_ascii_case("mget") || c[0].eq_ignore_ascii_case("get"))
        .collect();
    let value_reads: Vec<&&Vec<String>> = reads.iter().filter(|c| c[1].contains(":v2:")).collect();
    assert_eq!(value_reads.len(), 1, "one read of the value: {commands:?}");
    assert!(
        value_reads[0].len() == 2 && value_reads[0][0].eq_ignore_ascii_case("get"),
        "GET value alone: {commands:?}"
    );
    assert!(
        !reads
            .iter()
            .any(|c| c.iter().any(|a| a.contains(":t:profile:"))),
        "no read of the ticket: {commands:?}"
    );

    set_row(&server, 1, "new");
    let keys = server.scan("{t:scopes}:c:*");
    assert_eq!(keys.len(), 1, "one cache-clear token: {keys:?}");
    assert_eq!(server.cmd::<u64>(&["DEL", &keys[0]]).unwrap(), 1);
    assert_eq!(reader.call("clear_local"), "done");
    assert_eq!(
        reader.call("get 1"),
        "new",
        "a claiming read served a value stamped with a deleted token"
    );
}

/// The server's view of a hit: `GET` of the value alone, once the tokens and the entry's
/// ticket are kept; they were read once, behind `CLIENT CACHING yes`.
#[test]
fn a_hit_reads_the_value_alone_once_tokens_and_ticket_are_kept() {
    let server = RedisServer::start();
    let reader = reader_with_kept_tokens(&server);
    server.log_every_command();
    for _ in 0..20 {
        assert_eq!(reader.call("get 1"), "old");
        assert_eq!(reader.call("clear_local"), "done");
    }
    let commands = server.slowlog_commands();
    let reads: Vec<&Vec<String>> = commands
        .iter()
        .filter(|c| c[0].eq_ignore_ascii_case("mget") || c[0].eq_ignore_ascii_case("get"))
        .collect();
    assert_eq!(reads.len(), 20, "one read per hit: {commands:?}");
    for r in &reads {
        assert!(
            r.len() == 2 && r[0].eq_ignore_ascii_case("get") && r[1].contains(":v2:"),
            "GET value, no ticket, no token: {r:?}"
        );
    }
    assert!(
        !commands.iter().any(|c| c
            .iter()
            .any(|a| a.contains("{t:scopes}") || a.contains(":t:profile"))),
        "no token or ticket read while they are kept: {commands:?}"
    );
}

/// The entry's value and ticket keys of id 1.
fn entry_keys(server: &RedisServer) -> (String, String) {
    // `cache-node`'s `profile`: version 1 of a `String`.
    let schema = cache_runtime::key::KeySchema::of::<String>(1);
    let values = server.scan(&format!("{{t:*}}:v2:{schema}:profile:1"));
    let tickets = server.scan("{t:*}:t:profile:1");
    assert_eq!(
        (values.len(), tickets.len()),
        (1, 1),
        "{values:?} {tickets:?}"
    );
    (values[0].clone(), tickets[0].clone())
}

/// A write that invalidated the key behind the reader's back (no bus message), then a
/// body that had started before it storing its old result under the old ticket, with a
/// plain `SET` as the protocol allows: the old envelope is back in Redis, its ticket gone.
#[test]
fn a_replaced_ticket_is_seen_by_a_reader_that_kept_it() {
    reads_new_after(|s| {
        let (value, ticket) = entry_keys(s);
        let old: Vec<u8> = s.cmd(&["GET", &value]).unwrap();
        assert_eq!(s.cmd::<u64>(&["DEL", &value, &ticket]).unwrap(), 2);
        s.cmd::<()>(&["SET", &ticket, "0123456789abcdef", "PX", "60000"])
            .unwrap();
        let mut c = s.client();
        redis::cmd("SET")
            .arg(&value)
            .arg(old)
            .arg("PX")
            .arg(60_000)
            .query::<()>(&mut c)
            .unwrap();
    });
}

#[test]
fn a_deleted_ticket_is_seen_by_a_reader_that_kept_it() {
    reads_new_after(|s| {
        let (_, ticket) = entry_keys(s);
        assert_eq!(s.cmd::<u64>(&["DEL", &ticket]).unwrap(), 1);
    });
}

#[test]
fn an_expired_ticket_is_seen_by_a_reader_that_kept_it() {
    reads_new_after(|s| {
        let (_, ticket) = entry_keys(s);
        assert_eq!(s.cmd::<u64>(&["PEXPIRE", &ticket, "1"]).unwrap(), 1);
        eventually_blocking(WITHIN, "the ticket to expire", || {
            s.cmd::<u64>(&["EXISTS", &ticket]).unwrap() == 0
        });
    });
}

#[test]
fn stores_extend_a_tag_token_once_per_quantum_and_clear_tokens_never_expire() {
    let server = RedisServer::start();
    let node = Node::start(V1, &server, &[]);
    node.wait_subscribed(1, WITHIN);
    set_row(&server, 1, "old");
    server.log_every_command();
    assert_eq!(node.call("get 1"), "old");
    let ticket_key = server.scan("{t:*}:t:profile:1").pop().expect("a ticket");
    // `PEXPIRE t keep GT`, or `GETEX t PX keep` where the store reads it back too (a cache
    // with a local tier, docs/PROTOCOL.md §7.2).
    let extended = |server: &RedisServer| {
        ["PEXPIRE", "GETEX"].iter().any(|name| {
            server
                .slowlog_commands_named(name)
                .iter()
                .any(|c| c[1] == ticket_key)
        })
    };
    assert!(
        !extended(&server),
        "a ticket created by this miss is not extended"
    );
    let tag_extensions = server.slowlog_commands_named("PEXPIREAT");
    assert!(
        !tag_extensions.iter().any(|c| c[1] == TAG_TOKEN),
        "a tag token created with the ticket is not extended either: {tag_extensions:?}"
    );
    let cache_clear = server.scan("{t:scopes}:c:*");
    assert_eq!(
        cache_clear.len(),
        1,
        "one cache-clear token: {cache_clear:?}"
    );
    for token in [cache_clear[0].as_str(), GLOBAL_TOKEN] {
        assert_eq!(
            server.cmd::<i64>(&["PTTL", token]).unwrap(),
            -1,
            "{token} has no TTL"
        );
    }
    let deadline = || server.cmd::<i64>(&["PEXPIRETIME", TAG_TOKEN]).unwrap();
    let first = deadline();
    let now_ms = || {
        let t: Vec<String> = server.cmd(&["TIME"]).unwrap();
        t[0].parse::<i64>().unwrap() * 1000 + t[1].parse::<i64>().unwrap() / 1000
    };
    // The profile cache: ttl 60 s, so a ticket (and a tag token) outlives at least 2 × 60 s.
    assert!(
        first > now_ms() + 120_000,
        "the tag token outlives the value: {first}"
    );

    // Another store of a value stamped with the same tag token.
    let store_again = |value: &str| {
        server.log_every_command();
        assert_eq!(node.call("invalidate 1"), "done");
        set_row(&server, 1, value);
        assert_eq!(node.call("get 1"), value);
        // To an absolute deadline: every store of the quantum names the same one.
        let extensions = server.slowlog_commands_named("PEXPIREAT");
        assert!(
            extensions.iter().any(|c| c[1] == TAG_TOKEN),
            "the store extends the tag token: {extensions:?}"
        );
        assert!(
            extended(&server),
            "the invalidation's fresh ticket, adopted by the miss, is extended"
        );
        deadline()
    };
    let second = store_again("new");
    // A quantum (over two minutes) may have ended between the two stores, once.
    let (before, after) = match second == first {
        true => (first, second),
        false => (second, store_again("newer")),
    };
    assert_eq!(
        after, before,
        "within one quantum the deadline does not move"
    );
}
