//! A blocking caller's own connection (`redis_tier/blocking_conn.rs`) and a flush of another
//! database of the same server (docs/PROTOCOL.md §13 F10). Client tracking ignores
//! databases: `FLUSHDB` of any database sends the null push to every tracked connection, the
//! thread's own included. That connection was dropped on every null push and a new one
//! opened: one connect per warm thread per flush, for another application's flushes. Now it
//! is judged again on itself (`INFO` + the incarnation record, as its open does) and serves
//! on. A flush of *our* database is still a loss: the record is gone, so the connection is
//! not judged, the main connections reopen and clear, and a value written back without its
//! ticket is not served.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::cached;
use cache_tests::{eventually_blocking, RedisServer};

const KEYS: usize = 8;
const FLUSHES: u64 = 20;
const WITHIN: Duration = Duration::from_secs(20);
const NAME: &str = "name=cache-runtime-blocking";

/// The source's version of every key, and the body's runs.
static VERSION: AtomicU64 = AtomicU64::new(1);
static RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(tier = "redis", ttl = 300, key = "bfo:<id>")]
fn row(id: usize) -> u64 {
    RUNS.fetch_add(1, SeqCst);
    VERSION.load(SeqCst) * 1000 + id as u64
}

/// The ids of `server`'s clients named as a blocking caller's own connection.
fn own_connections(server: &RedisServer) -> Vec<String> {
    let list: String = server.cmd(&["CLIENT", "LIST"]).expect("CLIENT LIST");
    list.lines()
        .filter(|l| l.contains(NAME))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

/// Reads every key `rounds` times on this thread: each is `version`'s.
fn all_read(version: u64, rounds: usize, phase: &str) {
    for round in 0..rounds {
        for id in 0..KEYS {
            assert_eq!(
                row(id),
                version * 1000 + id as u64,
                "{phase}: key {id}, round {round}"
            );
        }
    }
}

/// `INFO stats`' `total_connections_received` and `INFO commandstats`' calls of `INFO`, on
/// the test's own connection (the harness's `RedisServer::cmd` opens one per call).
fn connections_and_infos(c: &mut redis::Connection) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .arg("commandstats")
        .query(c)
        .expect("INFO");
    let connections = cache_tests::info_field(&info, "total_connections_received")
        .and_then(|v| v.parse().ok())
        .expect("total_connections_received");
    let infos = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_info:calls="))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0);
    (connections, infos)
}

#[test]
fn a_flush_of_another_database_keeps_a_blocking_threads_own_connection() {
    let node = RedisServer::start();
    cache_runtime::init(
        cache_runtime::Config::builder()
            .redis_url(node.url())
            .key_prefix("bfo")
            // A slow machine's hiccup is not what this test is about: a timeout drops the
            // connection (and a read that timed out would run its body).
            .redis_timeout(Duration::from_secs(2))
            .build(),
    )
    .expect("init");

    // Warm: every key stored, and this thread reading on a connection of its own.
    all_read(1, 1, "cold");
    eventually_blocking(WITHIN, "the thread's own connection", || {
        all_read(1, 1, "warm");
        own_connections(&node).len() == 1
    });
    assert_eq!(RUNS.load(SeqCst), KEYS as u64, "warm keys are Redis hits");
    let own = own_connections(&node);
    let mut mine = node.client();
    let mut other = node.client_in(1);
    let (opened, judgements) = connections_and_infos(&mut mine);

    // Another application flushes database 1 between this thread's reads.
    for i in 0..FLUSHES {
        redis::cmd("SET")
            .arg("other:app")
            .arg(i)
            .query::<()>(&mut other)
            .expect("SET");
        redis::cmd("FLUSHDB")
            .query::<()>(&mut other)
            .expect("FLUSHDB");
        all_read(1, 2, "during flushes of another database");
    }
    assert_eq!(
        RUNS.load(SeqCst),
        KEYS as u64,
        "a warm key ran its body again during flushes of another database"
    );
    let (now_opened, now_infos) = connections_and_infos(&mut mine);
    assert_eq!(
        now_opened - opened,
        0,
        "connections opened for flushes of another database"
    );
    assert_eq!(
        own_connections(&node),
        own,
        "the thread's own connection was replaced for a flush of another database"
    );
    // Each flush judged in place: by the main tracked connection (the thread's read whose
    // reply followed the push went through the Redis thread) and by the own connection.
    let judged = now_infos - judgements - 1; // less this test's own first `INFO`
    assert!(
        judged >= 2 * FLUSHES,
        "{judged} judgements for {FLUSHES} flushes"
    );

    // A flush of *our* database: the record is gone, so nothing is judged in place; a value
    // whose old envelope is written back without its ticket is not served.
    let value_key = row_cache()
        .redis_key("bfo:0")
        .expect("a cache with a Redis tier");
    let old: Vec<u8> = node.cmd(&["GET", &value_key]).expect("GET");
    VERSION.store(2, SeqCst);
    redis::cmd("FLUSHDB")
        .query::<()>(&mut mine)
        .expect("FLUSHDB");
    redis::cmd("SET")
        .arg(&value_key)
        .arg(&old)
        .query::<()>(&mut mine)
        .expect("SET");
    all_read(2, 3, "after a flush of our database");
    eventually_blocking(WITHIN, "the server judged and recorded again", || {
        all_read(2, 1, "after a flush of our database");
        let recorded: Option<String> = node
            .cmd(&["GET", "{bfo:scopes}:server"])
            .expect("GET the record");
        recorded.is_some()
    });
    eventually_blocking(WITHIN, "a new own connection, on the judged server", || {
        all_read(2, 1, "after a flush of our database");
        let now = own_connections(&node);
        now.len() == 1 && now != own
    });
}
