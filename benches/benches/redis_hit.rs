//! Benchmark 2: Redis hit (no local tier): `#[cached(tier = "redis")]` against hand-written
//! redis-rs (`GET` + bincode 2 decode on a `ConnectionManager`) and the `cached` crate's
//! `AsyncRedisCache` (through `#[concurrent_cached]`, with its `ConnectionManager` option).
//! Sequential latency, and throughput with 64 concurrent tasks; plus a raw `PING` as the
//! round-trip reference.
//!
//! Callers run on one current-thread Tokio runtime (the fastest setting for redis-rs on two
//! cores); ours does its Redis I/O on its own thread, as it always does.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cache_benches::sequential_cost;
use cache_benches::{
    access_pattern, criterion, current_thread_runtime, hand_key, hand_redis_get, our_key,
};
use cache_benches::{bench_mode, process_cost, profile, raw_ping, record_cost, Profile, FIRST_ID};
use cache_benches::{count_commands, record_commands, record_fact, redis_url, start_redis};
use cached::AsyncRedisCache;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use redis::aio::ConnectionManager;

const KEYS: u64 = 1_000;
const PATTERN: usize = 4_096; // a power of two
const TASKS: u64 = 64;

#[cache_runtime::cached(tier = "redis", ttl = 300, key = "user:profile:<id>")]
async fn ours(id: u64) -> Profile {
    profile(id)
}

async fn rival_store(prefix: &str) -> AsyncRedisCache<String, Profile> {
    AsyncRedisCache::builder(prefix)
        .connection_string(&redis_url())
        .connection_manager(true)
        .ttl(Duration::from_secs(300))
        .build()
        .await
        .expect("build the cached crate's AsyncRedisCache")
}

#[cached::macros::concurrent_cached(
    ty = "cached::AsyncRedisCache<String, Profile>",
    create = r#"{ rival_store("hit").await }"#,
    key = "String",
    convert = r#"{ our_key(id) }"#,
    map_error = r#"|e| format!("{e:?}")"#
)]
async fn rival(id: u64) -> Result<Profile, String> {
    Ok(profile(id))
}

/// Diagnostic: the hand-written `GET` + decode, but with the request shape of our read
/// script (`MGET` of three stamp keys, `GET`, `PTTL`, in one `EVALSHA`), on the caller's
/// connection. Isolates the server-side cost of the script.
async fn hand_script(conn: &mut ConnectionManager, script: &redis::Script, id: u64) -> Profile {
    let (bytes, _pttl): (Vec<u8>, i64) = script
        .key(hand_key(id))
        .key("hw:gen:k")
        .key("hw:clear:c")
        .key("hw:clear")
        .invoke_async(conn)
        .await
        .expect("EVALSHA");
    bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
        .expect("decode")
        .0
}

const DIAG_SCRIPT: &str = "local s = redis.call('MGET', KEYS[2], KEYS[3], KEYS[4]) \
     local v = redis.call('GET', KEYS[1]) \
     return {v, redis.call('PTTL', KEYS[1])}";

/// Diagnostic: a dedicated I/O thread with its own current-thread runtime, as ours has.
fn io_thread() -> tokio::runtime::Handle {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bench-io".into())
        .spawn(move || {
            let rt = current_thread_runtime();
            tx.send(rt.handle().clone()).expect("send handle");
            rt.block_on(std::future::pending::<()>());
        })
        .expect("spawn the I/O thread");
    rx.recv().expect("I/O runtime handle")
}

/// `iters` calls one after the other, continuing the access pattern at `*next`; the time.
fn sequential<F, Fut>(
    ids: &'static [u64],
    next: &mut usize,
    iters: u64,
    f: F,
) -> impl std::future::Future<Output = Duration>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut i = *next;
    *next = (*next + iters as usize) & (PATTERN - 1);
    async move {
        let start = Instant::now();
        for _ in 0..iters {
            i = (i + 1) & (PATTERN - 1);
            f(ids[i]).await;
        }
        start.elapsed()
    }
}

/// `iters` calls spread over 64 tasks on the current runtime; the wall time.
async fn concurrent<F, Fut>(ids: &'static [u64], iters: u64, f: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let n = iters / TASKS + u64::from(t < iters % TASKS);
            let f = f.clone();
            tokio::spawn(async move {
                let mut i = (t as usize * 61) & (PATTERN - 1);
                for _ in 0..n {
                    i = (i + 1) & (PATTERN - 1);
                    f(ids[i]).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    start.elapsed()
}

fn redis_hit(c: &mut Criterion) {
    let server = start_redis();
    let rt = current_thread_runtime();
    let ids: &'static [u64] = access_pattern(PATTERN, KEYS)
        .into_iter()
        .map(|i| FIRST_ID + i)
        .collect::<Vec<_>>()
        .leak();
    // Connections are created inside the runtime that drives them.
    let conn = rt.block_on(async {
        let client = redis::Client::open(server.url()).expect("client");
        ConnectionManager::new(client)
            .await
            .expect("connection manager")
    });
    rt.block_on(async {
        let mut c = conn.clone();
        for id in FIRST_ID..FIRST_ID + KEYS {
            ours(id).await;
            rival(id).await.expect("rival fill");
            hand_redis_get(&mut c, id).await;
        }
        // One hit per key, as the timed loops' warm-up gives them: ours' connection then
        // keeps each entry's ticket (the first read of a key by a connection is `GET v`,
        // `CLIENT CACHING yes`, `GET t`; later ones `GET v` alone, docs/PROTOCOL.md §7.1).
        for id in FIRST_ID..FIRST_ID + KEYS {
            ours(id).await;
        }
    });
    ours_cache().reset_stats();

    // Round trips per hit, outside the timed runs.
    const COUNTED: u64 = 200;
    let ours_count = count_commands(server, COUNTED, || {
        rt.block_on(async {
            for &id in &ids[..COUNTED as usize] {
                black_box(ours(id).await);
            }
        })
    });
    record_commands("redis_hit", "commands/ours", &ours_count);
    let hand_count = count_commands(server, COUNTED, || {
        rt.block_on(async {
            let mut c = conn.clone();
            for &id in &ids[..COUNTED as usize] {
                black_box(hand_redis_get(&mut c, id).await);
            }
        })
    });
    record_commands("redis_hit", "commands/hand_written", &hand_count);
    let rival_count = count_commands(server, COUNTED, || {
        rt.block_on(async {
            for &id in &ids[..COUNTED as usize] {
                black_box(rival(id).await.expect("rival"));
            }
        })
    });
    record_commands("redis_hit", "commands/cached_crate", &rival_count);

    // Client-side cost per hit (CPU of this process, context switches), outside the timed
    // runs.
    let costed = if bench_mode() { 5_000 } else { 10 };
    let id = |k: u64| ids[k as usize & (PATTERN - 1)];
    record_cost(
        "redis_hit",
        "cost/ours",
        &sequential_cost!(rt, costed, |k| ours(id(k)).await),
    );
    let mut hand_conn = conn.clone();
    record_cost(
        "redis_hit",
        "cost/hand_written",
        &sequential_cost!(rt, costed, |k| hand_redis_get(&mut hand_conn, id(k)).await),
    );
    record_cost(
        "redis_hit",
        "cost/cached_crate",
        &sequential_cost!(rt, costed, |k| rival(id(k)).await.expect("rival")),
    );

    let mut g = c.benchmark_group("redis_hit");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("ours", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            sequential(ids, &mut i, iters, |id| async move {
                black_box(ours(id).await);
            })
        })
    });
    let mut i = 0;
    g.bench_function("hand_written", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let c = conn.clone();
            sequential(ids, &mut i, iters, move |id| {
                let mut c = c.clone();
                async move {
                    black_box(hand_redis_get(&mut c, id).await);
                }
            })
        })
    });
    let mut i = 0;
    g.bench_function("cached_crate", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            sequential(ids, &mut i, iters, |id| async move {
                black_box(rival(id).await.expect("rival"));
            })
        })
    });
    let mut i = 0;
    g.bench_function("raw_ping", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let c = conn.clone();
            sequential(ids, &mut i, iters, move |_| {
                let mut c = c.clone();
                async move { raw_ping(&mut c).await }
            })
        })
    });
    g.finish();

    // Where ours' extra time goes: the hand-written call moved to a dedicated I/O thread
    // (ours' architecture), and the hand-written call with ours' script shape.
    let io = io_thread();
    let io_conn = rt
        .block_on(io.spawn({
            let url = server.url();
            async move {
                ConnectionManager::new(redis::Client::open(url).expect("client"))
                    .await
                    .expect("connection manager")
            }
        }))
        .expect("connect on the I/O thread");
    let script = redis::Script::new(DIAG_SCRIPT);
    let mut g = c.benchmark_group("redis_hit_64_tasks");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ours", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            concurrent(ids, iters, |id| async move {
                black_box(ours(id).await);
            })
        })
    });
    g.bench_function("hand_written", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let c = conn.clone();
            concurrent(ids, iters, move |id| {
                let mut c = c.clone();
                async move {
                    black_box(hand_redis_get(&mut c, id).await);
                }
            })
        })
    });
    g.bench_function("cached_crate", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            concurrent(ids, iters, |id| async move {
                black_box(rival(id).await.expect("rival"));
            })
        })
    });
    g.bench_function("diag_hand_written_via_io_thread", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (io, c) = (io.clone(), io_conn.clone());
            concurrent(ids, iters, move |id| {
                let mut c = c.clone();
                let task = io.spawn(async move { hand_redis_get(&mut c, id).await });
                async move {
                    black_box(task.await.expect("hop"));
                }
            })
        })
    });
    g.finish();

    let costed64 = if bench_mode() { 20_000 } else { 64 };
    record_cost(
        "redis_hit",
        "cost_64_tasks/ours",
        &process_cost(costed64, || {
            rt.block_on(concurrent(ids, costed64, |id| async move {
                black_box(ours(id).await);
            }));
        }),
    );
    record_cost(
        "redis_hit",
        "cost_64_tasks/hand_written",
        &process_cost(costed64, || {
            let c = conn.clone();
            rt.block_on(concurrent(ids, costed64, move |id| {
                let mut c = c.clone();
                async move {
                    black_box(hand_redis_get(&mut c, id).await);
                }
            }));
        }),
    );
    record_cost(
        "redis_hit",
        "cost_64_tasks/cached_crate",
        &process_cost(costed64, || {
            rt.block_on(concurrent(ids, costed64, |id| async move {
                black_box(rival(id).await.expect("rival"));
            }));
        }),
    );

    let mut g = c.benchmark_group("redis_hit_diagnostics");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("thread_hop_only", |b| {
        let io = io.clone();
        b.to_async(&rt).iter_custom(|iters| {
            let io = io.clone();
            sequential(ids, &mut i, iters, move |id| {
                let task = io.spawn(async move { black_box(id) });
                async move {
                    black_box(task.await.expect("hop"));
                }
            })
        })
    });
    let mut i = 0;
    g.bench_function("hand_written_via_io_thread", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (io, c) = (io.clone(), io_conn.clone());
            sequential(ids, &mut i, iters, move |id| {
                let mut c = c.clone();
                let task = io.spawn(async move { hand_redis_get(&mut c, id).await });
                async move {
                    black_box(task.await.expect("hop"));
                }
            })
        })
    });
    let mut i = 0;
    g.bench_function("hand_written_script_shape", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (c, script) = (conn.clone(), script.clone());
            sequential(ids, &mut i, iters, move |id| {
                let (mut c, script) = (c.clone(), script.clone());
                async move {
                    black_box(hand_script(&mut c, &script, id).await);
                }
            })
        })
    });
    g.finish();

    let s = ours_cache().stats();
    record_fact("redis_hit", "ours_stats", format!("{s:?}").into());
    // A Redis error or timeout (the default 100 ms, on a loaded machine) is a miss by design.
    if s.redis_errors == 0 {
        assert_eq!(
            s.body_calls, 0,
            "every measured call of ours was a Redis hit"
        );
    } else {
        eprintln!("warning: ours had Redis errors or timeouts during the run: {s:?}");
    }
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = redis_hit
}
criterion_main!(benches);
