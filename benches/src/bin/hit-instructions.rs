//! Runs one contender's hit path `N` times, for instruction counts under
//! `valgrind --tool=callgrind` (stable on a noisy machine, unlike times).
//!
//! `scripts/callgrind-hits.sh` runs every contender twice (N = 2 000 and N = 12 000) and
//! divides the difference by 10 000, so set-up, warm-up and exit cancel out and what remains
//! is the client-side cost of one hit (every thread of this process: callers, the runtime's
//! Redis thread, Tokio's workers; redis-server runs in its own process and is not counted).
//!
//! ```text
//! hit-instructions <contender> <calls>
//! contenders: local-ours local-hand local-cached local-quick local-mini
//!             local-ours-async local-hand-async local-cached-async
//!             redis-ours redis-hand redis-hand-mget redis-cached
//!             redis-ours-64 redis-hand-64 invalidate-ours invalidate-hand
//!             invalidate-hand-publish invalidate-hand-protocol invalidate-tag-ours
//!             invalidate-ours-64 invalidate-hand-64
//!             miss-ours miss-ours-tagged miss-ours-two-tier miss-hand miss-cached
//!             local-ours-two-tier invalidated-miss-ours-two-tier
//! ```
//!
//! `miss-ours` / `miss-hand` / `miss-cached` are the miss + populate path on a key never seen
//! before (ours: `MGET` and the store script; hand-written: `GET`, body, encode, `SET PX`;
//! the `cached` crate's `AsyncRedisCache`: `GET`, body, `SET PX`). `miss-ours-two-tier` is
//! ours in `local+redis`: the miss also stores a local copy. `local-ours-two-tier` is a local
//! hit of that `local+redis` cache (served while the invalidation bus is trusted, which it
//! waits for first; a call that finds it untrusted goes on to Redis and is reported).
//!
//! `invalidated-miss-ours-two-tier` is an invalidation followed by a miss of the same key in
//! `local+redis`: the miss finds the fresh ticket the invalidation left (as a warm cache's
//! misses find their ticket alive), reads with `MGET v t` and stores under that ticket; minus
//! `invalidate-ours`, it prices that miss.
//!
//! `redis-hand-mget` is the hand-written `GET` + decode with the same reply shape as ours: an
//! `MGET` of the value and three more keys (16-byte strings, as a ticket and two scope
//! tokens), only the value decoded. Against `redis-hand` it prices the protocol's extra
//! reply elements in redis-rs (its reply parser), apart from everything else ours does.
//!
//! It also prints, on stderr, the heap allocations per hit of the measured loop (the suite's
//! counting global allocator, `cache_benches::alloc_count`: every thread of the process, so the runtime's Redis thread and the
//! connection's driver are included): `cargo run --release -p cache-benches --bin
//! hit-instructions -- redis-ours 20000`. With `STACK_PAINT=1` it also prints how many
//! lines of this thread's stack the measured loop wrote (see [`PAINT`]).

use std::hint::black_box;
use std::time::Duration;

use cache_benches::alloc_count;
use cache_benches::stores::{self, HandStore};
use cache_benches::{
    current_thread_runtime, hand_key, hand_redis_get, init_local_only, our_key, poll_ready, profile,
};
use cache_benches::{hand_bus_subscriber, hand_del_publish, hand_invalidate_protocol};
use cache_benches::{redis_url, server_cpu_seconds, start_redis};
use cache_benches::{Profile, FIRST_ID};
use cached::AsyncRedisCache;
use redis::aio::ConnectionManager;

/// Where a measured loop starts: the allocations so far and, with a Redis server, its CPU.
struct Before {
    allocs: u64,
    server_cpu: Option<f64>,
    pipelined: (u64, u64),
}

/// `STACK_PAINT=1`: how much of the stack the measured loop touches. Before the loop,
/// [`paint`] fills the [`PAINT`] bytes below its caller's frame with a pattern; after it,
/// [`count_painted`] counts the 64-byte lines no longer holding it. The calls run on this
/// thread (a current-thread runtime, the connection's driver task included), below that
/// frame, so the count is every stack line the loop's calls wrote (their frames, and the
/// temporaries futures are built in before they are moved into their parent's state): one
/// part of a call's data working set, which `scripts/cachegrind-ops.sh` prices in cache
/// misses (docs/BENCHMARKS.md, thirty-first round). A diagnostic: it writes and reads this
/// thread's own stack mapping below the current frame, memory no Rust object owns.
const PAINT: usize = 192 * 1024;
const PAINT_PATTERN: u64 = 0xA5A5_A5A5_A5A5_A5A5;
static PAINT_BASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn stack_paint() -> bool {
    std::env::var_os("STACK_PAINT").is_some()
}

#[inline(never)]
fn paint() {
    let here = 0u8;
    // Below this frame (and a margin for it): where the caller's callees' frames will be.
    let base = std::hint::black_box(&here) as *const u8 as usize - 512;
    PAINT_BASE.store(base, std::sync::atomic::Ordering::SeqCst);
    for a in (base - PAINT..base).step_by(8) {
        // SAFETY: the main thread's stack mapping (8 MB by default) holds these addresses;
        // nothing lives below the current frame.
        unsafe { std::ptr::write_volatile(a as *mut u64, PAINT_PATTERN) };
    }
}

#[inline(never)]
fn count_painted() {
    let base = PAINT_BASE.load(std::sync::atomic::Ordering::SeqCst);
    let (mut lines, mut deepest) = (0, 0);
    for line in (base - PAINT..base).step_by(64) {
        // SAFETY: as in `paint`, which wrote every address read here.
        let touched = (line..line + 64)
            .step_by(8)
            .any(|a| unsafe { std::ptr::read_volatile(a as *const u64) } != PAINT_PATTERN);
        if touched {
            lines += 1;
            deepest = deepest.max(base - line);
        }
    }
    eprintln!(
        "stack lines touched: {lines} ({} KB), deepest {} KB",
        lines * 64 / 1024,
        deepest / 1024
    );
}

fn allocs() -> Before {
    if stack_paint() {
        paint();
    }
    Before {
        // Read first: the server's figure allocates.
        allocs: alloc_count::allocations(),
        server_cpu: server_cpu_seconds(),
        pipelined: {
            let s = cache_runtime::redis_status();
            (s.pipelined_reads, s.read_pipelines)
        },
    }
}

/// Prints the allocations per hit since `before` on stderr, and the server's CPU per call
/// when the contender talks to Redis.
fn report(calls: u64, before: Before) {
    if stack_paint() {
        count_painted();
    }
    let calls = calls.max(1);
    let after = alloc_count::allocations();
    let per = (after - before.allocs) as f64 / calls as f64;
    eprintln!("allocations per hit: {per:.1}");
    if let (Some(start), Some(end)) = (before.server_cpu, server_cpu_seconds()) {
        let us = (end - start) * 1e6 / calls as f64;
        eprintln!("redis-server CPU per call: {us:.2} µs");
        let status = cache_runtime::redis_status();
        let pipelined = status.pipelined_reads - before.pipelined.0;
        let pipelines = status.read_pipelines - before.pipelined.1;
        eprintln!(
            "our reads pipelined with others: {:.1} %, {:.1} per pipeline",
            pipelined as f64 * 100.0 / calls as f64,
            pipelined as f64 / pipelines.max(1) as f64
        );
    }
}

/// Runs the measured loop, then prints its allocations per hit on stderr.
fn measured(calls: u64, f: impl FnOnce()) {
    let before = allocs();
    f();
    report(calls, before);
}

/// Distinct keys read round-robin (all warm before counting starts).
const KEYS: u64 = 1_000;

#[cache_runtime::cached(tier = "local", ttl = 300, key = "user:profile:<id>")]
fn local_ours(id: u64) -> Profile {
    profile(id)
}

/// `local_ours` with a per-key tag: the tag is written on every call, read only by a miss.
#[cache_runtime::cached(tier = "local", ttl = 300, key = "user:profile:<id>", tags = ["user:<id>"])]
fn local_ours_tagged(id: u64) -> Profile {
    profile(id)
}

#[cached::macros::cached(
    max_size = 10_000,
    ttl_secs = 300,
    key = "String",
    convert = r#"{ our_key(id) }"#
)]
fn local_rival(id: u64) -> Profile {
    profile(id)
}

/// `local_ours` as an `async fn` (the `-async` contenders poll each call's future once, with a
/// no-op waker: `cache_benches::poll_ready`).
#[cache_runtime::cached(tier = "local", ttl = 300, key = "user:profile:<id>")]
async fn local_ours_async(id: u64) -> Profile {
    profile(id)
}

#[cached::macros::cached(
    max_size = 10_000,
    ttl_secs = 300,
    key = "String",
    convert = r#"{ our_key(id) }"#
)]
async fn local_rival_async(id: u64) -> Profile {
    profile(id)
}

#[cache_runtime::cached(tier = "redis", ttl = 300, key = "user:profile:<id>")]
async fn redis_ours(id: u64) -> Profile {
    profile(id)
}

/// `redis_ours` with a per-key tag, as caches of users' data often have: a new key's first
/// read also reads (and claims) its tag's token.
#[cache_runtime::cached(tier = "redis", ttl = 300, key = "user:profile:<id>", tags = ["user:<id>"])]
async fn redis_ours_tagged(id: u64) -> Profile {
    profile(id)
}

async fn rival_store() -> AsyncRedisCache<String, Profile> {
    AsyncRedisCache::builder("hi")
        .connection_string(&redis_url())
        .connection_manager(true)
        .ttl(Duration::from_secs(300))
        .build()
        .await
        .expect("build the cached crate's AsyncRedisCache")
}

#[cached::macros::concurrent_cached(
    ty = "cached::AsyncRedisCache<String, Profile>",
    create = r#"{ rival_store().await }"#,
    key = "String",
    convert = r#"{ our_key(id) }"#,
    map_error = r#"|e| format!("{e:?}")"#
)]
async fn redis_rival(id: u64) -> Result<Profile, String> {
    Ok(profile(id))
}

/// `redis_ours` in both tiers: a miss also stores a local copy (after the store's ticket
/// check, which only a cache with a local tier sends).
#[cache_runtime::cached(tier = "local+redis", ttl = 300, key = "user:profile:<id>")]
async fn two_tier_ours(id: u64) -> Profile {
    profile(id)
}

/// The first key of the `miss-` contenders, far from the hits' keys.
const MISS_FIRST_ID: u64 = 50_000_000;

/// Concurrent callers of the `-64` contenders.
const TASKS: u64 = 64;

fn ids(calls: u64) -> impl Iterator<Item = u64> {
    (0..calls).map(|i| FIRST_ID + i % KEYS)
}

/// Runs `call` for each id of `calls` calls, split between [`TASKS`] tasks at once on the
/// current runtime; each task hands its own clone of `state` (a connection) from call to call.
async fn from_tasks<S, F, Fut>(calls: u64, state: S, call: F)
where
    S: Clone + Send + 'static,
    F: Fn(S, u64) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = S> + Send,
{
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let mut state = state.clone();
            tokio::spawn(async move {
                for i in (t..calls).step_by(TASKS as usize) {
                    state = call(state, black_box(FIRST_ID + i % KEYS)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
}

/// Three keys holding 16-byte strings, read beside each value by `redis-hand-mget`.
const HAND_MGET_EXTRA: [&str; 3] = ["hand:x1", "hand:x2", "hand:x3"];

/// `MGET key hand:x1 hand:x2 hand:x3`, then the value decoded as `hand_redis_get` does.
async fn hand_redis_mget(conn: &mut ConnectionManager, id: u64) -> Profile {
    let mut cmd = redis::cmd("MGET");
    cmd.arg(hand_key(id)).arg(&HAND_MGET_EXTRA[..]);
    let mut reply: Vec<Option<Vec<u8>>> = cmd.query_async(conn).await.expect("MGET");
    let bytes = reply.swap_remove(0).expect("warm");
    bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
        .expect("decode")
        .0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hit-instructions <local-ours|local-ours-tagged|local-hand|local-cached|local-ours-async|local-hand-async|local-cached-async|local-quick|local-mini|redis-ours|redis-hand|redis-hand-mget|redis-cached|redis-ours-64|redis-hand-64|invalidate-ours|invalidate-hand|invalidate-hand-publish|invalidate-tag-ours|miss-ours|miss-ours-tagged|miss-ours-two-tier|miss-hand|miss-cached|local-ours-two-tier|invalidated-miss-ours-two-tier> <calls>";
    let contender = args.next().expect(usage);
    alloc_count::count_from_now();
    let calls: u64 = args.next().and_then(|s| s.parse().ok()).expect(usage);
    let warm = ids(KEYS);
    match contender.as_str() {
        "local-ours" | "local-ours-tagged" => {
            init_local_only();
            let call = match contender.as_str() {
                "local-ours" => local_ours,
                _ => local_ours_tagged,
            };
            warm.for_each(|id| drop(call(id)));
            measured(calls, || {
                ids(calls).for_each(|id| drop(black_box(call(black_box(id)))))
            });
        }
        "local-hand" => {
            let moka = stores::Moka::new();
            warm.for_each(|id| drop(moka.get(id)));
            measured(calls, || {
                ids(calls).for_each(|id| drop(black_box(moka.get(black_box(id)))))
            });
        }
        "local-quick" | "local-mini" => {
            // Hand-written caches on the candidate stores of docs/LOCAL_TIER.md.
            let store: Box<dyn HandStore> = match contender.as_str() {
                "local-quick" => Box::new(stores::Quick::new()),
                _ => Box::new(stores::MiniMoka::new()),
            };
            warm.for_each(|id| drop(store.get(id)));
            measured(calls, || {
                ids(calls).for_each(|id| drop(black_box(store.get(black_box(id)))))
            });
        }
        "local-ours-async" => {
            init_local_only();
            warm.for_each(|id| drop(poll_ready(local_ours_async(id))));
            measured(calls, || {
                ids(calls)
                    .for_each(|id| drop(black_box(poll_ready(local_ours_async(black_box(id))))))
            });
        }
        "local-hand-async" => {
            let moka = stores::MokaFuture::new();
            warm.for_each(|id| drop(poll_ready(moka.get(id))));
            measured(calls, || {
                ids(calls).for_each(|id| drop(black_box(poll_ready(moka.get(black_box(id))))))
            });
        }
        "local-cached-async" => {
            warm.for_each(|id| drop(poll_ready(local_rival_async(id))));
            measured(calls, || {
                ids(calls)
                    .for_each(|id| drop(black_box(poll_ready(local_rival_async(black_box(id))))))
            });
        }
        "local-cached" => {
            warm.for_each(|id| drop(local_rival(id)));
            measured(calls, || {
                ids(calls).for_each(|id| drop(black_box(local_rival(black_box(id)))))
            });
        }
        "invalidate-tag-ours" => {
            // `invalidate_tag` of a tag per call (`DEL` of its token, the bus message, the
            // fresh token's `SET`).
            start_redis();
            let rt = current_thread_runtime();
            rt.block_on(async {
                let tag = |id: u64| format!("team:{id}");
                for id in warm {
                    cache_runtime::invalidate_tag(&tag(id))
                        .await
                        .expect("invalidate_tag");
                }
                let before = allocs();
                for id in ids(calls) {
                    cache_runtime::invalidate_tag(&tag(black_box(id)))
                        .await
                        .expect("invalidate_tag");
                }
                report(calls, before);
            });
        }
        "invalidate-ours"
        | "invalidate-hand"
        | "invalidate-hand-publish"
        | "invalidate-hand-protocol" => {
            start_redis();
            let rt = current_thread_runtime();
            rt.block_on(async {
                if contender == "invalidate-ours" {
                    for id in warm {
                        invalidate_redis_ours(id).await.expect("invalidate");
                    }
                    let before = allocs();
                    for id in ids(calls) {
                        invalidate_redis_ours(black_box(id))
                            .await
                            .expect("invalidate");
                    }
                    report(calls, before);
                } else {
                    // `invalidate-hand-publish`: the same `DEL` with the bus message, subscribed.
                    let publish = contender == "invalidate-hand-publish";
                    if publish {
                        hand_bus_subscriber();
                    }
                    let client = redis::Client::open(redis_url()).expect("redis url");
                    let mut conn = ConnectionManager::new(client).await.expect("connect");
                    let before = allocs();
                    for id in ids(calls) {
                        if publish {
                            hand_del_publish(&mut conn, black_box(id)).await;
                        } else if contender == "invalidate-hand-protocol" {
                            hand_invalidate_protocol(&mut conn, black_box(id)).await;
                        } else {
                            let _: () = redis::cmd("DEL")
                                .arg(hand_key(black_box(id)))
                                .query_async(&mut conn)
                                .await
                                .expect("DEL");
                        }
                    }
                    report(calls, before);
                }
            });
        }
        "invalidate-ours-64" | "invalidate-hand-64" => {
            // Invalidations from 64 tasks at once on one thread: many in flight together.
            start_redis();
            let rt = current_thread_runtime();
            rt.block_on(async {
                let hand = match contender.as_str() {
                    "invalidate-hand-64" => {
                        let client = redis::Client::open(redis_url()).expect("redis url");
                        Some(ConnectionManager::new(client).await.expect("connect"))
                    }
                    _ => None,
                };
                for id in warm {
                    invalidate_redis_ours(id).await.expect("invalidate");
                }
                let before = allocs();
                from_tasks(calls, hand, |mut hand, id| async move {
                    match &mut hand {
                        Some(conn) => {
                            let _: () = redis::cmd("DEL")
                                .arg(hand_key(id))
                                .query_async(conn)
                                .await
                                .expect("DEL");
                        }
                        None => invalidate_redis_ours(id).await.expect("invalidate"),
                    }
                    hand
                })
                .await;
                report(calls, before);
            });
        }
        "redis-ours-64" | "redis-hand-64" => {
            // The same hits from 64 tasks at once on one thread (the 64-task bench's shape:
            // replies arrive in batches, flights coalesce concurrent calls of one key).
            start_redis();
            let rt = current_thread_runtime();
            rt.block_on(async {
                let hand = match contender.as_str() {
                    "redis-hand-64" => {
                        let client = redis::Client::open(redis_url()).expect("redis url");
                        let mut conn = ConnectionManager::new(client).await.expect("connect");
                        for id in warm {
                            hand_redis_get(&mut conn, id).await;
                        }
                        Some(conn)
                    }
                    _ => {
                        for id in warm {
                            redis_ours(id).await;
                        }
                        None
                    }
                };
                let before = allocs();
                from_tasks(calls, hand, |mut hand, id| async move {
                    match &mut hand {
                        Some(conn) => {
                            black_box(hand_redis_get(conn, id).await);
                        }
                        None => {
                            black_box(redis_ours(id).await);
                        }
                    }
                    hand
                })
                .await;
                report(calls, before);
            });
        }
        "redis-ours" | "redis-hand" | "redis-hand-mget" | "redis-cached" => {
            start_redis();
            let rt = current_thread_runtime();
            rt.block_on(async {
                match contender.as_str() {
                    "redis-ours" => {
                        for id in warm {
                            redis_ours(id).await;
                        }
                        let before = allocs();
                        for id in ids(calls) {
                            black_box(redis_ours(black_box(id)).await);
                        }
                        report(calls, before);
                    }
                    "redis-hand" => {
                        let client = redis::Client::open(redis_url()).expect("redis url");
                        let mut conn = ConnectionManager::new(client).await.expect("connect");
                        for id in warm {
                            hand_redis_get(&mut conn, id).await;
                        }
                        let before = allocs();
                        for id in ids(calls) {
                            black_box(hand_redis_get(&mut conn, black_box(id)).await);
                        }
                        report(calls, before);
                    }
                    "redis-hand-mget" => {
                        let client = redis::Client::open(redis_url()).expect("redis url");
                        let mut conn = ConnectionManager::new(client).await.expect("connect");
                        let mut mset = redis::cmd("MSET");
                        for k in HAND_MGET_EXTRA {
                            mset.arg(k).arg("0123456789abcdef");
                        }
                        let _: () = mset.query_async(&mut conn).await.expect("MSET");
                        for id in warm {
                            hand_redis_get(&mut conn, id).await;
                        }
                        let before = allocs();
                        for id in ids(calls) {
                            black_box(hand_redis_mget(&mut conn, black_box(id)).await);
                        }
                        report(calls, before);
                    }
                    _ => {
                        for id in warm {
                            redis_rival(id).await.expect("rival");
                        }
                        let before = allocs();
                        for id in ids(calls) {
                            black_box(redis_rival(black_box(id)).await.expect("rival"));
                        }
                        report(calls, before);
                    }
                }
            });
        }
        "miss-ours" | "miss-ours-tagged" | "miss-ours-two-tier" | "miss-hand" | "miss-cached" => {
            start_redis();
            let rt = current_thread_runtime();
            // Every call a key never read before; the warm-up's keys too (connections, scripts).
            let fresh = |from: u64, n: u64| (0..n).map(move |i| MISS_FIRST_ID + from + i);
            // Warm-up on `KEYS` fresh keys (connections, scripts), then the measured calls.
            macro_rules! misses {
                (|$id:ident| $call:expr) => {{
                    for $id in fresh(0, KEYS) {
                        $call;
                    }
                    let before = allocs();
                    for id in fresh(KEYS, calls) {
                        let $id = black_box(id);
                        black_box($call);
                    }
                    report(calls, before);
                }};
            }
            rt.block_on(async {
                match contender.as_str() {
                    "miss-ours" => misses!(|id| redis_ours(id).await),
                    "miss-ours-tagged" => misses!(|id| redis_ours_tagged(id).await),
                    "miss-ours-two-tier" => misses!(|id| two_tier_ours(id).await),
                    "miss-cached" => misses!(|id| redis_rival(id).await.expect("rival")),
                    _ => {
                        let client = redis::Client::open(redis_url()).expect("redis url");
                        let mut conn = ConnectionManager::new(client).await.expect("connect");
                        misses!(|id| hand_redis_get(&mut conn, id).await)
                    }
                }
            });
        }
        "invalidated-miss-ours-two-tier" => {
            start_redis();
            let rt = current_thread_runtime();
            let fresh = |from: u64, n: u64| (0..n).map(move |i| MISS_FIRST_ID + from + i);
            rt.block_on(async {
                for id in fresh(0, KEYS) {
                    invalidate_two_tier_ours(id).await.expect("invalidate");
                    two_tier_ours(id).await;
                }
                let before = allocs();
                for id in fresh(KEYS, calls) {
                    let id = black_box(id);
                    invalidate_two_tier_ours(id).await.expect("invalidate");
                    black_box(two_tier_ours(id).await);
                }
                report(calls, before);
            });
            let s = two_tier_ours_cache().stats();
            assert_eq!(s.misses, KEYS + calls, "every call a miss: {s:?}");
        }
        "local-ours-two-tier" => {
            start_redis();
            let rt = current_thread_runtime();
            rt.block_on(async {
                // Local copies are served only while the bus is trusted.
                while !cache_runtime::bus_status().trusted {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                for id in warm {
                    two_tier_ours(id).await;
                }
            });
            let stats = || two_tier_ours_cache().stats();
            let before = stats();
            measured(calls, || {
                rt.block_on(async {
                    for id in ids(calls) {
                        drop(black_box(two_tier_ours(black_box(id)).await));
                    }
                })
            });
            let after = stats();
            let redis = (after.redis_hits + after.misses) - (before.redis_hits + before.misses);
            if redis > 0 {
                eprintln!("{redis} of {calls} calls were not local hits (the bus was not trusted)");
            }
        }
        other => panic!("unknown contender {other:?}; {usage}"),
    }
}
