//! A blocking caller's miss stores on its thread's own connection (`redis_tier/blocking_conn.rs`,
//! docs/PROTOCOL.md §7.1): no task on the Redis thread for the store either. Seen from the
//! server (`SLOWLOG` entries carry the client's name), each phase on warm threads:
//!
//! 1. a miss's plain store (a lone `SET`, and a tagged store's pipeline `SET` + `PEXPIREAT`)
//!    runs on the `cache-runtime-blocking` client, and the stored value is a Redis hit for
//!    another reader (a cold thread, which reads through the Redis thread);
//! 2. a `local+redis` cache's store reads and extends its ticket there (`GETEX`): a store
//!    under the ticket in force is kept locally, one under a ticket gone is not;
//! 3. an invalidation racing a store is never lost: a body that heard the write stores with
//!    the script there, which refuses it (nothing stale in Redis); a store under a ticket
//!    deleted behind the process's back lands and every reader refuses it;
//! 4. a `FLUSHALL` between the read and the store: the store's reply follows the null push,
//!    so it is not used and the store goes through the Redis thread (sent twice); the value
//!    it stored names a ticket gone with the flush, and is not served;
//! 5. a restart from a snapshot between the read and the store (the snapshot holds the
//!    store's ticket, which an acknowledged invalidation had replaced): the store goes
//!    through the Redis thread, which judges the server (the clear) first; the value it
//!    writes is refused;
//! 6. a `lock = true` cache's lock script, lock attempt and holder's store, and
//! 7. scope invalidations (a tag's, a cache clear) run on the own connection too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use cache_runtime::cached;
use cache_tests::{eventually_blocking, RedisServer};

const WITHIN: Duration = Duration::from_secs(20);
const OWN: &str = "cache-runtime-blocking";

/// The source of truth: each key's version (1 unless set).
static SOURCE: Mutex<Option<HashMap<u64, u64>>> = Mutex::new(None);
static BODY_RUNS: AtomicU64 = AtomicU64::new(0);

fn source(id: u64) -> u64 {
    SOURCE
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&id).copied())
        .unwrap_or(1)
}

fn set_source(id: u64, v: u64) {
    SOURCE
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(id, v);
}

/// A body held after it read the source: `(id, started, release)`.
type Hold = (u64, mpsc::Sender<()>, mpsc::Receiver<()>);
static HOLD: Mutex<Option<Hold>> = Mutex::new(None);

/// The body's common part: reads the source, then waits if it is the held one.
fn body(id: u64) -> u64 {
    BODY_RUNS.fetch_add(1, SeqCst);
    let v = source(id);
    let held = {
        let mut h = HOLD.lock().unwrap();
        match &*h {
            Some((held, ..)) if *held == id => h.take(),
            _ => None,
        }
    };
    if let Some((_, started, release)) = held {
        started.send(()).unwrap();
        release.recv().unwrap();
    }
    v
}

#[cached(tier = "redis", ttl = 300, key = "bsp:<id>")]
fn plain_row(id: u64) -> u64 {
    body(id)
}

#[cached(tier = "redis", ttl = 300, key = "bst:<id>", tags = ["bs-shared"])]
fn tagged_row(id: u64) -> u64 {
    body(id)
}

#[cached(tier = "redis", ttl = 300, lock, key = "bsk:<id>")]
fn locked_row(id: u64) -> u64 {
    body(id)
}

#[cached(tier = "local+redis", ttl = 300, key = "bsl:<id>")]
fn two_tier_row(id: u64) -> u64 {
    body(id)
}

/// A `SLOWLOG` entry: the command's arguments and the client's name.
struct Logged {
    args: Vec<String>,
    addr: String,
    client: String,
}

/// Every command clients sent since [`RedisServer::log_every_command`], oldest first.
fn logged(server: &RedisServer) -> Vec<Logged> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let log: Vec<redis::Value> = server.cmd(&["SLOWLOG", "GET", "1024"]).expect("SLOWLOG");
    let mut out: Vec<Logged> = log
        .iter()
        .filter_map(|entry| match entry {
            redis::Value::Array(f) => match (f.get(3), f.get(4), f.get(5)) {
                (Some(redis::Value::Array(args)), Some(addr), Some(name)) => Some(Logged {
                    args: args.iter().map(text).collect(),
                    addr: text(addr),
                    client: text(name),
                }),
                _ => None,
            },
            _ => None,
        })
        .collect();
    // Not the commands a script ran (their client is the script's, `?:0`).
    out.retain(|l| l.addr != "?:0");
    out.reverse();
    out
}

/// Whether `key` is the value key of `template`'s `id` (`{prefix:bucket}:v2:<schema>:bsp:7`).
fn value_key(key: &str, template: &str, id: u64) -> bool {
    key.contains(":v2:") && key.ends_with(&format!(":{template}:{id}"))
}

/// The stores (`SET` without `NX`) of `template`'s `id` in the log.
fn stores<'a>(log: &'a [Logged], template: &str, id: u64) -> Vec<&'a Logged> {
    log.iter()
        .filter(|l| {
            l.args[0].eq_ignore_ascii_case("SET")
                && l.args.len() > 1
                && value_key(&l.args[1], template, id)
                && !l.args.iter().any(|a| a.eq_ignore_ascii_case("NX"))
        })
        .collect()
}

/// The clients of the commands in `log` that name a key ending in `:{template}:{id}` (a
/// value, ticket or lock key).
fn clients_naming<'a>(
    log: &'a [Logged],
    template: &str,
    id: u64,
) -> Vec<(&'a str, &'a str, &'a str)> {
    let end = format!(":{template}:{id}");
    log.iter()
        .filter(|l| l.args.iter().any(|a| a.ends_with(&end)))
        .map(|l| (l.args[0].as_str(), l.client.as_str(), l.addr.as_str()))
        .collect()
}

/// The clients named as a blocking caller's own connection.
fn own_connections(server: &RedisServer) -> usize {
    let list: String = server.cmd(&["CLIENT", "LIST"]).expect("CLIENT LIST");
    list.lines()
        .filter(|l| l.contains(&format!("name={OWN}")))
        .count()
}

/// This thread makes enough blocking calls (misses of keys no phase uses) to open its own
/// connection.
fn warm_up(base: u64) {
    for id in base..base + 20 {
        assert_eq!(plain_row(id), 1);
    }
}

/// A warm thread that calls `plain_row` (or the cache `which` names) on request.
struct Worker {
    ask: mpsc::Sender<(char, u64)>,
    answer: mpsc::Receiver<u64>,
}

impl Worker {
    fn start(base: u64) -> Self {
        let (ask, asked) = mpsc::channel::<(char, u64)>();
        let (answered, answer) = mpsc::channel();
        std::thread::spawn(move || {
            warm_up(base);
            answered.send(0).unwrap();
            while let Ok((which, id)) = asked.recv() {
                let v = match which {
                    'p' => plain_row(id),
                    't' => tagged_row(id),
                    'k' => locked_row(id),
                    'g' => {
                        cache_runtime::invalidate_tag_blocking("bs-shared").expect("tag");
                        0
                    }
                    'c' => {
                        locked_row_cache().clear_blocking().expect("clear");
                        0
                    }
                    _ => two_tier_row(id),
                };
                answered.send(v).unwrap();
            }
        });
        let w = Self { ask, answer };
        assert_eq!(w.answer.recv().unwrap(), 0, "warmed up");
        w
    }

    /// Starts a call of `plain_row(id)` whose body is held once it read the source; returns
    /// the body's release.
    fn held(&self, id: u64) -> mpsc::Sender<()> {
        let (started, is_started) = mpsc::channel();
        let (release, released) = mpsc::channel();
        *HOLD.lock().unwrap() = Some((id, started, released));
        self.ask.send(('p', id)).unwrap();
        is_started.recv().expect("the held body started");
        release
    }

    fn call(&self, which: char, id: u64) -> u64 {
        self.ask.send((which, id)).unwrap();
        self.answer.recv().unwrap()
    }
}

/// Reads `id` on a fresh thread (no connection of its own: through the Redis thread).
fn cold_read(id: u64) -> u64 {
    std::thread::spawn(move || plain_row(id)).join().unwrap()
}

#[test]
fn a_blocking_callers_store_runs_on_its_own_connection() {
    let server = RedisServer::start();
    cache_runtime::init(
        cache_runtime::Config::builder()
            .redis_url(server.url())
            .key_prefix("bs")
            .build(),
    )
    .expect("init");
    let w = Worker::start(10_000);
    assert_eq!(own_connections(&server), 1, "the worker's own connection");

    // 1. A miss's store, untagged (one `SET`) and tagged (`SET` + `PEXPIREAT` of the shared
    // tag's token, which an earlier miss created), on the worker's own connection.
    assert_eq!(w.call('t', 10_100), 1, "the shared tag's token exists");
    server.log_every_command();
    assert_eq!(w.call('p', 1), 1);
    assert_eq!(w.call('t', 1), 1);
    let log = logged(&server);
    for (template, what) in [("bsp", "an untagged store"), ("bst", "a tagged store")] {
        let s = stores(&log, template, 1);
        assert_eq!(s.len(), 1, "{what}: one SET");
        assert_eq!(
            s[0].client, OWN,
            "{what} ran on the blocking caller's own connection, not through the Redis thread"
        );
    }
    let extended: Vec<_> = log
        .iter()
        .filter(|l| l.args[0].eq_ignore_ascii_case("PEXPIREAT"))
        .collect();
    assert!(
        extended.len() == 1 && extended[0].client == OWN,
        "the tag token's extension went with the store"
    );
    // Another reader (a cold thread: through the Redis thread's connections) is served the
    // stored value from Redis.
    let (runs, hits) = (BODY_RUNS.load(SeqCst), plain_row_cache().stats().redis_hits);
    assert_eq!(cold_read(1), 1);
    assert_eq!(BODY_RUNS.load(SeqCst), runs, "no body ran");
    assert_eq!(plain_row_cache().stats().redis_hits, hits + 1);

    // 2. A `local+redis` store reads its ticket back (`GETEX` under a ticket left by an
    // invalidation): in force, the value is kept locally. The first cache with a local tier
    // starts the bus, whose subscription clears the local tiers when it lands (this phase
    // used to race it: 1 failure in 10 loaded runs), and local copies are served only while
    // the bus is trusted (a probe answered late under load is a lapse): the cache is built
    // first, and the phase run again until the bus stayed trusted throughout one run.
    let _ = two_tier_row_cache();
    let (log, local_hits) = cache_tests::trusted_throughout_blocking("a local copy", || {
        assert_eq!(w.call('l', 1), 1);
        invalidate_two_tier_row(1).expect("invalidate");
        server.log_every_command();
        assert_eq!(w.call('l', 1), 1);
        let log = logged(&server);
        let local = two_tier_row_cache().stats().local_hits;
        assert_eq!(w.call('l', 1), 1);
        (log, two_tier_row_cache().stats().local_hits - local)
    });
    let getex: Vec<_> = log
        .iter()
        .filter(|l| l.args[0].eq_ignore_ascii_case("GETEX"))
        .collect();
    assert!(
        getex.len() == 1 && getex[0].client == OWN,
        "the store read and extended the ticket on its own connection"
    );
    assert_eq!(stores(&log, "bsl", 1)[0].client, OWN);
    assert_eq!(local_hits, 1, "kept locally: the ticket was ours");

    // 3a. An invalidation of this process, acknowledged while a body ran: the body heard it,
    // so its store is the script (on the own connection), which refuses the stale value.
    assert_eq!(w.call('p', 2), 1);
    invalidate_plain_row(2).expect("invalidate");
    server.log_every_command();
    let release = w.held(2);
    set_source(2, 2);
    invalidate_plain_row(2).expect("invalidate");
    let superseded = plain_row_cache().stats().superseded;
    release.send(()).unwrap();
    assert_eq!(
        w.answer.recv().unwrap(),
        1,
        "the body read before the write"
    );
    let log = logged(&server);
    let scripts: Vec<_> = log
        .iter()
        // The store script names the value, ticket and lock keys and the scope tokens (the
        // invalidation script two keys).
        .filter(|l| l.args[0].eq_ignore_ascii_case("EVALSHA") && l.args.len() > 4)
        .filter(|l| l.args[2].parse::<usize>().is_ok_and(|keys| keys >= 3))
        .filter(|l| value_key(&l.args[3], "bsp", 2))
        .collect();
    assert!(
        !scripts.is_empty() && scripts.iter().all(|l| l.client == OWN),
        "the conditional store ran on the own connection: {:?}",
        scripts.iter().map(|l| &l.client).collect::<Vec<_>>()
    );
    assert!(stores(&log, "bsp", 2).is_empty(), "no plain store");
    assert_eq!(
        plain_row_cache().stats().superseded,
        superseded + 1,
        "refused"
    );
    assert_eq!(cold_read(2), 2, "the stale value never reached Redis");
    assert_eq!(w.call('p', 2), 2);

    // 3b. The ticket deleted behind the process's back (no message): the plain store lands
    // on the own connection, under a ticket no longer in force, and every reader refuses it.
    server.log_every_command();
    let release = w.held(3);
    set_source(3, 2);
    let tickets = server.scan("{bs:*}:t:bsp:3");
    assert_eq!(tickets.len(), 1, "{tickets:?}");
    assert_eq!(server.cmd::<u64>(&["DEL", &tickets[0]]).unwrap(), 1);
    release.send(()).unwrap();
    assert_eq!(w.answer.recv().unwrap(), 1);
    let log = logged(&server);
    let s = stores(&log, "bsp", 3);
    assert!(
        s.len() == 1 && s[0].client == OWN,
        "stored on the own connection"
    );
    let runs = BODY_RUNS.load(SeqCst);
    assert_eq!(cold_read(3), 2, "a value under a deleted ticket was served");
    assert_eq!(w.call('p', 3), 2);
    assert_eq!(
        BODY_RUNS.load(SeqCst),
        runs + 1,
        "one body for the newer value"
    );

    // 4. `FLUSHALL` between the read and the store (the key's ticket gone with it, and the
    // source changed): the store's reply follows the null push on the own connection, so
    // the store is sent again through the Redis thread. Nothing stale is served.
    let release = w.held(4);
    server.flushall();
    server.log_every_command();
    set_source(4, 2);
    release.send(()).unwrap();
    assert_eq!(w.answer.recv().unwrap(), 1);
    let log = logged(&server);
    let s = stores(&log, "bsp", 4);
    assert!(
        s.len() == 2 && s[0].client == OWN && s[1].client != OWN,
        "sent on the own connection, its reply not used after the null push, sent again \
         through the Redis thread: {:?}",
        s.iter().map(|l| &l.client).collect::<Vec<_>>()
    );
    assert_eq!(cold_read(4), 2);
    assert_eq!(w.call('p', 4), 2);
    eventually_blocking(WITHIN, "the worker's connection reopened", || {
        w.call('p', 4) == 2 && own_connections(&server) >= 1
    });

    // 5. A restart from a snapshot between the read and the store. The snapshot holds the
    // held body's ticket; an invalidation acknowledged after it replaced that ticket, and
    // the restart brings it back. The store (its own connection closed by the restart) goes
    // through the Redis thread, whose reconnect judges the server and clears: the value it
    // writes names a global token no longer in force.
    let release = w.held(5);
    server.save_snapshot();
    set_source(5, 2);
    invalidate_plain_row(5).expect("invalidate");
    server.restart_from_snapshot();
    release.send(()).unwrap();
    assert_eq!(w.answer.recv().unwrap(), 1);
    for round in 0..10 {
        assert_eq!(
            cold_read(5),
            2,
            "round {round}: a value invalidated before was served"
        );
        assert_eq!(w.call('p', 5), 2, "round {round}");
    }
    eventually_blocking(WITHIN, "the worker's connection reopened", || {
        w.call('p', 5) == 2 && own_connections(&server) >= 1
    });

    // 6. A `lock = true` cache: its misses' lock (the read script, or `SET l … NX GET`) and
    // its holder's store (the store script, which releases the lock) on the own connection,
    // from the first miss to the last (past four misses of eight reads go straight to the
    // script).
    server.log_every_command();
    for id in 101..=106 {
        assert_eq!(w.call('k', id), 1);
    }
    let log = logged(&server);
    for id in 101..=106 {
        let clients = clients_naming(&log, "bsk", id);
        assert!(
            clients
                .iter()
                .any(|(c, ..)| c.eq_ignore_ascii_case("EVALSHA"))
                && clients.iter().all(|(_, client, _)| *client == OWN),
            "key {id}: every command of the locked miss on the own connection: {clients:?}"
        );
    }
    let runs = BODY_RUNS.load(SeqCst);
    assert_eq!(cold_read_locked(106), 1);
    assert_eq!(
        BODY_RUNS.load(SeqCst),
        runs,
        "the holder's store is a Redis hit"
    );

    // 7. Scope invalidations (a tag's, a cache clear) on the own connection: the token's
    // `DEL` comes from there, and every value stamped with the old token is refused.
    server.log_every_command();
    assert_eq!(w.call('g', 0), 0);
    assert_eq!(w.call('c', 0), 0);
    let log = logged(&server);
    let deleted: Vec<_> = log
        .iter()
        .filter(|l| l.args[0].eq_ignore_ascii_case("DEL"))
        .map(|l| (l.args[1].as_str(), l.client.as_str()))
        .collect();
    assert!(
        deleted.len() == 2 && deleted.iter().all(|(_, client)| *client == OWN),
        "the tag's and the clear's tokens deleted on the own connection: {deleted:?}"
    );
    let runs = BODY_RUNS.load(SeqCst);
    assert_eq!(w.call('t', 1), 1);
    assert_eq!(w.call('k', 101), 1);
    assert_eq!(
        BODY_RUNS.load(SeqCst),
        runs + 2,
        "values stamped with the deleted tokens refused"
    );
}

/// Reads `locked_row(id)` on a fresh thread (through the Redis thread).
fn cold_read_locked(id: u64) -> u64 {
    std::thread::spawn(move || locked_row(id)).join().unwrap()
}
