//! Redis reached the ways operators deploy it besides `redis://host:port/`: over a Unix
//! socket (`redis+unix://` and `unix://`) and in a database other than 0 (`?db=3`, `/3`).
//! Processes on such a URL share hits and invalidate each other's local copies as on TCP;
//! everything the runtime writes lands in that database; and an application in another
//! database of the same server with the same key prefix (a staging copy, say) neither reads
//! its values nor loses an invalidation to it (the bus is per server: its messages only ever
//! drop more local copies).

use std::time::Duration;

use cache_tests::node::set_row_in;
use cache_tests::{eventually_blocking, Node, RedisOptions, RedisServer};

const NODE: &str = env!("CARGO_BIN_EXE_cache-node");
const WITHIN: Duration = Duration::from_secs(10);

/// The keys of database `db`.
fn keys_of(server: &RedisServer, db: u8) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut server.client_in(db))
        .unwrap();
    keys.sort();
    keys
}

#[test]
fn processes_on_a_unix_socket_and_another_database_share_hits_and_invalidations() {
    let socket = std::env::temp_dir().join(format!("cache-tests-{}.sock", std::process::id()));
    let server = RedisServer::start_with_options(
        RedisOptions::new()
            .arg("--unixsocket", socket.to_str().expect("utf-8 path"))
            .arg("--unixsocketperm", "700"),
    );
    // Two processes of one application in database 3, one through each URL form of a
    // socket; a third in database 0 over TCP with the same key prefix.
    let a = Node::start_at(
        NODE,
        &format!("redis+unix://{}?db=3", socket.display()),
        &[],
    );
    let b = Node::start_at(NODE, &format!("unix://{}?db=3", socket.display()), &[]);
    let other = Node::start_at(NODE, &format!("redis://127.0.0.1:{}/0", server.port()), &[]);
    for n in [&a, &b, &other] {
        n.wait_subscribed(1, WITHIN);
    }
    set_row_in(&server, 3, 1, "ada");
    set_row_in(&server, 0, 1, "staging-ada");

    assert_eq!(a.call("get 1"), "ada");
    assert_eq!(b.call("get 1"), "ada", "b is served a's value");
    assert_eq!(other.call("get 1"), "staging-ada", "database 0 has its own");
    let stats = b.call("stats");
    assert!(
        stats.contains("redis_hits: 1"),
        "b read it from Redis: {stats}"
    );
    let runtime_keys = |db| {
        keys_of(&server, db)
            .into_iter()
            .filter(|k| !k.starts_with("db:") && !k.starts_with("body:"))
            .count()
    };
    assert!(runtime_keys(3) > 0, "the cache's keys are in database 3");

    // A write in database 3: the other process of that application drops its copy.
    assert_eq!(b.call("peek 1"), "ada");
    set_row_in(&server, 3, 1, "grace");
    assert_eq!(a.call("invalidate 1"), "done");
    eventually_blocking(WITHIN, "b's copy evicted by the bus", || {
        b.call("peek 1") == "-"
    });
    assert_eq!(b.call("get 1"), "grace");
    assert_eq!(a.call("get 1"), "grace");
    // The other database's application heard the message (one bus per server) and at worst
    // reads its own value again: never database 3's.
    assert_eq!(other.call("get 1"), "staging-ada");

    // And its writes never cost database 3 an invalidation or a value.
    set_row_in(&server, 0, 1, "staging-grace");
    assert_eq!(other.call("invalidate 1"), "done");
    assert_eq!(other.call("get 1"), "staging-grace");
    assert_eq!(a.call("get 1"), "grace");
    assert_eq!(b.call("get 1"), "grace");
    let _ = std::fs::remove_file(&socket);
}
