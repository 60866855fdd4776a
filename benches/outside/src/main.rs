//! External perf probe of cache-runtime: `ext-perf <contender> <N>`.
//! Prints on stderr: allocations per call, wall ns per call, Redis commands per call (server-side
//! `INFO commandstats` delta, minus our own INFO), for the measured loop of N calls only.
//! Set-up and warm-up do not depend on N, so callgrind(N=4000) - callgrind(N=1000) / 3000 is
//! the cost of one call.

// The measured calls of `local_u64!` return values (some `Result`s) that it drops.
#![allow(unused_must_use)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::key::KeyPart;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------- counting allocator
struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, s: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        unsafe { System.realloc(p, l, s) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------- values
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub bio: String,
    pub roles: Vec<String>,
}
fn profile(id: u64) -> Profile {
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub id: u64,
    pub name: String,
}
fn items(id: u64) -> Vec<Item> {
    (0..1000).map(|i| Item { id: id * 1000 + i, name: format!("item-{i}") }).collect()
}
fn bytes(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 ^ id) as u8).collect()
}
fn text(id: u64, len: usize) -> String {
    let mut s = format!("{id}:");
    while s.len() < len {
        s.push_str("lorem ipsum dolor sit amet ");
    }
    s.truncate(len);
    s
}

const FIRST: u64 = 1_000_000;
const KEYS: u64 = 1_000;
const BIG_KEYS: u64 = 100;

fn names() -> Vec<String> {
    (0..KEYS).map(|i| format!("customer-name-{:06}", FIRST + i)).collect()
}

#[derive(KeyPart, Clone)]
pub struct Search {
    pub text: String,
    pub page: u32,
    #[key(skip)]
    pub request_id: u64,
}

// ---------------------------------------------------------------- Zipf trace (fixed size)
const TRACE: usize = 1 << 16;
fn zipf_trace(keys: u64, s: f64, seed: u64) -> Vec<u64> {
    let mut cdf = Vec::with_capacity(keys as usize);
    let mut acc = 0.0;
    for k in 1..=keys {
        acc += 1.0 / (k as f64).powf(s);
        cdf.push(acc);
    }
    let total = acc;
    let mut x = seed | 1;
    (0..TRACE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64 * total;
            cdf.partition_point(|&c| c < u) as u64
        })
        .collect()
}

// ---------------------------------------------------------------- redis server
struct Server {
    child: std::process::Child,
    port: u16,
}
impl Server {
    fn start() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let s = Server { child, port };
        for _ in 0..200 {
            if let Ok(mut c) = redis::Client::open(s.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return s;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis did not start");
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    /// command -> (calls, usec); plus "__cpu_us" -> (used_cpu_user+sys in µs, 0)
    fn cmdstats(&self) -> BTreeMap<String, (u64, u64)> {
        let mut c = redis::Client::open(self.url()).unwrap().get_connection().unwrap();
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut c).unwrap();
        let mut m: BTreeMap<String, (u64, u64)> = info
            .lines()
            .filter_map(|l| {
                let l = l.strip_prefix("cmdstat_")?;
                let (name, rest) = l.split_once(':')?;
                let mut it = rest.split(',');
                let calls = it.next()?.strip_prefix("calls=")?.parse().ok()?;
                let usec = it.next()?.strip_prefix("usec=")?.parse().ok()?;
                Some((name.to_string(), (calls, usec)))
            })
            .collect();
        let cpu: String = redis::cmd("INFO").arg("cpu").query(&mut c).unwrap();
        let f = |k: &str| -> f64 {
            cpu.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix(':')?.trim().parse().ok()).unwrap_or(0.0)
        };
        m.insert("__cpu_us".into(), (((f("used_cpu_user") + f("used_cpu_sys")) * 1e6) as u64, 0));
        m
    }
}
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn init_local() {
    cache_runtime::init(cache_runtime::Config::builder().without_redis().key_prefix("xp").build()).unwrap();
}
fn init_redis(s: &Server) {
    cache_runtime::init(
        cache_runtime::Config::builder()
            .redis_url(s.url())
            .key_prefix("xp")
            .redis_timeout(Duration::from_secs(5))
            .build(),
    )
    .unwrap();
}

// ---------------------------------------------------------------- measuring
fn measure(n: u64, server: Option<&Server>, f: impl FnOnce()) {
    let c0 = server.map(|s| s.cmdstats());
    let a0 = ALLOCS.load(Relaxed);
    let t0 = Instant::now();
    f();
    let dt = t0.elapsed();
    let a1 = ALLOCS.load(Relaxed);
    eprintln!("allocs/call: {:.2}", (a1 - a0) as f64 / n as f64);
    eprintln!("wall ns/call: {:.0}", dt.as_nanos() as f64 / n as f64);
    if let (Some(s), Some(c0)) = (server, c0) {
        let c1 = s.cmdstats();
        let mut total = 0.0;
        let mut usec = 0.0;
        let mut parts = vec![];
        for (k, v) in &c1 {
            if k == "__cpu_us" {
                continue;
            }
            let (c0c, c0u) = c0.get(k).copied().unwrap_or((0, 0));
            let d = v.0 - c0c;
            let d = if k == "info" { d.saturating_sub(2) } else { d };
            if d > 0 {
                let per = d as f64 / n as f64;
                if k != "ping" && k != "info" {
                    total += per;
                    usec += (v.1 - c0u) as f64 / n as f64;
                }
                parts.push(format!("{k}={per:.3}"));
            }
        }
        let cpu = (c1["__cpu_us"].0 - c0["__cpu_us"].0) as f64 / n as f64;
        eprintln!("redis cmds/call (excl ping/info): {total:.3}  [{}]", parts.join(" "));
        eprintln!("redis server: cmd usec/call {usec:.2}  cpu usec/call {cpu:.2}");
    }
}

fn rt_current() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn poll_ready<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::hint::spin_loop();
    }
}

fn moka_cache<K, V>(cap: u64) -> moka::sync::Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    moka::sync::Cache::builder().max_capacity(cap).time_to_live(Duration::from_secs(300)).build()
}

// ================================================================= contenders: local tier
// baseline: u64 key, Profile (the project's own local-ours)
#[cache_runtime::cached(ttl = 300, key = "user:profile:<id>")]
fn u64_ours(id: u64) -> Profile {
    profile(id)
}
#[cached::macros::cached(max_size = 10_000, ttl_secs = 300)]
fn u64_cached(id: u64) -> Profile {
    profile(id)
}

// &str key
#[cache_runtime::cached(ttl = 300, key = "user:<name>")]
fn str_ours(name: &str) -> Profile {
    profile(name.len() as u64)
}
#[cached::macros::cached(max_size = 10_000, ttl_secs = 300, key = "String", convert = r#"{ name.to_string() }"#)]
fn str_cached(name: &str) -> Profile {
    profile(name.len() as u64)
}
#[cache_runtime::cached(ttl = 300, key = "user:<name>")]
async fn str_ours_async(name: &str) -> Profile {
    profile(name.len() as u64)
}
#[cached::macros::cached(max_size = 10_000, ttl_secs = 300, key = "String", convert = r#"{ name.to_string() }"#)]
async fn str_cached_async(name: &str) -> Profile {
    profile(name.len() as u64)
}

// String key by value
#[cache_runtime::cached(ttl = 300, key = "user:<name>")]
fn string_ours(name: String) -> Profile {
    profile(name.len() as u64)
}
#[cached::macros::cached(max_size = 10_000, ttl_secs = 300)]
fn string_cached(name: String) -> Profile {
    profile(name.len() as u64)
}

// three arguments
#[cache_runtime::cached(ttl = 300, key = "t:<tenant>:<name>:<page>")]
fn three_ours(tenant: u64, name: &str, page: u32) -> Profile {
    profile(tenant + name.len() as u64 + page as u64)
}
#[cached::macros::cached(
    max_size = 10_000,
    ttl_secs = 300,
    key = "(u64, String, u32)",
    convert = r#"{ (tenant, name.to_string(), page) }"#
)]
fn three_cached(tenant: u64, name: &str, page: u32) -> Profile {
    profile(tenant + name.len() as u64 + page as u64)
}

// struct key
#[cache_runtime::cached(ttl = 300, key = "search:<q>")]
fn struct_ours(q: &Search) -> Profile {
    profile(q.page as u64)
}
#[cached::macros::cached(
    max_size = 10_000,
    ttl_secs = 300,
    key = "(String, u32)",
    convert = r#"{ (q.text.clone(), q.page) }"#
)]
fn struct_cached(q: &Search) -> Profile {
    profile(q.page as u64)
}

// 10 KB Vec<u8> / String, Vec<Item> x1000
#[cache_runtime::cached(ttl = 300, key = "b:<id>")]
fn vec10k_ours(id: u64) -> Vec<u8> {
    bytes(id, 10 * 1024)
}
#[cached::macros::cached(max_size = 10_000, ttl_secs = 300)]
fn vec10k_cached(id: u64) -> Vec<u8> {
    bytes(id, 10 * 1024)
}
#[cache_runtime::cached(ttl = 300, key = "s:<id>")]
fn str10k_ours(id: u64) -> String {
    text(id, 10 * 1024)
}
#[cached::macros::cached(max_size = 10_000, ttl_secs = 300)]
fn str10k_cached(id: u64) -> String {
    text(id, 10 * 1024)
}
#[cache_runtime::cached(ttl = 300, key = "items:<id>")]
fn items_ours(id: u64) -> Vec<Item> {
    items(id)
}
#[cached::macros::cached(max_size = 10_000, ttl_secs = 300)]
fn items_cached(id: u64) -> Vec<Item> {
    items(id)
}

// Result
#[cache_runtime::cached(ttl = 300, key = "r:<id>")]
fn result_ours(id: u64) -> Result<Profile, String> {
    Ok(profile(id))
}
#[cached::macros::cached(max_size = 10_000, ttl_secs = 300)]
fn result_cached(id: u64) -> Result<Profile, String> {
    Ok(profile(id))
}

// churn: capacity 1 000, every call a new key
#[cache_runtime::cached(ttl = 300, capacity = 1000, key = "c:<id>")]
fn churn_ours(id: u64) -> Profile {
    profile(id)
}
#[cached::macros::cached(max_size = 1000, ttl_secs = 300)]
fn churn_cached(id: u64) -> Profile {
    profile(id)
}

// extras on a local hit
#[cache_runtime::cached(ttl = 300, stale = "10m", key = "st:<id>")]
fn stale_ours(id: u64) -> Result<Profile, String> {
    Ok(profile(id))
}
#[cache_runtime::cached(ttl = 300, refresh_ahead = 0.8, key = "ra:<id>")]
async fn ahead_ours(id: u64) -> Profile {
    profile(id)
}
/// `ahead_ours` as generated code would call it with the key on its stack
/// (`Cache::get_or_load_detached_keyed`): a hit builds no owned key.
async fn ahead_keyed_ours(id: u64) -> Profile {
    let cache = ahead_ours_cache();
    let mut w = cache.key_writer();
    w.literal("ra:");
    KeyPart::write_key(&id, &mut w);
    cache
        .get_or_load_detached_keyed::<Profile, cache_runtime::Plain, _, _>(
            w,
            move || async move { profile(id) },
            cache_runtime::Sharing::none(),
        )
        .await
}
#[cache_runtime::cached(ttl = 300, key = "ra0:<id>")]
async fn ahead_base_ours(id: u64) -> Profile {
    profile(id)
}
#[cache_runtime::cached(ttl = 300, etag, key = "en:<id>")]
fn entry_ours(id: u64) -> Profile {
    profile(id)
}
#[cache_runtime::cached(ttl = 300, etag, key = "ena:<id>")]
async fn entry_async_ours(id: u64) -> Profile {
    profile(id)
}
#[cache_runtime::cached(ttl = 300, key = "tg:<id>:<org>", tags = ["user:<id>", "org:<org>", "catalog"])]
fn tagged_ours(id: u64, org: u64) -> Profile {
    profile(id + org)
}

// multi-thread Zipf
#[cache_runtime::cached(ttl = 300, key = "mt:<id>")]
async fn mt_ours(id: u64) -> Profile {
    profile(id)
}
#[cached::macros::cached(max_size = 10_000, ttl_secs = 300)]
async fn mt_cached(id: u64) -> Profile {
    profile(id)
}

// ================================================================= contenders: Redis
#[cache_runtime::cached(tier = "redis", ttl = 300, key = "big:<id>")]
async fn r100k_ours(id: u64) -> Vec<u8> {
    bytes(id, 100 * 1024)
}
#[cache_runtime::cached(tier = "redis", ttl = 300, key = "bigs:<id>")]
async fn r100ks_ours(id: u64) -> String {
    text(id, 100 * 1024)
}
#[cache_runtime::cached(tier = "redis", ttl = 300, key = "user:profile:<id>")]
async fn rhit_ours(id: u64) -> Profile {
    profile(id)
}
#[cache_runtime::cached(tier = "redis", ttl = 300, key = "sy:<id>")]
fn rsync_ours(id: u64) -> Profile {
    profile(id)
}
#[cache_runtime::cached(tier = "redis", ttl = 300, key = "msy:<id>")]
fn rmisssync_ours(id: u64) -> Profile {
    profile(id)
}
#[cache_runtime::cached(tier = "redis", ttl = 300, lock, key = "lk:<id>")]
async fn rlock_ours(id: u64) -> Profile {
    profile(id)
}
#[cache_runtime::cached(tier = "redis", ttl = 300, key = "m:<id>:<org>")]
async fn rmiss_ours(id: u64, org: u64) -> Profile {
    profile(id + org)
}
#[cache_runtime::cached(tier = "redis", ttl = 300, key = "mt3:<id>:<org>", tags = ["user:<id>", "org:<org>", "catalog"])]
async fn rmisstag_ours(id: u64, org: u64) -> Profile {
    profile(id + org)
}
#[cache_runtime::cached(tier = "redis", ttl = 300, key = "ms:<id>:<org>", tags = ["org:<org>", "catalog", "region:<org>"])]
async fn rmisstagshared_ours(id: u64, org: u64) -> Profile {
    profile(id + org)
}
#[cache_runtime::cached(tier = "redis", ttl = 300, key = "ht:<id>:<org>", tags = ["user:<id>", "org:<org>", "catalog"])]
async fn rhittag_ours(id: u64, org: u64) -> Profile {
    profile(id + org)
}
#[cache_runtime::cached(tier = "local+redis", ttl = 300, capacity = 100, key = "pr:<id>")]
async fn promote_ours(id: u64) -> Profile {
    profile(id)
}
#[cache_runtime::cached(tier = "local+redis", ttl = 300, key = "lr:<id>")]
async fn twotier_ours(id: u64) -> Profile {
    profile(id)
}

async fn rival_store<V: Serialize + serde::de::DeserializeOwned + Send + Sync + Clone>(
    prefix: &str,
    url: &str,
) -> cached::AsyncRedisCache<String, V> {
    cached::AsyncRedisCache::builder(prefix)
        .connection_string(url)
        .connection_manager(true)
        .ttl(Duration::from_secs(300))
        .build()
        .await
        .unwrap()
}
static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
#[cached::macros::concurrent_cached(
    ty = "cached::AsyncRedisCache<String, Vec<u8>>",
    create = r#"{ rival_store("cb100k", URL.get().unwrap()).await }"#,
    key = "String",
    convert = r#"{ format!("big:{id}") }"#,
    map_error = r#"|e| format!("{e:?}")"#
)]
async fn r100k_cached(id: u64) -> Result<Vec<u8>, String> {
    Ok(bytes(id, 100 * 1024))
}
#[cached::macros::concurrent_cached(
    ty = "cached::AsyncRedisCache<String, String>",
    create = r#"{ rival_store("cb100ks", URL.get().unwrap()).await }"#,
    key = "String",
    convert = r#"{ format!("bigs:{id}") }"#,
    map_error = r#"|e| format!("{e:?}")"#
)]
async fn r100ks_cached(id: u64) -> Result<String, String> {
    Ok(text(id, 100 * 1024))
}
#[cached::macros::concurrent_cached(
    ty = "cached::AsyncRedisCache<String, Profile>",
    create = r#"{ rival_store("cbm", URL.get().unwrap()).await }"#,
    key = "String",
    convert = r#"{ format!("m:{id}") }"#,
    map_error = r#"|e| format!("{e:?}")"#
)]
async fn rmiss_cached(id: u64, org: u64) -> Result<Profile, String> {
    Ok(profile(id + org))
}

#[cached::macros::concurrent_cached(
    ty = "cached::RedisCache<String, Profile>",
    create = r#"{ cached::RedisCache::builder("csy").connection_string(URL.get().unwrap()).ttl(Duration::from_secs(300)).build().unwrap() }"#,
    key = "String",
    convert = r#"{ format!("sy:{id}") }"#,
    map_error = r#"|e| format!("{e:?}")"#
)]
fn rsync_cached(id: u64) -> Result<Profile, String> {
    Ok(profile(id))
}

#[cached::macros::concurrent_cached(
    ty = "cached::RedisCache<String, Profile>",
    create = r#"{ cached::RedisCache::builder("cmsy").connection_string(URL.get().unwrap()).ttl(Duration::from_secs(300)).build().unwrap() }"#,
    key = "String",
    convert = r#"{ format!("msy:{id}") }"#,
    map_error = r#"|e| format!("{e:?}")"#
)]
fn rmisssync_cached(id: u64) -> Result<Profile, String> {
    Ok(profile(id))
}

/// A hand-written sync hit: `GET`, bincode; on a miss the body and `SET PX`.
fn rsync_hand(c: &mut redis::Connection, id: u64) -> Profile {
    let k = format!("hw:sy:{id}");
    let b: Option<Vec<u8>> = redis::cmd("GET").arg(&k).query(c).unwrap();
    match b {
        Some(b) => bincode::serde::decode_from_slice(&b, bincode::config::standard()).unwrap().0,
        None => {
            let v = profile(id);
            let b = bincode::serde::encode_to_vec(&v, bincode::config::standard()).unwrap();
            let _: () = redis::cmd("SET").arg(&k).arg(b).arg("PX").arg(300_000).query(c).unwrap();
            v
        }
    }
}

type Conn = redis::aio::ConnectionManager;
async fn hand_get<V: serde::de::DeserializeOwned>(conn: &mut Conn, key: &str) -> Option<V> {
    let b: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
    b.map(|b| bincode::serde::decode_from_slice(&b, bincode::config::standard()).unwrap().0)
}
async fn hand_set<V: Serialize>(conn: &mut Conn, key: &str, v: &V) {
    let b = bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap();
    let _: () = redis::cmd("SET").arg(key).arg(b).arg("PX").arg(300_000).query_async(conn).await.unwrap();
}
async fn hand_cached<V: Serialize + serde::de::DeserializeOwned>(
    conn: &mut Conn,
    key: &str,
    body: impl FnOnce() -> V,
) -> V {
    if let Some(v) = hand_get(conn, key).await {
        return v;
    }
    let v = body();
    hand_set(conn, key, &v).await;
    v
}

// ================================================================= metrics recorder
struct Rec;
struct Hist(AtomicU64);
impl metrics::HistogramFn for Hist {
    fn record(&self, v: f64) {
        self.0.fetch_add(v as u64, Relaxed);
    }
}
impl metrics::Recorder for Rec {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(Arc::new(AtomicU64::new(0)))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(Arc::new(AtomicU64::new(0)))
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::from_arc(Arc::new(Hist(AtomicU64::new(0))))
    }
}

// ================================================================= main
fn ids(n: u64, keys: u64) -> impl Iterator<Item = u64> {
    (0..n).map(move |i| FIRST + i % keys)
}

macro_rules! local_u64 {
    ($n:expr, $keys:expr, |$id:ident| $call:expr) => {{
        init_local();
        for _ in 0..2 {
            for $id in ids($keys, $keys) {
                black_box($call);
            }
        }
        measure($n, None, || {
            for $id in ids($n, $keys) {
                black_box($call);
            }
        });
    }};
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let who = args.get(1).map(String::as_str).unwrap_or("help");
    let n: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    if std::env::var_os("RECORDER").is_some() {
        metrics::set_global_recorder(Rec).unwrap();
    }
    match who {
        // ---- baseline u64
        "u64-ours" => local_u64!(n, KEYS, |id| u64_ours(id)),
        "u64-cached" => local_u64!(n, KEYS, |id| u64_cached(id)),
        "u64-hand" => {
            let c = moka_cache::<String, Profile>(10_000);
            local_u64!(n, KEYS, |id| {
                let k = format!("user:profile:{id}");
                match c.get(&k) {
                    Some(v) => v,
                    None => {
                        let v = profile(id);
                        c.insert(k, v.clone());
                        v
                    }
                }
            })
        }
        "u64k-hand" => {
            // hand-written with the u64 itself as the key (no key string at all)
            let c = moka_cache::<u64, Profile>(10_000);
            local_u64!(n, KEYS, |id| c.get_with(id, || profile(id)))
        }
        // ---- &str / String / async &str
        "str-ours" | "str-hand" | "str-cached" | "str-ours-async" | "str-cached-async" | "str-hand-async"
        | "string-ours" | "string-hand" | "string-cached" => {
            init_local();
            let names = names();
            let c = moka_cache::<String, Profile>(10_000);
            let call = |name: &String| -> Profile {
                match who {
                    "str-ours" => str_ours(name),
                    "str-cached" => str_cached(name),
                    "str-hand" => match c.get(name.as_str()) {
                        Some(v) => v,
                        None => {
                            let v = profile(name.len() as u64);
                            c.insert(name.clone(), v.clone());
                            v
                        }
                    },
                    "str-ours-async" => poll_ready(str_ours_async(name)),
                    "str-cached-async" => poll_ready(str_cached_async(name)),
                    "str-hand-async" => poll_ready(async {
                        match c.get(name.as_str()) {
                            Some(v) => v,
                            None => {
                                let v = profile(name.len() as u64);
                                c.insert(name.clone(), v.clone());
                                v
                            }
                        }
                    }),
                    "string-ours" => string_ours(name.clone()),
                    "string-cached" => string_cached(name.clone()),
                    "string-hand" => {
                        let owned = name.clone();
                        match c.get(&owned) {
                            Some(v) => v,
                            None => {
                                let v = profile(owned.len() as u64);
                                c.insert(owned, v.clone());
                                v
                            }
                        }
                    }
                    _ => unreachable!(),
                }
            };
            for _ in 0..2 {
                for nm in &names {
                    black_box(call(nm));
                }
            }
            measure(n, None, || {
                for i in 0..n {
                    black_box(call(black_box(&names[(i % KEYS) as usize])));
                }
            });
        }
        "three-ours" | "three-hand" | "three-cached" => {
            init_local();
            let names = names();
            let c = moka_cache::<String, Profile>(10_000);
            let call = |i: u64| -> Profile {
                let (t, nm, p) = (i % 7, names[i as usize].as_str(), (i % 13) as u32);
                match who {
                    "three-ours" => three_ours(t, nm, p),
                    "three-cached" => three_cached(t, nm, p),
                    _ => {
                        let k = format!("t:{t}:{nm}:{p}");
                        match c.get(&k) {
                            Some(v) => v,
                            None => {
                                let v = profile(t + nm.len() as u64 + p as u64);
                                c.insert(k, v.clone());
                                v
                            }
                        }
                    }
                }
            };
            for _ in 0..2 {
                for i in 0..KEYS {
                    black_box(call(i));
                }
            }
            measure(n, None, || {
                for i in 0..n {
                    black_box(call(black_box(i % KEYS)));
                }
            });
        }
        "struct-ours" | "struct-hand" | "struct-cached" => {
            init_local();
            let qs: Vec<Search> = names()
                .into_iter()
                .enumerate()
                .map(|(i, text)| Search { text, page: (i % 5) as u32, request_id: i as u64 })
                .collect();
            let c = moka_cache::<(String, u32), Profile>(10_000);
            let call = |q: &Search| -> Profile {
                match who {
                    "struct-ours" => struct_ours(q),
                    "struct-cached" => struct_cached(q),
                    _ => {
                        let k = (q.text.clone(), q.page);
                        match c.get(&k) {
                            Some(v) => v,
                            None => {
                                let v = profile(q.page as u64);
                                c.insert(k, v.clone());
                                v
                            }
                        }
                    }
                }
            };
            for _ in 0..2 {
                for q in &qs {
                    black_box(call(q));
                }
            }
            measure(n, None, || {
                for i in 0..n {
                    black_box(call(black_box(&qs[(i % KEYS) as usize])));
                }
            });
        }
        // ---- big values (100 keys)
        "vec10k-ours" => local_u64!(n, BIG_KEYS, |id| vec10k_ours(id)),
        "vec10k-cached" => local_u64!(n, BIG_KEYS, |id| vec10k_cached(id)),
        "vec10k-hand" => {
            let c = moka_cache::<u64, Vec<u8>>(10_000);
            local_u64!(n, BIG_KEYS, |id| c.get_with(id, || bytes(id, 10 * 1024)))
        }
        "str10k-ours" => local_u64!(n, BIG_KEYS, |id| str10k_ours(id)),
        "str10k-cached" => local_u64!(n, BIG_KEYS, |id| str10k_cached(id)),
        "str10k-hand" => {
            let c = moka_cache::<u64, String>(10_000);
            local_u64!(n, BIG_KEYS, |id| c.get_with(id, || text(id, 10 * 1024)))
        }
        "items-ours" => local_u64!(n, BIG_KEYS, |id| items_ours(id)),
        "items-cached" => local_u64!(n, BIG_KEYS, |id| items_cached(id)),
        "items-hand" => {
            let c = moka_cache::<u64, Vec<Item>>(10_000);
            local_u64!(n, BIG_KEYS, |id| c.get_with(id, || items(id)))
        }
        // ---- Result
        "result-ours" => local_u64!(n, KEYS, |id| result_ours(id)),
        "result-cached" => local_u64!(n, KEYS, |id| result_cached(id)),
        "result-hand" => {
            let c = moka_cache::<String, Profile>(10_000);
            local_u64!(n, KEYS, |id| {
                let k = format!("r:{id}");
                match c.get(&k) {
                    Some(v) => Ok::<_, String>(v),
                    None => {
                        let v: Result<Profile, String> = Ok(profile(id));
                        if let Ok(v) = &v {
                            c.insert(k, v.clone());
                        }
                        v
                    }
                }
            })
        }
        // ---- extras
        "stale-ours" => local_u64!(n, KEYS, |id| stale_ours(id)),
        "ahead-ours" => local_u64!(n, KEYS, |id| poll_ready(ahead_ours(id))),
        "ahead-keyed-ours" => local_u64!(n, KEYS, |id| poll_ready(ahead_keyed_ours(id))),
        "ahead-base-ours" => local_u64!(n, KEYS, |id| poll_ready(ahead_base_ours(id))),
        "entry-ours" => local_u64!(n, KEYS, |id| entry_ours_entry(id)),
        "entry-ours-async" => local_u64!(n, KEYS, |id| poll_ready(entry_async_ours_entry(id))),
        "entry-base-ours" => local_u64!(n, KEYS, |id| entry_ours(id)),
        "tagged-ours" => local_u64!(n, KEYS, |id| tagged_ours(id, id % 10)),
        // ---- churn: every call a new key, capacity 1 000
        "churn-ours" | "churn-hand" | "churn-cached" => {
            init_local();
            let c = moka_cache::<String, Profile>(1000);
            let call = |id: u64| -> Profile {
                match who {
                    "churn-ours" => churn_ours(id),
                    "churn-cached" => churn_cached(id),
                    _ => {
                        let k = format!("c:{id}");
                        match c.get(&k) {
                            Some(v) => v,
                            None => {
                                let v = profile(id);
                                c.insert(k, v.clone());
                                v
                            }
                        }
                    }
                }
            };
            // warm: fill the cache past capacity (fixed), then N fresh keys
            for id in 0..5_000u64 {
                black_box(call(id));
            }
            measure(n, None, || {
                for i in 0..n {
                    black_box(call(black_box(10_000_000 + i)));
                }
            });
        }
        // ---- multi-thread Zipf: 8 tasks on an 8-worker runtime, 1 000 keys
        "mt-ours" | "mt-hand" | "mt-cached" => {
            init_local();
            let trace = Arc::new(zipf_trace(KEYS, 1.0, 0x9e3779b97f4a7c15));
            let c = moka_cache::<u64, Profile>(10_000);
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(8).enable_all().build().unwrap();
            let run = |calls: u64| {
                let tasks: Vec<_> = (0..8u64)
                    .map(|t| {
                        let trace = trace.clone();
                        let c = c.clone();
                        let who = who.to_string();
                        rt.spawn(async move {
                            let per = calls / 8;
                            for i in 0..per {
                                let id = FIRST + trace[((t * 7919 + i) as usize) % TRACE];
                                let v = match who.as_str() {
                                    "mt-ours" => mt_ours(id).await,
                                    "mt-cached" => mt_cached(id).await,
                                    _ => c.get_with(id, || profile(id)),
                                };
                                black_box(v);
                            }
                        })
                    })
                    .collect();
                rt.block_on(async {
                    for t in tasks {
                        t.await.unwrap();
                    }
                });
            };
            // warm every key
            rt.block_on(async {
                for id in ids(KEYS, KEYS) {
                    match who {
                        "mt-ours" => black_box(mt_ours(id).await),
                        "mt-cached" => black_box(mt_cached(id).await),
                        _ => black_box(c.get_with(id, || profile(id))),
                    };
                }
            });
            run(8 * 64);
            measure(n, None, || run(n));
        }
        // ---- Redis shapes
        r if r.starts_with("r") || r.starts_with("promote") || r.starts_with("twotier") => redis_main(r, n),
        _ => {
            eprintln!("unknown contender {who}");
            std::process::exit(2);
        }
    }
}

fn redis_main(who: &str, n: u64) {
    let server = Server::start();
    URL.set(server.url()).unwrap();
    init_redis(&server);
    let rt = rt_current();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn: Conn = rt.block_on(client.get_connection_manager()).unwrap();
    // waits for the runtime to connect (and, for local+redis, for the bus to be trusted)
    rt.block_on(async {
        for _ in 0..50 {
            let _ = rhit_ours(1).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let c100 = moka_cache::<u64, Profile>(100);
    macro_rules! hits {
        ($keys:expr, |$id:ident| $call:expr) => {{
            rt.block_on(async {
                for _ in 0..3 {
                    for $id in ids($keys, $keys) {
                        black_box($call);
                    }
                }
            });
            measure(n, Some(&server), || {
                rt.block_on(async {
                    for $id in ids(n, $keys) {
                        black_box($call);
                    }
                })
            });
        }};
    }
    macro_rules! misses {
        (|$id:ident| $call:expr) => {{
            rt.block_on(async {
                for $id in 0..300u64 {
                    black_box($call);
                }
            });
            measure(n, Some(&server), || {
                rt.block_on(async {
                    for i in 0..n {
                        let $id = 50_000_000 + i;
                        black_box($call);
                    }
                })
            });
        }};
    }
    match who {
        "r100k-ours" => hits!(BIG_KEYS, |id| r100k_ours(id).await),
        "r100k-hand" => hits!(BIG_KEYS, |id| {
            let k = format!("hw:big:{id}");
            hand_cached(&mut conn, &k, || bytes(id, 100 * 1024)).await
        }),
        "r100k-cached" => hits!(BIG_KEYS, |id| r100k_cached(id).await.unwrap()),
        "r100ks-ours" => hits!(BIG_KEYS, |id| r100ks_ours(id).await),
        "r100ks-hand" => hits!(BIG_KEYS, |id| {
            let k = format!("hw:bigs:{id}");
            hand_cached(&mut conn, &k, || text(id, 100 * 1024)).await
        }),
        "r100ks-cached" => hits!(BIG_KEYS, |id| r100ks_cached(id).await.unwrap()),
        "rhit-ours" => hits!(KEYS, |id| rhit_ours(id).await),
        "rhit-hand" => hits!(KEYS, |id| {
            let k = format!("hw:user:profile:{id}");
            hand_cached(&mut conn, &k, || profile(id)).await
        }),
        "rlock-ours" => hits!(KEYS, |id| rlock_ours(id).await),
        "rsync-ours" => {
            for _ in 0..3 {
                for id in ids(KEYS, KEYS) {
                    black_box(rsync_ours(id));
                }
            }
            measure(n, Some(&server), || {
                for id in ids(n, KEYS) {
                    black_box(rsync_ours(id));
                }
            });
        }
        "rsync-cached" => {
            for _ in 0..3 {
                for id in ids(KEYS, KEYS) {
                    black_box(rsync_cached(id).unwrap());
                }
            }
            measure(n, Some(&server), || {
                for id in ids(n, KEYS) {
                    black_box(rsync_cached(id).unwrap());
                }
            });
        }
        "rsync-hand" => {
            let mut c = client.get_connection().unwrap();
            let mut call = |id: u64| rsync_hand(&mut c, id);
            for _ in 0..3 {
                for id in ids(KEYS, KEYS) {
                    black_box(call(id));
                }
            }
            measure(n, Some(&server), || {
                for id in ids(n, KEYS) {
                    black_box(call(id));
                }
            });
        }
        // A sync fn's miss and populate: every measured call a new key (`GET` miss, the body,
        // the store). The warm-up's 300 calls open the thread's own connection (after 16).
        "rmisssync-ours" | "rmisssync-hand" | "rmisssync-cached" => {
            let mut c = client.get_connection().unwrap();
            let mut call = |id: u64| match who {
                "rmisssync-ours" => rmisssync_ours(id),
                "rmisssync-cached" => rmisssync_cached(id).unwrap(),
                _ => rsync_hand(&mut c, id),
            };
            for id in 0..300u64 {
                black_box(call(id));
            }
            measure(n, Some(&server), || {
                for i in 0..n {
                    black_box(call(50_000_000 + i));
                }
            });
        }
        // Sync hits from THREADS threads (default 64) at once: throughput (wall ns per call
        // is the total time over every thread's calls). Each thread warms itself first.
        "rsyncmt-ours" | "rsyncmt-hand" | "rsyncmt-cached" => {
            let threads: u64 = std::env::var("THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(64);
            let per = n / threads;
            let url = server.url();
            let run = |calls: u64| {
                let start = Arc::new(std::sync::Barrier::new(threads as usize + 1));
                let done = Arc::new(std::sync::Barrier::new(threads as usize + 1));
                let hs: Vec<_> = (0..threads)
                    .map(|t| {
                        let (start, done, url, who) = (start.clone(), done.clone(), url.clone(), who.to_string());
                        std::thread::spawn(move || {
                            let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
                            let mut call = |id: u64| -> Profile {
                                match who.as_str() {
                                    "rsyncmt-ours" => rsync_ours(id),
                                    "rsyncmt-cached" => rsync_cached(id).unwrap(),
                                    _ => rsync_hand(&mut c, id),
                                }
                            };
                            for id in ids(64, KEYS) {
                                black_box(call(id + t));
                            }
                            start.wait();
                            for i in 0..calls {
                                black_box(call(FIRST + (i * 7 + t * 131) % KEYS));
                            }
                            done.wait();
                        })
                    })
                    .collect();
                start.wait();
                let t0 = Instant::now();
                done.wait();
                let dt = t0.elapsed();
                for h in hs {
                    h.join().unwrap();
                }
                dt
            };
            run(64);
            // CPU per call: this process's (user + system, /proc/self/stat, 100 ticks/s) and
            // the server's (INFO cpu); on 2 cores the sum sets the throughput.
            let ticks = || -> u64 {
                let st = std::fs::read_to_string("/proc/self/stat").unwrap();
                let f: Vec<&str> = st.rsplit(')').next().unwrap().split_whitespace().collect();
                f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
            };
            let (s0, t0) = (server.cmdstats()["__cpu_us"].0, ticks());
            let dt = run(per);
            let (s1, t1) = (server.cmdstats()["__cpu_us"].0, ticks());
            let calls = (per * threads) as f64;
            eprintln!("client cpu usec/call: {:.2}", (t1 - t0) as f64 * 1e4 / calls);
            eprintln!("server cpu usec/call: {:.2}", (s1 - s0) as f64 / calls);
            eprintln!("wall ns/call: {:.0}", dt.as_nanos() as f64 / calls);
        }
        // Redis hits from 64 tasks on a 2-worker runtime over a Zipf trace of the warm keys:
        // hot keys are read by several tasks at once (throughput: wall ns per call).
        "rmt-ours" | "rmt-hand" => {
            let trace = Arc::new(zipf_trace(KEYS, 1.0, 0x9e3779b97f4a7c15));
            let mrt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let mconn: Conn = mrt.block_on(client.get_connection_manager()).unwrap();
            let run = |calls: u64| {
                let tasks: Vec<_> = (0..64u64)
                    .map(|t| {
                        let (trace, mut conn, who) = (trace.clone(), mconn.clone(), who.to_string());
                        mrt.spawn(async move {
                            for i in 0..calls / 64 {
                                let id = FIRST + trace[((t * 7919 + i) as usize) % TRACE];
                                let v = match who.as_str() {
                                    "rmt-ours" => rhit_ours(id).await,
                                    _ => {
                                        let k = format!("hw:user:profile:{id}");
                                        hand_cached(&mut conn, &k, || profile(id)).await
                                    }
                                };
                                black_box(v);
                            }
                        })
                    })
                    .collect();
                mrt.block_on(async {
                    for t in tasks {
                        t.await.unwrap();
                    }
                });
            };
            mrt.block_on(async {
                for id in ids(KEYS, KEYS) {
                    black_box(rhit_ours(id).await);
                    let mut conn = mconn.clone();
                    hand_cached(&mut conn, &format!("hw:user:profile:{id}"), || profile(id)).await;
                }
            });
            run(64 * 64);
            measure(n, Some(&server), || run(n));
        }
        "rhittag-ours" => hits!(KEYS, |id| rhittag_ours(id, id % 10).await),
        "rmisstagshared-ours" => misses!(|id| rmisstagshared_ours(id, id % 10).await),
        "rmiss-ours" => misses!(|id| rmiss_ours(id, id % 10).await),
        "rmisstag-ours" => misses!(|id| rmisstag_ours(id, id % 10).await),
        "rmiss-hand" => misses!(|id| {
            let k = format!("hw:m:{id}");
            hand_cached(&mut conn, &k, || profile(id + id % 10)).await
        }),
        "rmiss-cached" => misses!(|id| rmiss_cached(id, id % 10).await.unwrap()),
        "promote-ours" => hits!(KEYS, |id| promote_ours(id).await),
        "promote-hand" => hits!(KEYS, |id| {
            match c100.get(&id) {
                Some(v) => v,
                None => {
                    let k = format!("hw:pr:{id}");
                    let v = hand_cached(&mut conn, &k, || profile(id)).await;
                    c100.insert(id, v.clone());
                    v
                }
            }
        }),
        "twotier-ours" => hits!(KEYS, |id| twotier_ours(id).await),
        // A sync fn's invalidation (a key that is there: each call fills it again first,
        // outside the measure, would cost as much; here every call invalidates a key of the
        // warm set, which only the first of its calls finds).
        "rinvsync-ours" => {
            for id in ids(KEYS, KEYS) {
                black_box(rsync_ours(id));
            }
            measure(n, Some(&server), || {
                for id in ids(n, KEYS) {
                    invalidate_rsync_ours(id).unwrap();
                }
            });
        }
        "rinvsync-hand" => {
            let mut c = client.get_connection().unwrap();
            measure(n, Some(&server), || {
                for id in ids(n, KEYS) {
                    let k = format!("hw:sy:{id}");
                    let _: () = redis::cmd("DEL").arg(&k).query(&mut c).unwrap();
                }
            });
        }
        "rinvsync-cached" => {
            for id in ids(KEYS, KEYS) {
                black_box(rsync_cached(id).unwrap());
            }
            measure(n, Some(&server), || {
                for id in ids(n, KEYS) {
                    let _ = cached::ConcurrentCached::cache_delete(&*RSYNC_CACHED, &format!("sy:{id}")).unwrap();
                }
            });
        }
        "rinvtag-ours" => {
            rt.block_on(async {
                for i in 0..300u64 {
                    cache_runtime::invalidate_tag(&format!("org:{}", i % 10)).await.unwrap();
                }
            });
            measure(n, Some(&server), || {
                rt.block_on(async {
                    for i in 0..n {
                        cache_runtime::invalidate_tag(&format!("org:{}", i % 10)).await.unwrap();
                    }
                })
            });
        }
        _ => {
            eprintln!("unknown contender {who}");
            std::process::exit(2);
        }
    }
    let stats: Vec<_> = cache_runtime::caches()
        .into_iter()
        .filter(|c| c.stats.local_hits + c.stats.redis_hits + c.stats.misses > 0)
        .map(|c| format!("{}: local {} redis {} miss {}", c.name, c.stats.local_hits, c.stats.redis_hits, c.stats.misses))
        .collect();
    eprintln!("stats: {stats:?}");
}
