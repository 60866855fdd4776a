//! Shared pieces of the benchmark suite (see `docs/BENCHMARKS.md`): the value and keys every
//! bench uses, criterion settings, a harness-started Redis with the cache runtime pointed at
//! it, and a Redis command counter (`INFO commandstats` deltas plus `MONITOR`).
//!
//! The benches themselves are in `benches/benches/*.rs`; `src/bin/bench-report.rs` turns
//! criterion's estimates into the tables and the chart of `docs/BENCHMARKS.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use criterion::Criterion;
use serde::{Deserialize, Serialize};

pub use cache_tests::RedisServer;

pub mod alloc_count;
pub mod stores;

/// The cached value: strings and a `Vec`, about 200 bytes (203 bytes in bincode 2, 201 in
/// postcard, 254 in JSON; the codec bench prints them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The user id.
    pub id: u64,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Free text.
    pub bio: String,
    /// Role names.
    pub roles: Vec<String>,
}

/// The value for `id` (what every benchmarked function body returns).
pub fn profile(id: u64) -> Profile {
    Profile {
        id,
        name: format!("Ada Lovelace #{id}"),
        email: format!("user{id}@example.com"),
        bio: "Analyst, metaphysician and founder of scientific computing; wrote the first \
              published algorithm for the Analytical Engine."
            .to_string(),
        roles: vec!["admin".into(), "editor".into(), "billing-viewer".into()],
    }
}

/// Global key prefix given to `cache_runtime::init` in every bench binary.
pub const KEY_PREFIX: &str = "cb";

/// First id of the key space: 7-digit ids give 20-byte keys.
pub const FIRST_ID: u64 = 1_000_000;

/// The local-tier key our `#[cached(key = "user:profile:<id>")]` builds, and the key of the
/// hand-written and `cached`-crate contenders: `user:profile:1000042` (20 bytes).
pub fn our_key(id: u64) -> String {
    format!("user:profile:{id}")
}

/// Hand-written Redis contenders' key: `hw:w1:v1:user:profile:1000042` (29 bytes). Ours has
/// the `{prefix:bucket}:v2:<schema>:<key>` shape of `cache_runtime::key::redis_keys`, e.g.
/// `{cb:517}:v2:1.3fa9c1:user:profile:1000042` (39 to 42 bytes with `KEY_PREFIX`, by
/// bucket): longer by the hash tag, the wire version and the key schema's digest, which the
/// hand-written code does without.
pub fn hand_key(id: u64) -> String {
    format!("hw:w1:v1:user:profile:{id}")
}

/// Whether criterion measures (`cargo bench`) rather than runs each bench once
/// (`cargo test --benches` / `--all-targets`). Setup sizes its key pools by it.
pub fn bench_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

/// The suite's criterion settings: 1 s warm-up, 3 s measurement, 50 samples, 20 000
/// bootstrap resamples. Short enough for the whole suite to take a few minutes on two cores.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .nresamples(20_000)
}

/// Polls `fut` to completion on this thread with a no-op waker: the cost of the future
/// itself, without an executor's (the `local_hit_future` group; a local hit is ready on its
/// first poll, so the loop never spins there).
pub fn poll_ready<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::hint::spin_loop();
    }
}

/// Runs `iters` calls of `f` split over two threads, each walking `ids` (whose length is a
/// power of two) round-robin from its own offset; the wall time from start to both done.
pub fn two_threads(ids: &[u64], iters: u64, f: &(dyn Fn(u64) -> Profile + Sync)) -> Duration {
    let len = ids.len();
    assert!(
        len.is_power_of_two(),
        "the pattern's length is a power of two"
    );
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let n = iters / 2 + (t < iters % 2) as u64;
            s.spawn(move || {
                let mut i = (t as usize) * len / 2;
                for _ in 0..n {
                    i = (i + 1) & (len - 1);
                    std::hint::black_box(f(std::hint::black_box(ids[i])));
                }
            });
        }
    });
    start.elapsed()
}

/// `n` pseudo-random indices in `0..keys` (xorshift), so every contender reads the same keys
/// in the same order and no RNG runs inside a timed loop.
pub fn access_pattern(n: usize, keys: u64) -> Vec<u64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % keys
        })
        .collect()
}

/// Starts a redis-server on a free loopback port (through the test harness, never the
/// machine's own Redis) and configures the cache runtime to use it with prefix [`KEY_PREFIX`]
/// and the default 100 ms Redis timeout. Once per bench process.
pub fn start_redis() -> &'static RedisServer {
    SERVER.get_or_init(|| {
        let server = RedisServer::start();
        let mut config = cache_runtime::Config::builder()
            .redis_url(server.url())
            .key_prefix(KEY_PREFIX);
        // Under valgrind (scripts/callgrind-hits.sh) everything runs ~50 × slower and one
        // thread at a time: the default 200 ms would time some operations out.
        if let Some(ms) = std::env::var("BENCH_REDIS_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            config = config.redis_timeout(std::time::Duration::from_millis(ms));
        }
        cache_runtime::init(config.build()).expect("the bench configures the cache runtime first");
        server
    })
}

static SERVER: OnceLock<RedisServer> = OnceLock::new();

/// The CPU time (user + system, seconds) the server started by [`start_redis`] has used so
/// far, from its `INFO cpu`; `None` if no server was started. The difference across a loop,
/// per call, is the server's cost of one call: every command, script and reply included,
/// which `INFO commandstats` splits (and counts a script's commands twice).
pub fn server_cpu_seconds() -> Option<f64> {
    let server = SERVER.get()?;
    let mut conn = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connect to the bench's redis-server");
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query(&mut conn)
        .expect("INFO cpu");
    let field = |name: &str| {
        info.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(':')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .expect("INFO cpu field")
    };
    Some(field("used_cpu_user") + field("used_cpu_sys"))
}

/// The URL of the server started by [`start_redis`].
pub fn redis_url() -> String {
    start_redis().url()
}

/// Configures the cache runtime without Redis (local-only benches).
pub fn init_local_only() {
    cache_runtime::init(
        cache_runtime::Config::builder()
            .without_redis()
            .key_prefix(KEY_PREFIX)
            .build(),
    )
    .expect("the bench configures the cache runtime first");
}

/// Redis commands issued during a measured window, per call of the measured operation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommandCount {
    /// Calls of the measured operation in the window.
    pub calls: u64,
    /// `INFO stats` `total_commands_processed` delta (minus our own `INFO`), per call. It
    /// includes the commands a Lua script runs.
    pub processed_per_call: f64,
    /// `INFO commandstats` deltas per command, per call (script-internal commands included).
    pub commandstats_per_call: BTreeMap<String, f64>,
    /// Commands sent by clients, per call, from `MONITOR` (script-internal ones excluded).
    /// With no pipelining this is the number of round trips. `None` if `redis-cli` was not
    /// available.
    pub client_commands_per_call: Option<f64>,
    /// Client commands per command name, per call (`MONITOR`).
    pub client_by_command: BTreeMap<String, f64>,
    /// Server time per call, µs: the `INFO commandstats` `usec` of the commands clients sent
    /// (a script's time includes the commands it ran), measured without `MONITOR` attached.
    /// Excludes network I/O and request parsing.
    pub server_us_per_call: Option<f64>,
    /// Marks `server_us_per_call` as measured without `MONITOR` (older results were not).
    #[serde(default)]
    pub server_time_without_monitor: bool,
}

impl fmt::Display for CommandCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |m: &BTreeMap<String, f64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self.client_commands_per_call {
            Some(c) => write!(
                f,
                "{c:.2} client commands/call [{}]; ",
                list(&self.client_by_command)
            )?,
            None => write!(f, "client commands: n/a (no redis-cli); ")?,
        }
        write!(
            f,
            "{:.2} commands processed/call [{}]; {} server µs/call (over {} calls)",
            self.processed_per_call,
            list(&self.commandstats_per_call),
            self.server_us_per_call
                .map_or("n/a".to_string(), |u| format!("{u:.2}")),
            self.calls
        )
    }
}

/// `total_commands_processed`, and `(calls, usec)` per command.
fn info_snapshot(raw: &mut redis::Connection) -> (u64, BTreeMap<String, (u64, u64)>) {
    let text: String = redis::cmd("INFO")
        .arg("stats")
        .arg("commandstats")
        .query(raw)
        .expect("INFO");
    let mut total = 0;
    let mut per = BTreeMap::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("total_commands_processed:") {
            total = v.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("cmdstat_") {
            let (name, fields) = rest.split_once(':').unwrap_or((rest, ""));
            let field = |k: &str| -> u64 {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(k))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            per.insert(name.to_string(), (field("calls="), field("usec=")));
        }
    }
    (total, per)
}

/// A `redis-cli MONITOR` session, to tell commands sent by clients from those run inside
/// scripts (`[0 lua]`).
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// `addr` of clients that are not part of the measured operation (pub/sub subscribers,
    /// such as the runtime's invalidation bus, which pings once a second).
    background: Vec<String>,
}

const MONITOR_END: &str = "cache-benches-monitor-end";

impl Monitor {
    fn start(port: u16, background: Vec<String>) -> Option<Self> {
        let mut child = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "monitor"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut m = Monitor {
            child,
            lines: rx,
            background,
        };
        match m.lines.recv_timeout(Duration::from_secs(5)) {
            Ok(first) if first.trim() == "OK" => Some(m),
            _ => {
                m.kill();
                None
            }
        }
    }

    /// Commands by name until the end marker: (sent by measured clients, sent by background
    /// clients).
    #[allow(clippy::type_complexity)]
    fn finish(
        mut self,
        raw: &mut redis::Connection,
    ) -> Option<(BTreeMap<String, u64>, BTreeMap<String, u64>)> {
        let _: String = redis::cmd("ECHO").arg(MONITOR_END).query(raw).ok()?;
        let mut client = BTreeMap::new();
        let mut background = BTreeMap::new();
        let result = loop {
            match self.lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains(MONITOR_END) => break Some((client, background)),
                Ok(line) => {
                    // `1700000000.123456 [0 127.0.0.1:40000] "evalsha" "…"` or `[0 lua] "GET" …`
                    let Some((head, rest)) = line.split_once("] ") else {
                        continue;
                    };
                    let addr = head.rsplit(' ').next().unwrap_or("");
                    if addr == "lua" {
                        continue;
                    }
                    let name = rest.split('"').nth(1).unwrap_or("?").to_ascii_lowercase();
                    let into = if self.background.iter().any(|b| b == addr) {
                        &mut background
                    } else {
                        &mut client
                    };
                    *into.entry(name).or_insert(0) += 1;
                }
                Err(_) => break None,
            }
        };
        self.kill();
        result
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Addresses of pub/sub subscribers (`CLIENT LIST` entries with `sub` or `psub` > 0).
fn subscriber_addrs(raw: &mut redis::Connection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(raw)
        .unwrap_or_default();
    list.lines()
        .filter_map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            };
            let subscribed = ["sub", "psub", "ssub"]
                .iter()
                .any(|n| field(n).is_some_and(|v| v != "0"));
            subscribed
                .then(|| field("addr").map(str::to_string))
                .flatten()
        })
        .collect()
}

/// Counts the Redis commands that `run` causes; `run` makes `calls` calls of the operation
/// under test. It runs twice and must do the same work both times (reset whatever would turn
/// the second run into local hits): first with nothing attached, for the `INFO` counters and
/// the server time, then under `MONITOR`, which tells the commands clients send from those
/// scripts run, but slows the server down (a script about five times). Nothing else may talk
/// to the server meanwhile.
pub fn count_commands(server: &RedisServer, calls: u64, mut run: impl FnMut()) -> CommandCount {
    let mut raw = server.client();
    let background_addrs = subscriber_addrs(&mut raw);
    let (t0, s0) = info_snapshot(&mut raw);
    run();
    let (t1, s1) = info_snapshot(&mut raw);
    let monitor = Monitor::start(server.port(), background_addrs);
    run();
    let seen = monitor.and_then(|m| m.finish(&mut raw));
    let per = |n: u64| n as f64 / calls.max(1) as f64;
    let mut commandstats_per_call = BTreeMap::new();
    let usec_delta = |name: &str| {
        let after = s1.get(name).map_or(0, |v| v.1);
        after - s0.get(name).map_or(0, |v| v.1)
    };
    for (name, (after, _)) in &s1 {
        let before = s0.get(name).map_or(0, |v| v.0);
        let mut d = after - before;
        if name == "info" {
            d = d.saturating_sub(1); // the first snapshot's own INFO
        }
        // The runtime's bus subscriber pings once a second; no measured operation pings.
        if name == "ping" {
            d = 0;
        }
        if d > 0 {
            commandstats_per_call.insert(name.clone(), per(d));
        }
    }
    let (client_commands_per_call, client_by_command, server_us_per_call) = match seen {
        Some((mut c, _)) => {
            c.retain(|_, n| *n > 0);
            let total: u64 = c.values().sum();
            // MONITOR shows `evalsha`; commandstats names subcommands `script|load` etc.
            let usec: u64 = c.keys().map(|k| usec_delta(k)).sum();
            (
                Some(per(total)),
                c.into_iter().map(|(k, v)| (k, per(v))).collect(),
                Some(usec as f64 / calls.max(1) as f64),
            )
        }
        None => (None, BTreeMap::new(), None),
    };
    let pings = s1.get("ping").map_or(0, |v| v.0) - s0.get("ping").map_or(0, |v| v.0);
    CommandCount {
        calls,
        processed_per_call: per((t1 - t0).saturating_sub(1 + pings)),
        commandstats_per_call,
        client_commands_per_call,
        client_by_command,
        server_us_per_call,
        server_time_without_monitor: true,
    }
}

/// Where criterion writes its results (the same rule as criterion's own): `$CRITERION_HOME`,
/// else `$CARGO_TARGET_DIR/criterion`, else the target directory from `cargo metadata`, else
/// `target/criterion`.
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("criterion");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    if let Ok(out) = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
    {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            if let Some(t) = v.get("target_directory").and_then(|t| t.as_str()) {
                return PathBuf::from(t).join("criterion");
            }
        }
    }
    PathBuf::from("target/criterion")
}

/// Prints a fact measured beside the timings (command counts, body runs, sizes) and, in
/// bench mode, records it in `<criterion dir>/cache-benches-facts/<bench>.json` for
/// `bench-report`.
pub fn record_fact(bench: &str, name: &str, value: serde_json::Value) {
    let shown = match &value {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    println!("[fact] {bench} / {name}: {shown}");
    store_fact(bench, name, value);
}

/// [`record_fact`] for a [`CommandCount`].
pub fn record_commands(bench: &str, name: &str, count: &CommandCount) {
    println!("[fact] {bench} / {name}: {count}");
    store_fact(
        bench,
        name,
        serde_json::to_value(count).expect("serializable"),
    );
}

fn store_fact(bench: &str, name: &str, value: serde_json::Value) {
    if !bench_mode() {
        return;
    }
    let dir = criterion_dir().join("cache-benches-facts");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{bench}.json"));
    let mut map: BTreeMap<String, serde_json::Value> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    map.insert(name.to_string(), value);
    if let Ok(text) = serde_json::to_string_pretty(&map) {
        let _ = std::fs::write(&path, text);
    }
}

/// What `calls` calls cost this process (all its threads, not the redis-server child), per
/// call: wall time, CPU time (user + system) and context switches, from `getrusage`, and
/// heap allocations ([`alloc_count`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessCost {
    /// Calls measured.
    pub calls: u64,
    /// Wall time per call, µs.
    pub wall_us: f64,
    /// CPU time of the bench process per call, µs (every thread: callers, runtimes, ours'
    /// Redis thread).
    pub cpu_us: f64,
    /// Voluntary context switches per call (a thread blocked, e.g. to wait for a wake-up).
    pub voluntary_switches: f64,
    /// Involuntary context switches per call (a thread was preempted).
    pub involuntary_switches: f64,
    /// Heap allocations per call, every thread of the process ([`alloc_count`]).
    #[serde(default)]
    pub allocs: f64,
}

impl fmt::Display for ProcessCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.3} µs wall, {:.3} µs CPU, {:.2} voluntary + {:.2} involuntary context switches, \
             {:.1} allocations per call (over {} calls)",
            self.wall_us,
            self.cpu_us,
            self.voluntary_switches,
            self.involuntary_switches,
            self.allocs,
            self.calls
        )
    }
}

fn rusage() -> libc::rusage {
    // SAFETY: getrusage writes into the zeroed struct we own.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        r
    }
}

fn tv_us(t: libc::timeval) -> f64 {
    t.tv_sec as f64 * 1e6 + t.tv_usec as f64
}

/// Measures the [`ProcessCost`] of `run`, which makes `calls` calls.
pub fn process_cost(calls: u64, run: impl FnOnce()) -> ProcessCost {
    let (r0, t0) = (rusage(), std::time::Instant::now());
    let ((), allocs) = alloc_count::counted(run);
    let (r1, wall) = (rusage(), t0.elapsed());
    let n = calls.max(1) as f64;
    let cpu = |r: &libc::rusage| tv_us(r.ru_utime) + tv_us(r.ru_stime);
    ProcessCost {
        calls,
        wall_us: wall.as_secs_f64() * 1e6 / n,
        cpu_us: (cpu(&r1) - cpu(&r0)) / n,
        voluntary_switches: (r1.ru_nvcsw - r0.ru_nvcsw) as f64 / n,
        involuntary_switches: (r1.ru_nivcsw - r0.ru_nivcsw) as f64 / n,
        allocs: allocs as f64 / n,
    }
}

/// The [`ProcessCost`] of `calls` calls of `call`, one after another on the runtime `rt`;
/// `k` is the call's index (`0..calls`) and each result goes through `black_box`. A macro
/// rather than a function: the call may borrow (a connection) and await, and no future is
/// boxed (the allocations counted are the contender's own).
///
/// ```
/// let rt = cache_benches::current_thread_runtime();
/// let cost = cache_benches::sequential_cost!(rt, 10, |k| async { k * 2 }.await);
/// assert_eq!(cost.calls, 10);
/// ```
#[macro_export]
macro_rules! sequential_cost {
    ($rt:expr, $calls:expr, |$k:ident| $call:expr) => {{
        let calls: u64 = $calls;
        $crate::process_cost(calls, || {
            $rt.block_on(async {
                for $k in 0..calls {
                    ::std::hint::black_box($call);
                }
            })
        })
    }};
}

/// [`record_fact`] for a [`ProcessCost`].
pub fn record_cost(bench: &str, name: &str, cost: &ProcessCost) {
    println!("[fact] {bench} / {name}: {cost}");
    store_fact(
        bench,
        name,
        serde_json::to_value(cost).expect("serializable"),
    );
}

/// One `PING` on a redis-rs connection: the round-trip reference measured beside each Redis
/// benchmark.
pub async fn raw_ping(conn: &mut redis::aio::ConnectionManager) {
    let _: String = redis::cmd("PING").query_async(conn).await.expect("PING");
}

/// A current-thread Tokio runtime (the callers' runtime in the Redis benches).
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A multi-thread Tokio runtime with two workers (this machine has two cores).
pub fn two_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The hand-written bus's channel (see [`hand_bus_subscriber`]).
pub const HAND_BUS_CHANNEL: &str = "hw:bus:1";

/// A hand-written invalidation bus for this process, as a developer would add one beside a
/// `DEL` so that other processes drop their local copies: a RESP3 connection subscribed to
/// [`HAND_BUS_CHANNEL`] on a thread of its own (as ours: the runtime's Redis thread), whose
/// push callback reads each message and drops it. Started once; returns when subscribed.
/// Like ours, it receives its own process's `PUBLISH`es: Redis delivers a message to every
/// subscriber of the channel, the publisher's own subscription included.
pub fn hand_bus_subscriber() {
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    STARTED.get_or_init(|| {
        let url = format!("{}?protocol=resp3", redis_url());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("hand-bus".into())
            .spawn(move || {
                current_thread_runtime().block_on(async move {
                    let client = redis::Client::open(url).expect("redis url");
                    let config = redis::AsyncConnectionConfig::new().set_push_sender(
                        |info: redis::PushInfo| {
                            if let Some(redis::Value::BulkString(payload)) = info.data.get(1) {
                                std::hint::black_box(payload.len());
                            }
                            Ok::<(), std::convert::Infallible>(())
                        },
                    );
                    let mut conn = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .expect("the hand-written bus connects");
                    conn.subscribe(HAND_BUS_CHANNEL)
                        .await
                        .expect("the hand-written bus subscribes");
                    ready_tx.send(()).expect("waiting for the subscription");
                    // Held for the life of the process.
                    std::future::pending::<()>().await;
                    drop(conn);
                })
            })
            .expect("hand-bus thread");
        ready_rx.recv().expect("the hand-written bus subscribed");
    });
}

/// Hand-written invalidation with a bus message: one pipeline, `DEL` + `PUBLISH` of a
/// message shaped like ours (origin, action, time sent, key; the same length), as the
/// hand-written equivalent of ours' guarantee (the `DEL` and the message, one round trip).
/// [`hand_bus_subscriber`] must be running for the message to be delivered as ours are.
pub async fn hand_del_publish(conn: &mut redis::aio::ConnectionManager, id: u64) {
    let target = format!("user:profile:{id}\u{1f}0");
    hand_del_publish_of(conn, &hand_key(id), 'I', &target).await;
}

/// [`hand_del_publish`] of any key: `DEL key` + `PUBLISH` of a message shaped like ours
/// (origin, `action`, time sent, `target`), one pipeline.
pub async fn hand_del_publish_of(
    conn: &mut redis::aio::ConnectionManager,
    key: &str,
    action: char,
    target: &str,
) {
    let (deleted, receivers): (i64, i64) = redis::pipe()
        .cmd("DEL")
        .arg(key)
        .cmd("PUBLISH")
        .arg(HAND_BUS_CHANNEL)
        .arg(hand_bus_message(action, target).0)
        .query_async(conn)
        .await
        .expect("DEL + PUBLISH");
    std::hint::black_box((deleted, receivers));
}

/// A bus message shaped like ours (origin, `action`, time sent, `target`), and its time sent
/// (µs since the epoch).
fn hand_bus_message(action: char, target: &str) -> (String, u128) {
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let message = format!("C1\u{1f}00000000deadbeef\u{1f}{action}\u{1f}{sent}\u{1f}{target}");
    (message, sent)
}

/// A bus channel no process subscribes to: [`hand_invalidate_protocol`]'s, as ours in a
/// process that does not subscribe (no echo).
pub const HAND_UNHEARD_CHANNEL: &str = "hw:bus:unheard";

/// Hand-written, what our invalidation of a key sends in a process that does not subscribe
/// (docs/PROTOCOL.md §7.4): `DEL value ticket`, `PUBLISH` of a message shaped like ours (to a
/// channel nobody in the process hears), `SET ticket <16 hex digits> PX 600000`, one
/// pipeline: the protocol's cost without our code.
pub async fn hand_invalidate_protocol(conn: &mut redis::aio::ConnectionManager, id: u64) {
    let key = hand_key(id);
    let ticket_key = format!("{key}:t");
    let (message, sent) = hand_bus_message('I', &format!("user:profile:{id}\u{1f}0"));
    let (deleted, receivers, ()): (i64, i64, ()) = redis::pipe()
        .cmd("DEL")
        .arg(&key)
        .arg(&ticket_key)
        .cmd("PUBLISH")
        .arg(HAND_UNHEARD_CHANNEL)
        .arg(message)
        .cmd("SET")
        .arg(&ticket_key)
        .arg(format!("{:016x}", sent as u64 ^ 0x9e37_79b9_7f4a_7c15))
        .arg("PX")
        .arg(600_000)
        .query_async(conn)
        .await
        .expect("DEL + PUBLISH + SET");
    std::hint::black_box((deleted, receivers));
}

/// Hand-written: `GET`, then bincode 2 (standard, serde) decode. A miss fills like ours
/// (body, encode, `SET PX`) but the benchmark only reads warm keys.
pub async fn hand_redis_get(conn: &mut redis::aio::ConnectionManager, id: u64) -> Profile {
    let key = hand_key(id);
    let bytes: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&key)
        .query_async(conn)
        .await
        .expect("GET");
    if let Some(b) = bytes {
        if let Ok((v, _)) = bincode::serde::decode_from_slice(&b, bincode::config::standard()) {
            return v;
        }
    }
    let v = profile(id);
    let b = bincode::serde::encode_to_vec(&v, bincode::config::standard()).expect("encode");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(b)
        .arg("PX")
        .arg(300_000)
        .query_async(conn)
        .await
        .expect("SET");
    v
}
