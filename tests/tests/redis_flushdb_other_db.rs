//! A flush of *another* database of the same server (docs/PROTOCOL.md §13 F10). Client
//! tracking ignores databases: `FLUSHDB` of any database sends every tracked connection a
//! null invalidation, which the runtime took as "the data set may have been replaced" and
//! answered by reopening its connections; another application flushing its own database
//! every 50 ms sent most reads to the source. Now the server is judged again on the live
//! connection (`INFO` + `GET` of the incarnation record, as the open does): judged, the same
//! connections serve on. A flush of *our* database is still a loss: nothing kept survives it,
//! the record is gone, so the connections are reopened and the record written again.
//!
//! The caches read on database 0; another client flushes database 1 every 50 ms. Warm keys
//! never run their body again (a Redis-only cache and a `lock = true` one), no connection is
//! opened, and each flush costs one `INFO` (the judgement). Fails on the code before (the
//! bodies ran again for a share of the reads, and the connections were reopened).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::cached;
use cache_tests::RedisServer;

const KEYS: usize = 16;
/// How often the other application flushes its database.
const EVERY: Duration = Duration::from_millis(50);
/// How long the caches are read while it does.
const FOR: Duration = Duration::from_secs(3);

/// The source's version of every key.
static VERSION: AtomicU64 = AtomicU64::new(1);
static RUNS: AtomicU64 = AtomicU64::new(0);
static LOCK_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(tier = "redis", ttl = 300, key = "fod:<id>")]
async fn remote(id: usize) -> u64 {
    RUNS.fetch_add(1, SeqCst);
    VERSION.load(SeqCst) * 1000 + id as u64
}

/// Its reads are the lock script's, on the data connection (judged on the tracked one).
#[cached(tier = "redis", ttl = 300, key = "fodl:<id>", lock = true)]
async fn locked(id: usize) -> u64 {
    LOCK_RUNS.fetch_add(1, SeqCst);
    VERSION.load(SeqCst) * 1000 + 500 + id as u64
}

/// `INFO stats`' `total_connections_received`, on the test's own connection.
fn connections_received(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query(c)
        .expect("INFO stats");
    cache_tests::info_field(&info, "total_connections_received")
        .and_then(|v| v.parse().ok())
        .expect("total_connections_received")
}

/// This process's CPU time so far (user and system, every thread; `/proc/self/stat`, in
/// clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the command's name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// `INFO commandstats`' calls of `INFO`, on the test's own connection.
fn info_calls(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(c)
        .expect("INFO commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_info:calls="))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Another application: writes a key into its database (`c` has `SELECT`ed it) and flushes
/// it every [`EVERY`], until stopped. Returns the flushes.
fn flush_in_a_loop(
    mut c: redis::Connection,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut flushes = 0;
        while !stop.load(SeqCst) {
            // Refused while the node is a replica (the rollback below): the loop goes on.
            let _ = redis::cmd("SET")
                .arg("other:app")
                .arg(flushes)
                .query::<()>(&mut c);
            if redis::cmd("FLUSHDB").query::<()>(&mut c).is_ok() {
                flushes += 1;
            }
            std::thread::sleep(EVERY);
        }
        flushes
    })
}

/// Whether every key of both caches has a value in Redis.
fn all_stored(node: &RedisServer) -> bool {
    let mut c = node.client();
    (0..KEYS).all(|id| {
        let logical = |template: &str| format!("{template}:{id}");
        [
            remote_cache().redis_key(&logical("fod")),
            locked_cache().redis_key(&logical("fodl")),
        ]
        .into_iter()
        .all(|key| {
            redis::cmd("EXISTS")
                .arg(key.expect("a cache with a Redis tier"))
                .query::<bool>(&mut c)
                .unwrap_or(false)
        })
    })
}

/// Reads every key of both caches from `tasks` tasks for `dur`, checking each value is
/// `version`'s. Returns the reads.
async fn read_for(dur: Duration, tasks: usize, version: u64) -> u64 {
    let deadline = Instant::now() + dur;
    let mut all = Vec::new();
    for t in 0..tasks {
        all.push(tokio::spawn(async move {
            let mut reads = 0u64;
            let mut id = t;
            while Instant::now() < deadline {
                id = (id + 1) % KEYS;
                assert_eq!(remote(id).await, version * 1000 + id as u64);
                assert_eq!(locked(id).await, version * 1000 + 500 + id as u64);
                reads += 2;
            }
            reads
        }));
    }
    let mut reads = 0;
    for t in all {
        reads += t.await.expect("reader");
    }
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_of_another_database_keeps_the_connections_and_a_flush_of_ours_is_a_loss() {
    let node = RedisServer::start();
    cache_runtime::init(
        cache_runtime::Config::builder()
            .redis_url(node.url())
            .key_prefix("fod")
            // A slow machine's hiccup is not what this test is about: a read that timed out
            // would run its body.
            .redis_timeout(Duration::from_secs(2))
            .build(),
    )
    .expect("init");
    let mut own = node.client();

    // Warm: every key stored (one at a time: a read of a key whose store has not landed yet
    // would run its body again), then read often enough that this runtime has connections
    // of its own (opened after its first calls), every ticket and token kept.
    for id in 0..KEYS {
        assert_eq!(remote(id).await, 1000 + id as u64);
        assert_eq!(locked(id).await, 1500 + id as u64);
    }
    cache_tests::eventually(Duration::from_secs(10), "every value stored", || {
        (0..KEYS).all(|id| {
            let (v, _, _) = cache_runtime::key::redis_keys(
                "fod",
                remote_cache().key_schema().expect("a Redis tier"),
                &format!("fod:{id}"),
            );
            redis::cmd("EXISTS")
                .arg(v)
                .query::<bool>(&mut node.client())
                .unwrap_or(false)
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // `FOD_ONLY_HITS`: a fixed amount of work up to the hits and none after (an instruction
    // count of the whole process, under `valgrind`, is then the hits' but for a constant).
    let only_hits = std::env::var_os("FOD_ONLY_HITS").is_some();
    for _ in 0..4 {
        match only_hits {
            false => {
                read_for(Duration::from_millis(200), 2, 1).await;
            }
            true => {
                for id in 0..KEYS * 4 {
                    assert_eq!(remote(id % KEYS).await, 1000 + (id % KEYS) as u64);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let runs = |name| match name {
        "remote" => RUNS.load(SeqCst),
        _ => LOCK_RUNS.load(SeqCst),
    };
    assert_eq!((runs("remote"), runs("locked")), (KEYS as u64, KEYS as u64));

    // A plain hit's cost, no flush going on (printed: compared before → after the change).
    let hits: u32 = std::env::var("FOD_HITS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let (started, cpu) = (Instant::now(), cpu_time());
    for i in 0..hits {
        assert_eq!(
            remote(i as usize % KEYS).await,
            1000 + (i as usize % KEYS) as u64
        );
    }
    eprintln!(
        "plain Redis hit, sequential: {:?} per call, {:?} of this process's CPU",
        started.elapsed() / hits,
        (cpu_time() - cpu) / hits
    );
    assert_eq!(runs("remote"), KEYS as u64, "warm keys are hits");
    if only_hits {
        return;
    }

    // Another application flushes database 1 every 50 ms while the caches are read.
    let other = node.client_in(1);
    let opened = connections_received(&mut own);
    let infos = info_calls(&mut own);
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = flush_in_a_loop(other, stop.clone());
    let reads = read_for(FOR, 4, 1).await;
    stop.store(true, SeqCst);
    let flushes = flusher.join().expect("flusher");
    let (ran, lock_ran) = (runs("remote") - KEYS as u64, runs("locked") - KEYS as u64);
    let opened = connections_received(&mut own) - opened;
    // Less the two `INFO` of the test's own.
    let judged = info_calls(&mut own) - 2;
    eprintln!(
        "{flushes} flushes of database 1 every {EVERY:?}: {reads} reads, the body ran for \
         {} ({:.2} %), {opened} connections opened, {} INFO",
        ran + lock_ran,
        100.0 * (ran + lock_ran) as f64 / reads as f64,
        judged - infos
    );
    assert!(flushes >= 20, "{flushes} flushes");
    assert_eq!(
        (ran, lock_ran),
        (0, 0),
        "a warm key ran its body again during {flushes} flushes of another database"
    );
    assert_eq!(
        opened, 0,
        "connections reopened for a flush of another database"
    );
    // Each flush was noticed (its null push) and judged on the live connection.
    assert!(
        judged - infos >= flushes / 2,
        "{} judgements for {flushes} flushes",
        judged - infos
    );

    // A flush of *our* database is a loss: nothing kept survives it (here: the kept ticket
    // of a value whose old envelope a late store writes back after the flush, without its
    // ticket), the record is gone, so the connections are reopened and it is written again.
    let (value_key, _, _) = cache_runtime::key::redis_keys(
        "fod",
        remote_cache()
            .key_schema()
            .expect("a cache with a Redis tier"),
        "fod:0",
    );
    let record = "{fod:scopes}:server";
    let old: Vec<u8> = redis::cmd("GET")
        .arg(&value_key)
        .query(&mut own)
        .expect("GET");
    assert!(redis::cmd("EXISTS")
        .arg(record)
        .query::<bool>(&mut own)
        .expect("EXISTS"));
    assert_eq!(remote(0).await, 1000, "a hit, its ticket kept");
    VERSION.store(2, SeqCst);
    let opened = connections_received(&mut own);
    redis::cmd("FLUSHDB")
        .query::<()>(&mut own)
        .expect("FLUSHDB");
    redis::cmd("SET")
        .arg(&value_key)
        .arg(&old)
        .query::<()>(&mut own)
        .expect("SET");
    assert_eq!(
        remote(0).await,
        2000,
        "the old value served after our flush"
    );
    assert_eq!(
        locked(0).await,
        2500,
        "the old value served after our flush"
    );
    assert!(
        connections_received(&mut own) > opened,
        "the connections are reopened after a flush of our database"
    );
    let recorded: Option<String> = redis::cmd("GET").arg(record).query(&mut own).expect("GET");
    let run_id = node.info_field("run_id").expect("run_id");
    let replid = node.info_field("master_replid").expect("master_replid");
    assert_eq!(
        recorded,
        Some(format!("{run_id}/{replid}")),
        "the server judged again and recorded after the flush"
    );
    read_for(Duration::from_millis(300), 2, 2).await;

    // And a flush of another database still judges in place afterwards. Every key warm
    // again first: read once each, and its value stored (a store lands after its call
    // returns). 300 ms of reading does not reach every key on a loaded machine, and a key
    // first read in the next phase ran its body there (5 of 16 keys of each cache, once).
    for id in 0..KEYS {
        assert_eq!(remote(id).await, 2000 + id as u64);
        assert_eq!(locked(id).await, 2500 + id as u64);
    }
    cache_tests::eventually(Duration::from_secs(10), "every value stored again", || {
        all_stored(&node)
    })
    .await;
    let (ran, lock_ran) = (runs("remote"), runs("locked"));
    let other = node.client_in(3);
    let opened = connections_received(&mut own);
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = flush_in_a_loop(other, stop.clone());
    read_for(Duration::from_secs(1), 4, 2).await;
    stop.store(true, SeqCst);
    flusher.join().expect("flusher");
    assert_eq!((runs("remote"), runs("locked")), (ran, lock_ran));
    assert_eq!(connections_received(&mut own), opened);

    // A rollback by resync while another database is flushed every 50 ms: the resync's null
    // push is not judged in place (the replication id changed), so nothing invalidated before
    // it is served (as `redis_resync_rollback.rs`, with the flushes going on).
    let older = RedisServer::start();
    older.replicate_from(&node);
    older.promote();
    VERSION.store(3, SeqCst);
    for id in 0..KEYS {
        invalidate_remote(id).await.expect("invalidate");
        invalidate_locked(id).await.expect("invalidate");
        if id % 2 == 0 {
            assert_eq!(remote(id).await, 3000 + id as u64);
            assert_eq!(locked(id).await, 3500 + id as u64);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = flush_in_a_loop(node.client_in(1), stop.clone());
    let run_id = node.info_field("run_id");
    node.replicate_from(&older);
    node.promote();
    assert_eq!(node.info_field("run_id"), run_id, "the same server");
    let restored: Option<Vec<u8>> = node.cmd(&["GET", &value_key]).expect("GET");
    assert!(restored.is_some(), "the older values are back in Redis");
    for round in 0..20 {
        for id in 0..KEYS {
            let what = format!("key {id}, round {round}: a value from before the rollback");
            assert_eq!(locked(id).await, 3500 + id as u64, "{what}");
            assert_eq!(remote(id).await, 3000 + id as u64, "{what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, SeqCst);
    assert!(flusher.join().expect("flusher") > 0);
    // And Redis serves again.
    let ran = runs("remote");
    read_for(Duration::from_millis(500), 2, 3).await;
    let ran_after = runs("remote");
    read_for(Duration::from_millis(300), 2, 3).await;
    assert_eq!(
        runs("remote"),
        ran_after,
        "Redis hits again after the rollback"
    );
    assert!(ran_after >= ran);
}
