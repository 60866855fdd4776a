//! A blocking caller's thread reads on a connection of its own once it has made a few calls
//! (`redis_tier/blocking_conn.rs`): no task on the Redis thread per hit. What keeps those
//! reads as safe as the tracked connection's (docs/PROTOCOL.md §8.2, §13 F10), each phase on
//! one warm thread:
//!
//! 1. its hits and invalidations go over its own connection (`CLIENT LIST`: named
//!    `cache-runtime-blocking`, last command `mget`, then `set`) and see a token deleted
//!    behind the process's back;
//! 2. it is not opened on a server whose incarnation the record does not name (not judged);
//! 3. after a restart from a snapshot it is not reopened before the main connections have
//!    judged (cleared) the server: no value invalidated before the restart is served;
//! 4. a rollback by resync (the same server, the same connection, an older data set) is seen
//!    in-band by the null push before the next reply: no value invalidated before it is
//!    served.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cache_runtime::cached;
use cache_tests::{eventually_blocking, RedisServer};

const KEYS: usize = 8;
const WITHIN: Duration = Duration::from_secs(20);
const NAME: &str = "name=cache-runtime-blocking";

/// The source of truth: key `id`'s current version.
static SOURCE: [AtomicU64; KEYS] = [const { AtomicU64::new(1) }; KEYS];

#[cached(tier = "redis", ttl = 300, key = "bc:<id>", tags = ["bc:<id>"])]
fn row(id: usize) -> u64 {
    SOURCE[id].load(SeqCst)
}

/// The clients of `server` named as a blocking caller's own connection.
fn own_connections(server: &RedisServer) -> Vec<String> {
    let list: String = server.cmd(&["CLIENT", "LIST"]).expect("CLIENT LIST");
    list.lines()
        .filter(|l| l.contains(NAME))
        .map(str::to_string)
        .collect()
}

/// Every key read on this thread until it has made enough calls to open its connection.
fn warm_up() {
    for _ in 0..4 {
        for (id, source) in SOURCE.iter().enumerate() {
            assert_eq!(row(id), source.load(SeqCst));
        }
    }
}

/// Every key to the next version, each invalidation acknowledged, half of them read again
/// (Redis then holds the new version), half not (Redis holds no value).
fn next_version(v: u64) {
    for (id, source) in SOURCE.iter().enumerate() {
        source.store(v, SeqCst);
        invalidate_row(id).expect("invalidate");
        if id % 2 == 0 {
            assert_eq!(row(id), v);
        }
    }
}

/// Reads every key `rounds` times: each is `v`.
fn all_read(v: u64, rounds: usize, phase: &str) {
    for round in 0..rounds {
        for id in 0..KEYS {
            assert_eq!(
                row(id),
                v,
                "{phase}: key {id}, round {round}: a value invalidated before was served"
            );
        }
    }
}

#[test]
fn a_blocking_threads_own_connection_serves_only_a_judged_server() {
    let node = RedisServer::start();
    let older = RedisServer::start();
    cache_runtime::init(
        cache_runtime::Config::builder()
            .redis_url(node.url())
            .key_prefix("bc")
            .build(),
    )
    .expect("init");
    let record_key = "{bc:scopes}:server";

    // 1. A warm thread reads on its own connection.
    warm_up();
    let own = own_connections(&node);
    assert_eq!(own.len(), 1, "one connection for this thread: {own:?}");
    assert!(own[0].contains("cmd=mget"), "its hits read there: {own:?}");
    assert!(
        own[0].contains("resp=3"),
        "RESP3, for the null push: {own:?}"
    );
    SOURCE[0].store(2, SeqCst);
    let tag_token = "{bc:scopes}:t:bc:0";
    assert_eq!(node.cmd::<u64>(&["DEL", tag_token]).expect("DEL"), 1);
    assert_eq!(
        row(0),
        2,
        "a token deleted behind the process's back is seen"
    );
    // Its invalidations too (a process without a subscriber: the plain pipeline, whose last
    // command is the fresh ticket's `SET`).
    SOURCE[0].store(1, SeqCst);
    invalidate_row(0).expect("invalidate");
    let own = own_connections(&node);
    assert!(
        own[0].contains("cmd=set"),
        "the invalidation went there: {own:?}"
    );
    assert_eq!(row(0), 1);

    // 2. Another thread, on a server whose record names another incarnation (as after a
    // restart the main connections have not noticed yet): it never opens its own.
    let record: String = node.cmd(&["GET", record_key]).expect("the record");
    node.cmd::<()>(&["SET", record_key, "another-run-id/another-replid"])
        .expect("SET");
    let (reading, read) = mpsc::channel::<()>();
    let (done, finished) = mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        warm_up();
        done.send(()).unwrap();
        // Then reads on request, until told to stop (the channel closed).
        while read.recv().is_ok() {
            warm_up();
            done.send(()).unwrap();
        }
    });
    finished.recv().expect("the other thread warmed up");
    assert_eq!(
        own_connections(&node).len(),
        1,
        "a connection opened on an unjudged server"
    );
    // Judged again: the other thread opens its own (it retries after a second).
    node.cmd::<()>(&["SET", record_key, &record]).expect("SET");
    eventually_blocking(WITHIN, "the other thread's own connection", || {
        reading.send(()).unwrap();
        finished.recv().unwrap();
        own_connections(&node).len() == 2
    });
    drop(reading);
    other.join().expect("the other thread");
    eventually_blocking(WITHIN, "a thread's connection closed with it", || {
        own_connections(&node).len() == 1
    });

    // 3. A restart from a snapshot of version 1, after every key went to version 2.
    node.save_snapshot();
    next_version(2);
    node.restart_from_snapshot();
    all_read(2, 10, "after a restart from a snapshot");
    eventually_blocking(WITHIN, "the thread's connection reopened", || {
        all_read(2, 1, "after a restart from a snapshot");
        own_connections(&node).len() == 1
    });

    // 4. A rollback by resync: `older` takes a copy of version 2, every key goes to version
    // 3, and `node` resyncs from the copy and is promoted back (the same `run_id`, the same
    // connections: only the null push tells).
    older.replicate_from(&node);
    older.promote();
    next_version(3);
    let before = own_connections(&node);
    assert_eq!(before.len(), 1, "{before:?}");
    let run_id = node.info_field("run_id");
    node.replicate_from(&older);
    node.promote();
    assert_eq!(node.info_field("run_id"), run_id, "the same server");
    all_read(3, 10, "after a rollback by resync");
    let s = row_cache().stats();
    assert!(s.redis_hits > 0, "{s:?}");

    // The cache serves from Redis again, on the thread's own connection.
    let hits = row_cache().stats().redis_hits;
    let deadline = Instant::now() + WITHIN;
    while row_cache().stats().redis_hits == hits || own_connections(&node).len() != 1 {
        assert!(Instant::now() < deadline, "no Redis hit after the rollback");
        all_read(3, 1, "after a rollback by resync");
    }
}
