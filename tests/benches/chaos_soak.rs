//! Chaos soak across two OS processes (issue 11): a reader process and a writer process share
//! one cache Redis through `local+redis` caches while Redis misbehaves, and every value the
//! reader gets is checked against the source of truth and the writer's `Ok` invalidations.
//!
//! `cargo bench -p cache-tests --bench chaos_soak` runs 60 s; `cargo test` runs a 10 s smoke
//! version (`CHAOS_SECS` overrides both).
//!
//! - The **source of truth** is a second `redis-server` (`db:<id>` = the row's version), so
//!   flushing or restarting the cache Redis never touches it.
//! - The **writer** (this binary re-executed with `CHAOS_ROLE=writer`) loops: bump a row,
//!   then invalidate it (`invalidate_item`, or `invalidate_tag("k:<id>")` every third time);
//!   when that returned `Ok` it records the version and the instant (`settled:<id>` =
//!   `version µs`) in the source Redis.
//! - The **reader** (this process, 16 tasks) reads `settled:<id>` before each call; a value
//!   older than a version settled more than the bus window before the call started is
//!   **wrong**. A value older than a version settled less than that before is stale within
//!   the window (allowed for local copies, docs/PROTOCOL.md §5.4): counted and its age kept.
//! - The **chaos** thread, every 0.5–1 s, does one of: `CLIENT KILL TYPE pubsub` (both
//!   processes lose their subscriptions), `CLIENT KILL TYPE normal` (their data and tracked
//!   connections, as an idle `timeout` or a proxy closes them), `FLUSHALL`, `FLUSHDB`, an empty restart, a
//!   restart from an RDB snapshot taken 200 ms before (`SAVE`, then `kill -9`), a 300 ms
//!   SIGSTOP, `DEL` of every ticket or every scope token, or memory pressure with
//!   `allkeys-random` eviction. `CHAOS_FAULTS=kill-pubsub,flushall` picks some of them and
//!   `CHAOS_PERIOD_MS=100` fixes the period (e.g. to measure the staleness window under
//!   repeated subscriber drops).
//! - `CHAOS_SENTINEL=1`: the cache Redis is a Sentinel set (1 master, 1 replica, 3
//!   sentinels) that both processes reach through the sentinels; the faults hit the current
//!   master and a `SENTINEL FAILOVER` joins the rotation.
//! - `CHAOS_REDIS_ONLY=1`: both processes cache with `tier = "redis"` instead (no local
//!   copies: every call reads Redis; on a single node neither process subscribes).
//! - `CHAOS_LOCK=1`: the caches take the key's lock on a miss (`lock = true`), so their
//!   reads are the lock script's while most of them miss.
//! - `CHAOS_CALLER=blocking`: both processes call blocking `fn`s (reads and key and tag
//!   invalidations) from Tokio's blocking threads, each of which gets a connection of its
//!   own after a few calls; the source is read on a synchronous connection per thread.
//! - `CHAOS_CLUSTER=1`: the cache Redis is a Redis Cluster (3 masters, each with a replica;
//!   node timeout 1 s); each fault hits the next master in turn (restarts and pauses end
//!   within the node timeout, so the restarted master serves its slots again, with an empty
//!   or a restored data set), and a `CLUSTER FAILOVER` (a replica taking over its master's
//!   slots) joins the rotation.
//!
//! The run fails on any wrong value or any error surfaced to a caller.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cache_runtime::{bus_status, cached, Config, BUS_WINDOW};
use cache_tests::{RedisCluster, RedisOptions, RedisServer, SentinelSet};

const KEYS: u64 = 200;
/// Scheduling slack between the two processes' clocks and threads, on top of the window.
const SLACK: Duration = Duration::from_millis(100);

static SOURCE: OnceLock<redis::aio::MultiplexedConnection> = OnceLock::new();

fn source() -> redis::aio::MultiplexedConnection {
    SOURCE.get().expect("source connection").clone()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The caches under test, each as an `async fn` and as a blocking `fn` (`CHAOS_CALLER`):
/// `local+redis` and, with `CHAOS_REDIS_ONLY=1`, `redis` (no local tier: every call reads
/// Redis; on a single node neither process then subscribes to the bus, docs/PROTOCOL.md
/// §5.2, and concurrent calls of a key share flights that vouch for their values with the
/// store, §13 F9); with `CHAOS_LOCK=1`, `lock = true` (a miss takes the key's lock, and its
/// reads are the lock script's while most of them miss).
macro_rules! caches {
    ($($name:ident, $blocking:ident: ($($attr:tt)*);)*) => {$(
        #[cached($($attr)*, ttl = 30, key = "chaos:<id>", tags = ["k:<id>"])]
        async fn $name(id: u64) -> Result<u64, String> {
            query(id).await
        }

        #[cached($($attr)*, ttl = 30, key = "chaos:<id>", tags = ["k:<id>"])]
        fn $blocking(id: u64) -> Result<u64, String> {
            query_blocking(id)
        }
    )*};
}

caches! {
    item, item_b: (tier = "local+redis", local_ttl = 5);
    item_redis, item_redis_b: (tier = "redis");
    item_lock, item_lock_b: (tier = "local+redis", local_ttl = 5, lock = true);
    item_redis_lock, item_redis_lock_b: (tier = "redis", lock = true);
}

/// Which of [`caches!`]'s both processes use: `CHAOS_REDIS_ONLY`, `CHAOS_LOCK` and
/// `CHAOS_CALLER=blocking` (the writer process inherits them).
#[derive(Clone, Copy, Debug)]
struct Variant {
    redis_only: bool,
    lock: bool,
    blocking: bool,
}

fn variant() -> Variant {
    static SET: std::sync::OnceLock<Variant> = std::sync::OnceLock::new();
    *SET.get_or_init(|| Variant {
        redis_only: std::env::var_os("CHAOS_REDIS_ONLY").is_some(),
        lock: std::env::var_os("CHAOS_LOCK").is_some(),
        blocking: match std::env::var("CHAOS_CALLER").as_deref() {
            Ok("blocking") => true,
            Ok("async") | Err(_) => false,
            Ok(other) => panic!("CHAOS_CALLER={other}: `async` or `blocking`"),
        },
    })
}

impl Variant {
    fn describe(self) -> String {
        format!(
            "tier {}{}, {} callers",
            if self.redis_only {
                "redis"
            } else {
                "local+redis"
            },
            if self.lock { ", lock = true" } else { "" },
            if self.blocking {
                "blocking (`fn` on blocking threads)"
            } else {
                "async"
            },
        )
    }

    fn stats(self) -> cache_runtime::Stats {
        match (self.redis_only, self.lock, self.blocking) {
            (false, false, false) => item_cache().stats(),
            (true, false, false) => item_redis_cache().stats(),
            (false, true, false) => item_lock_cache().stats(),
            (true, true, false) => item_redis_lock_cache().stats(),
            (false, false, true) => item_b_cache().stats(),
            (true, false, true) => item_redis_b_cache().stats(),
            (false, true, true) => item_lock_b_cache().stats(),
            (true, true, true) => item_redis_lock_b_cache().stats(),
        }
    }
}

/// A blocking call, off the runtime's workers (each blocking thread of the pool calls many
/// times: it gets a connection of its own after a few calls, `redis_tier/blocking_conn.rs`).
async fn on_blocking_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking call")
}

async fn read(id: u64) -> Result<u64, String> {
    let v = variant();
    match (v.redis_only, v.lock, v.blocking) {
        (false, false, false) => item(id).await,
        (true, false, false) => item_redis(id).await,
        (false, true, false) => item_lock(id).await,
        (true, true, false) => item_redis_lock(id).await,
        (false, false, true) => on_blocking_thread(move || item_b(id)).await,
        (true, false, true) => on_blocking_thread(move || item_redis_b(id)).await,
        (false, true, true) => on_blocking_thread(move || item_lock_b(id)).await,
        (true, true, true) => on_blocking_thread(move || item_redis_lock_b(id)).await,
    }
}

async fn invalidate(id: u64) -> Result<(), cache_runtime::CacheError> {
    let v = variant();
    match (v.redis_only, v.lock, v.blocking) {
        (false, false, false) => invalidate_item(id).await,
        (true, false, false) => invalidate_item_redis(id).await,
        (false, true, false) => invalidate_item_lock(id).await,
        (true, true, false) => invalidate_item_redis_lock(id).await,
        (false, false, true) => on_blocking_thread(move || invalidate_item_b(id)).await,
        (true, false, true) => on_blocking_thread(move || invalidate_item_redis_b(id)).await,
        (false, true, true) => on_blocking_thread(move || invalidate_item_lock_b(id)).await,
        (true, true, true) => on_blocking_thread(move || invalidate_item_redis_lock_b(id)).await,
    }
}

async fn invalidate_tag(tag: String) -> Result<(), cache_runtime::CacheError> {
    match variant().blocking {
        false => cache_runtime::invalidate_tag(&tag).await,
        true => on_blocking_thread(move || cache_runtime::invalidate_tag_blocking(&tag)).await,
    }
}

/// The source's URL, for the blocking callers' connections.
static SOURCE_URL: OnceLock<String> = OnceLock::new();

/// The source's row for a blocking caller: a 200 µs query on its thread's own connection.
fn query_blocking(id: u64) -> Result<u64, String> {
    thread_local! {
        static CONN: std::cell::RefCell<Option<redis::Connection>> = const { std::cell::RefCell::new(None) };
    }
    std::thread::sleep(Duration::from_micros(200));
    CONN.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            let url = SOURCE_URL.get().expect("source url");
            let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
            *c = Some(client.get_connection().map_err(|e| e.to_string())?);
        }
        let res = redis::cmd("GET")
            .arg(format!("db:{id}"))
            .query::<Option<u64>>(c.as_mut().expect("connected"));
        if res.is_err() {
            *c = None;
        }
        res.map(|v| v.unwrap_or(0)).map_err(|e| e.to_string())
    })
}

/// The source's row: a 200 µs query.
async fn query(id: u64) -> Result<u64, String> {
    tokio::time::sleep(Duration::from_micros(200)).await;
    redis::cmd("GET")
        .arg(format!("db:{id}"))
        .query_async::<Option<u64>>(&mut source())
        .await
        .map(|v| v.unwrap_or(0))
        .map_err(|e| e.to_string())
}

fn skewed(x: u64) -> u64 {
    let u = (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    (KEYS as f64 * u * u) as u64
}

/// Where the cache Redis is: `redis://…`, `sentinel:<name>:<url>,<url>,…`, or
/// `cluster:<url>,<url>,…`.
fn init(cache: &str, source_url: &str, rt: &tokio::runtime::Runtime) {
    let builder = Config::builder()
        .key_prefix("chaos")
        .redis_timeout(Duration::from_millis(100));
    let builder = match (
        cache.strip_prefix("sentinel:"),
        cache.strip_prefix("cluster:"),
    ) {
        (Some(rest), _) => {
            let (name, urls) = rest.split_once(':').expect("sentinel:<name>:<urls>");
            builder.redis_sentinel(urls.split(','), name)
        }
        (_, Some(urls)) => builder.redis_cluster(urls.split(',')),
        _ => builder.redis_url(cache),
    };
    cache_runtime::init(builder.build()).unwrap();
    let _ = SOURCE_URL.set(source_url.to_string());
    let client = redis::Client::open(source_url).unwrap();
    let conn = rt
        .block_on(client.get_multiplexed_async_connection())
        .expect("the source redis");
    let _ = SOURCE.set(conn);
}

/// The writer process: bump, invalidate, record what returned Ok.
fn writer(total: Duration) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    init(
        &std::env::var("CHAOS_CACHE_URL").unwrap(),
        &std::env::var("CHAOS_SOURCE_URL").unwrap(),
        &rt,
    );
    let (ok, err) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    rt.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for task in 0..2u64 {
            let (ok, err) = (ok.clone(), err.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = task * 7_000_003;
                while start.elapsed() < total {
                    i += 1;
                    // Writers touch the popular keys too.
                    let id = skewed(i);
                    let v: u64 = redis::cmd("INCR")
                        .arg(format!("db:{id}"))
                        .query_async(&mut source())
                        .await
                        .expect("the source redis");
                    // Reads of this key in this process fill the cache meanwhile.
                    let _ = read(id).await;
                    let res = if i % 3 == 0 {
                        invalidate_tag(format!("k:{id}")).await
                    } else {
                        invalidate(id).await
                    };
                    match res {
                        Ok(()) => {
                            ok.fetch_add(1, SeqCst);
                            // `settled:<id>` = "version µs", only ever raised.
                            let _: () = redis::Script::new(
                                r"
local cur = redis.call('GET', KEYS[1])
if not cur or tonumber(string.match(cur, '^(%d+)')) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2])
end",
                            )
                            .key(format!("settled:{id}"))
                            .arg(v)
                            .arg(now_us())
                            .invoke_async(&mut source())
                            .await
                            .expect("the source redis");
                        }
                        Err(e) => {
                            // Kept and retried by the runtime; the first few are shown.
                            if err.fetch_add(1, SeqCst) < 5 {
                                println!("writer: an invalidation returned Err: {e}");
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    println!(
        "writer: {} invalidations returned Ok, {} returned Err",
        ok.load(SeqCst),
        err.load(SeqCst)
    );
}

#[derive(Default)]
struct Tally {
    reads: u64,
    wrong: Vec<String>,
    errors: u64,
    stale_in_window: u64,
    stale_ages_us: Vec<u64>,
}

fn main() {
    let total = match std::env::var("CHAOS_SECS") {
        Ok(s) => Duration::from_secs(s.parse().expect("CHAOS_SECS")),
        Err(_) if std::env::args().any(|a| a == "--bench") => Duration::from_secs(60),
        Err(_) => Duration::from_secs(10),
    };
    if std::env::var("CHAOS_ROLE").as_deref() == Ok("writer") {
        return writer(total);
    }
    // `CHAOS_SENTINEL=1`: the cache Redis is a Sentinel set (1 master, 1 replica, 3
    // sentinels), the faults hit whichever node is master, and failovers join the rotation.
    let options = RedisOptions::new().arg("--maxmemory-samples", "10");
    let cache = Arc::new(if std::env::var_os("CHAOS_SENTINEL").is_some() {
        Cluster::Sentinel(SentinelSet::start_with_options("chaos", options))
    } else if std::env::var_os("CHAOS_CLUSTER").is_some() {
        Cluster::Shards(RedisCluster::start_with(3, options))
    } else {
        Cluster::Single(RedisServer::start_with_options(options))
    });
    let db = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    init(&cache.target(), &db.url(), &rt);
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("CHAOS_ROLE", "writer")
        .env("CHAOS_CACHE_URL", cache.target())
        .env("CHAOS_SOURCE_URL", db.url())
        .env("CHAOS_SECS", total.as_secs().to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the writer process");

    let tally = Arc::new(Mutex::new(Tally::default()));
    let faults = Arc::new(Mutex::new(Vec::<&'static str>::new()));
    rt.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for task in 0..16u64 {
            let tally = tally.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Tally::default();
                let mut i = task * 1_000_003;
                while start.elapsed() < total {
                    i += 1;
                    let id = skewed(i);
                    let settled: Option<String> = redis::cmd("GET")
                        .arg(format!("settled:{id}"))
                        .query_async(&mut source())
                        .await
                        .expect("the source redis");
                    let started = now_us();
                    let (must, at) = settled
                        .and_then(|s| {
                            let (v, t) = s.split_once(' ')?;
                            Some((v.parse::<u64>().ok()?, t.parse::<u64>().ok()?))
                        })
                        .unwrap_or((0, 0));
                    mine.reads += 1;
                    match read(id).await {
                        Ok(v) if v >= must => {}
                        Ok(v) => {
                            let age = started.saturating_sub(at);
                            if age > (BUS_WINDOW + SLACK).as_micros() as u64 {
                                mine.wrong.push(format!(
                                    "key {id}: got version {v}, but {must} was settled {age} µs before the read started (bus {:?})",
                                    bus_status()
                                ));
                            } else {
                                mine.stale_in_window += 1;
                                mine.stale_ages_us.push(age);
                            }
                        }
                        Err(_) => mine.errors += 1,
                    }
                }
                let mut t = tally.lock().unwrap();
                t.reads += mine.reads;
                t.errors += mine.errors;
                t.stale_in_window += mine.stale_in_window;
                t.wrong.extend(mine.wrong);
                t.stale_ages_us.extend(mine.stale_ages_us);
            }));
        }
        let (c, f) = (cache.clone(), faults.clone());
        let chaos = tokio::task::spawn_blocking(move || chaos(&c, total, &f));
        for t in tasks {
            t.await.unwrap();
        }
        chaos.await.unwrap();
    });
    let out = child.wait_with_output().expect("the writer process");
    assert!(out.status.success(), "the writer process failed");
    let writer_line = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let mut t = std::mem::take(&mut *tally.lock().unwrap());
    t.stale_ages_us.sort_unstable();
    let faults = faults.lock().unwrap().clone();
    let stats = variant().stats();
    println!(
        "chaos soak: {total:?}, reader process 16 tasks, writer process 2 tasks, {KEYS} keys (skewed), {}",
        variant().describe()
    );
    let mut counts: Vec<(&str, usize)> = FAULTS
        .iter()
        .map(|f| (*f, faults.iter().filter(|x| *x == f).count()))
        .filter(|(_, n)| *n > 0)
        .collect();
    counts.sort();
    println!("faults ({}): {counts:?}", faults.len());
    println!("{writer_line}");
    let pct = |p: f64| {
        let l = &t.stale_ages_us;
        if l.is_empty() {
            0
        } else {
            l[((l.len() - 1) as f64 * p).round() as usize]
        }
    };
    println!(
        "reader: {} reads, wrong values: {}, errors surfaced: {}, stale within the {:?} window: {} (age after the Ok: p50 {} µs, p99 {} µs, max {} µs)",
        t.reads,
        t.wrong.len(),
        t.errors,
        BUS_WINDOW,
        t.stale_in_window,
        pct(0.5),
        pct(0.99),
        t.stale_ages_us.last().copied().unwrap_or(0)
    );
    println!(
        "reader cache: {} local hits, {} redis hits, {} body runs, {} redis errors ({} of them timeouts), {} stale rejected; bus {:?}",
        stats.local_hits,
        stats.redis_hits,
        stats.body_calls,
        stats.redis_errors,
        stats.redis_timeouts,
        stats.stale_rejected,
        bus_status()
    );
    assert!(faults.len() >= 4, "the chaos ran: {faults:?}");
    assert!(
        writer_line.contains("returned Ok") && !writer_line.starts_with("writer: 0 "),
        "the writer's invalidations went through: {writer_line}"
    );
    assert!(
        t.wrong.is_empty(),
        "{} wrong values, e.g. {:?}",
        t.wrong.len(),
        &t.wrong[..t.wrong.len().min(5)]
    );
    assert_eq!(t.errors, 0, "errors surfaced to callers");
}

/// The cache Redis: one server, a Sentinel set, or a Redis Cluster.
enum Cluster {
    Single(RedisServer),
    Sentinel(SentinelSet),
    Shards(RedisCluster),
}

impl Cluster {
    /// What `init` takes.
    fn target(&self) -> String {
        match self {
            Cluster::Single(s) => s.url(),
            Cluster::Sentinel(set) => format!(
                "sentinel:{}:{}",
                set.master_name(),
                set.sentinel_urls().join(",")
            ),
            Cluster::Shards(c) => format!("cluster:{}", c.seed_urls().join(",")),
        }
    }

    /// The node the `n`th fault hits: the server, the current master, or a cluster's masters
    /// in turn.
    fn master(&self, n: u64) -> &RedisServer {
        match self {
            Cluster::Single(s) => s,
            Cluster::Sentinel(set) => set.master(),
            Cluster::Shards(c) => {
                let masters = c.masters();
                masters[(n % masters.len() as u64) as usize]
            }
        }
    }

    /// Scope tokens: under `{chaos:scopes}`, or striped over the buckets on a cluster.
    fn scope_pattern(&self) -> &'static str {
        match self {
            Cluster::Shards(_) => "{chaos:*}:s:*",
            _ => "{chaos:scopes}:*",
        }
    }
}

/// The faults, in rotation (`failover` only with `CHAOS_SENTINEL` or `CHAOS_CLUSTER`).
const FAULTS: &[&str] = &[
    "kill-pubsub",
    "kill-normal",
    "flushall",
    "sigstop",
    "del-scopes",
    "restart-empty",
    "restart-snapshot",
    "del-tickets",
    "eviction",
    "flushdb",
    "failover",
];

/// Injects one fault. Best effort: behind Sentinel the node reported as master may be in
/// the middle of a role change (a write then fails with `READONLY`), which is chaos too.
fn inject(cluster: &Cluster, fault: &str, n: u64) {
    let server = cluster.master(n);
    match fault {
        "failover" => match cluster {
            Cluster::Sentinel(set) => {
                set.failover();
            }
            // The replica of the master takes over its slots (`CLUSTER FAILOVER`: in step
            // with the master, no write lost), then the cluster settles.
            Cluster::Shards(c) => {
                let topology = c.topology();
                let master = topology.iter().find(|m| m.port == server.port());
                let replica = master.and_then(|m| {
                    topology
                        .iter()
                        .find(|r| r.master_id.as_deref() == Some(&m.id) && !r.is_failing())
                });
                if let Some(r) = replica {
                    let _ = c.node(r.port).cmd::<()>(&["CLUSTER", "FAILOVER"]);
                    c.wait_healthy();
                }
            }
            Cluster::Single(_) => unreachable!("failover needs CHAOS_SENTINEL or CHAOS_CLUSTER"),
        },
        "kill-pubsub" => {
            let _ = server.cmd::<u64>(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        }
        // Every data and tracked connection closed, as by Redis's idle `timeout` or a proxy.
        "kill-normal" => {
            let _ = server.cmd::<u64>(&["CLIENT", "KILL", "TYPE", "normal"]);
        }
        "flushall" => {
            let _ = server.cmd::<()>(&["FLUSHALL", "SYNC"]);
        }
        "sigstop" => {
            server.pause();
            std::thread::sleep(Duration::from_millis(300));
            server.resume();
        }
        "del-scopes" => {
            for k in server.scan(cluster.scope_pattern()) {
                let _ = server.cmd::<u64>(&["DEL", &k]);
            }
        }
        "restart-empty" => server.restart_empty(),
        // An RDB snapshot, 200 ms of writes, a crash and a restart from the snapshot: the
        // invalidations of those 200 ms are undone in Redis (docs/PROTOCOL.md §8.2).
        "restart-snapshot" => {
            if server.cmd::<()>(&["SAVE"]).is_ok() {
                std::thread::sleep(Duration::from_millis(200));
                server.restart_from_snapshot();
            }
        }
        "del-tickets" => {
            for k in server.scan("{chaos:*}:t:*") {
                let _ = server.cmd::<u64>(&["DEL", &k]);
            }
        }
        "eviction" => {
            let used: u64 = server
                .info_field("used_memory")
                .and_then(|u| u.parse().ok())
                .unwrap_or(0);
            let set = |name: &str, value: &str| {
                let _ = server.cmd::<()>(&["CONFIG", "SET", name, value]);
            };
            set("maxmemory-policy", "allkeys-random");
            set("maxmemory", &used.max(1 << 20).to_string());
            let filler = "f".repeat(1024);
            for i in 0..512 {
                let _ = server.cmd::<()>(&["SET", &format!("filler:{i}"), &filler]);
            }
            set("maxmemory", "0");
        }
        "flushdb" => {
            let _ = server.cmd::<()>(&["FLUSHDB", "SYNC"]);
        }
        other => panic!("unknown fault {other}; known: {FAULTS:?}"),
    }
}

/// One fault every 0.5–1 s (`CHAOS_PERIOD_MS` sets a fixed period), in rotation over
/// `CHAOS_FAULTS` (comma-separated names of [`FAULTS`]; all by default), until the end.
fn chaos(cluster: &Cluster, total: Duration, done: &Mutex<Vec<&'static str>>) {
    let failovers = !matches!(cluster, Cluster::Single(_));
    let chosen: Vec<&'static str> = match std::env::var("CHAOS_FAULTS") {
        Ok(list) => FAULTS
            .iter()
            .copied()
            .filter(|f| list.split(',').any(|x| x == *f))
            .collect(),
        Err(_) => FAULTS
            .iter()
            .copied()
            .filter(|f| failovers || *f != "failover")
            .collect(),
    };
    assert!(!chosen.is_empty(), "CHAOS_FAULTS names none of {FAULTS:?}");
    let period: Option<u64> = std::env::var("CHAOS_PERIOD_MS")
        .ok()
        .map(|p| p.parse().expect("CHAOS_PERIOD_MS"));
    let start = Instant::now();
    let mut n = 0u64;
    // Let both processes warm up first.
    std::thread::sleep(Duration::from_millis(700));
    while start.elapsed() + Duration::from_secs(1) < total {
        let fault = chosen[(n % chosen.len() as u64) as usize];
        inject(cluster, fault, n);
        done.lock().unwrap().push(fault);
        n += 1;
        let pause = period.unwrap_or(500 + (n * 137) % 500);
        std::thread::sleep(Duration::from_millis(pause));
    }
}
