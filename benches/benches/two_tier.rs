//! Benchmark 3: local+redis: the promotion path (local miss, Redis hit, value promoted to the
//! local tier) and miss + populate (local miss, Redis miss, body, store in both tiers), against
//! hand-written moka + redis-rs; miss + populate also against the `cached` crate's Redis store
//! (it has no two-tier mode).
//!
//! Each call is timed on its own, so that housekeeping between calls (clearing the local
//! tier when the promotion pool wraps around) stays out of the measurement.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use cache_benches::{bench_mode, count_commands, criterion, current_thread_runtime, hand_key};
use cache_benches::{our_key, profile, record_commands, record_fact, redis_url, start_redis};
use cache_benches::{raw_ping, record_cost, sequential_cost, Profile, FIRST_ID};
use cached::AsyncRedisCache;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use redis::aio::ConnectionManager;

const TTL: Duration = Duration::from_secs(300);
/// Keys written to Redis for the promotion path; the local tiers are cleared (untimed) each
/// time a contender has gone through all of them.
fn pool() -> u64 {
    if bench_mode() {
        10_000
    } else {
        16
    }
}

static BODY_RUNS: AtomicU64 = AtomicU64::new(0);

#[cache_runtime::cached(tier = "local+redis", ttl = 300, key = "user:profile:<id>")]
async fn ours(id: u64) -> Profile {
    BODY_RUNS.fetch_add(1, Relaxed);
    profile(id)
}

/// Same key template and value type as `ours`: stands in for another process that wrote the
/// entries ours then finds in Redis.
#[cache_runtime::cached(tier = "local+redis", ttl = 300, key = "user:profile:<id>")]
#[allow(dead_code)] // only its companions are called (`<fn>_uncached` would warn)
async fn other_process(id: u64) -> Profile {
    profile(id)
}

async fn rival_store(prefix: &str) -> AsyncRedisCache<String, Profile> {
    AsyncRedisCache::builder(prefix)
        .connection_string(&redis_url())
        .connection_manager(true)
        .ttl(TTL)
        .build()
        .await
        .expect("build the cached crate's AsyncRedisCache")
}

#[cached::macros::concurrent_cached(
    ty = "cached::AsyncRedisCache<String, Profile>",
    create = r#"{ rival_store("two-tier").await }"#,
    key = "String",
    convert = r#"{ our_key(id) }"#,
    map_error = r#"|e| format!("{e:?}")"#
)]
async fn rival(id: u64) -> Result<Profile, String> {
    Ok(profile(id))
}

/// Hand-written two tiers: moka (local TTL 30 s, like ours' default `local_ttl`) in front of
/// redis-rs (`GET` + bincode 2 decode; on a miss: body, encode, `SET PX`), then a local insert.
struct Hand {
    moka: moka::sync::Cache<String, Profile>,
    conn: ConnectionManager,
}

impl Hand {
    async fn get(&self, id: u64) -> Profile {
        let key = our_key(id);
        if let Some(v) = self.moka.get(&key) {
            return v;
        }
        let mut conn = self.conn.clone();
        let rkey = hand_key(id);
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&rkey)
            .query_async(&mut conn)
            .await
            .expect("GET");
        if let Some(b) = bytes {
            if let Ok((v, _)) =
                bincode::serde::decode_from_slice::<Profile, _>(&b, bincode::config::standard())
            {
                self.moka.insert(key, v.clone());
                return v;
            }
        }
        let v = profile(id);
        let b = bincode::serde::encode_to_vec(&v, bincode::config::standard()).expect("encode");
        let _: () = redis::cmd("SET")
            .arg(&rkey)
            .arg(b)
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .expect("SET");
        self.moka.insert(key, v.clone());
        v
    }
}

/// Times `iters` calls one by one; `before(i)` runs untimed before call `i`.
async fn each<F, Fut>(iters: u64, mut before: impl FnMut(u64), f: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut total = Duration::ZERO;
    for i in 0..iters {
        before(i);
        let start = Instant::now();
        f(i).await;
        total += start.elapsed();
    }
    total
}

fn two_tier(c: &mut Criterion) {
    let server = start_redis();
    let rt = current_thread_runtime();
    let pool = pool();
    let hand = rt.block_on(async {
        let client = redis::Client::open(server.url()).expect("client");
        Hand {
            moka: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            conn: ConnectionManager::new(client)
                .await
                .expect("connection manager"),
        }
    });

    // The promotion pool: written to Redis by "another process" (ours) and by raw SETs
    // (hand-written), 64 writes in flight.
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in 0..64 {
            let conn = hand.conn.clone();
            tasks.spawn(async move {
                let mut conn = conn;
                let mut id = FIRST_ID + chunk;
                while id < FIRST_ID + pool {
                    populate_other_process(id, profile(id))
                        .await
                        .expect("populate");
                    let b = bincode::serde::encode_to_vec(profile(id), bincode::config::standard())
                        .expect("encode");
                    let _: () = redis::cmd("SET")
                        .arg(hand_key(id))
                        .arg(b)
                        .arg("PX")
                        .arg(TTL.as_millis() as u64)
                        .query_async(&mut conn)
                        .await
                        .expect("SET");
                    id += 64;
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("fill task");
        }
    });
    ours_cache().clear_local();
    ours_cache().reset_stats();

    // Round trips, outside the timed runs: 100 promotions and 100 miss + populates each,
    // after one call of each kind (the first use of a script loads it).
    const COUNTED: u64 = 100;
    let fresh = AtomicU64::new(50_000_000);
    let next_fresh = || fresh.fetch_add(1, Relaxed);
    rt.block_on(async {
        // Every populate publishes on the invalidation bus, which this process also
        // receives: let its subscriber catch up before anything is measured.
        tokio::time::sleep(Duration::from_secs(1)).await;
        populate_other_process(1, profile(1))
            .await
            .expect("populate");
        ours(1).await;
        ours(next_fresh()).await;
        hand.get(next_fresh()).await;
        rival(next_fresh()).await.expect("rival");
    });
    let promoted = COUNTED.min(pool);
    let promo_ours = count_commands(server, promoted, || {
        ours_cache().clear_local();
        rt.block_on(async {
            for id in FIRST_ID..FIRST_ID + promoted {
                black_box(ours(id).await);
            }
        })
    });
    let promo_hand = count_commands(server, promoted, || {
        hand.moka.invalidate_all();
        rt.block_on(async {
            for id in FIRST_ID..FIRST_ID + promoted {
                black_box(hand.get(id).await);
            }
        })
    });
    let miss_ours = count_commands(server, COUNTED, || {
        rt.block_on(async {
            for _ in 0..COUNTED {
                black_box(ours(next_fresh()).await);
            }
        })
    });
    let miss_hand = count_commands(server, COUNTED, || {
        rt.block_on(async {
            for _ in 0..COUNTED {
                black_box(hand.get(next_fresh()).await);
            }
        })
    });
    let miss_rival = count_commands(server, COUNTED, || {
        rt.block_on(async {
            for _ in 0..COUNTED {
                black_box(rival(next_fresh()).await.expect("rival"));
            }
        })
    });
    // Client-side cost (CPU of this process, context switches) of promotions.
    let costed = if bench_mode() { 2_000 } else { pool };
    ours_cache().clear_local();
    hand.moka.invalidate_all();
    let cost_ours = sequential_cost!(rt, costed, |k| ours(FIRST_ID + k).await);
    let cost_hand = sequential_cost!(rt, costed, |k| hand.get(FIRST_ID + k).await);
    record_cost("two_tier", "cost/promotion/ours", &cost_ours);
    record_cost("two_tier", "cost/promotion/hand_written", &cost_hand);
    // And of miss + populates, each on a key never seen before.
    let costed_miss = costed.min(2_000);
    record_cost(
        "two_tier",
        "cost/miss_populate/ours",
        &sequential_cost!(rt, costed_miss, |_k| ours(next_fresh()).await),
    );
    record_cost(
        "two_tier",
        "cost/miss_populate/hand_written",
        &sequential_cost!(rt, costed_miss, |_k| hand.get(next_fresh()).await),
    );
    record_cost(
        "two_tier",
        "cost/miss_populate/cached_crate",
        &sequential_cost!(rt, costed_miss, |_k| rival(next_fresh())
            .await
            .expect("rival")),
    );
    record_commands("two_tier", "commands/promotion/ours", &promo_ours);
    record_commands("two_tier", "commands/promotion/hand_written", &promo_hand);
    record_commands("two_tier", "commands/miss_populate/ours", &miss_ours);
    record_commands(
        "two_tier",
        "commands/miss_populate/hand_written",
        &miss_hand,
    );
    record_commands(
        "two_tier",
        "commands/miss_populate/cached_crate",
        &miss_rival,
    );
    ours_cache().clear_local();
    hand.moka.invalidate_all();
    ours_cache().reset_stats();
    BODY_RUNS.store(0, Relaxed);

    let mut g = c.benchmark_group("promotion");
    g.throughput(Throughput::Elements(1));
    let mut next = 0u64;
    g.bench_function("ours", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let start = next;
            next += iters;
            each(
                iters,
                move |i| {
                    if (start + i).is_multiple_of(pool) {
                        ours_cache().clear_local();
                    }
                },
                move |i| async move {
                    black_box(ours(FIRST_ID + (start + i) % pool).await);
                },
            )
        })
    });
    let mut next = 0u64;
    g.bench_function("hand_written", |b| {
        let hand = &hand;
        b.to_async(&rt).iter_custom(|iters| {
            let start = next;
            next += iters;
            each(
                iters,
                move |i| {
                    if (start + i).is_multiple_of(pool) {
                        hand.moka.invalidate_all();
                    }
                },
                move |i| async move {
                    black_box(hand.get(FIRST_ID + (start + i) % pool).await);
                },
            )
        })
    });
    g.finish();
    let s = ours_cache().stats();
    record_fact("two_tier", "promotion/ours_stats", format!("{s:?}").into());
    // A Redis error or timeout (the default 100 ms, on a loaded machine) is a miss by design.
    if s.redis_errors == 0 {
        assert_eq!(BODY_RUNS.load(Relaxed), 0, "promotions never run the body");
    } else {
        eprintln!("warning: ours had Redis errors or timeouts during the run: {s:?}");
    }

    let mut g = c.benchmark_group("miss_populate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ours", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let ids: Vec<u64> = (0..iters).map(|_| next_fresh()).collect();
            each(
                iters,
                |_| {},
                move |i| {
                    let id = ids[i as usize];
                    async move {
                        black_box(ours(id).await);
                    }
                },
            )
        })
    });
    g.bench_function("hand_written", |b| {
        let hand = &hand;
        b.to_async(&rt).iter_custom(|iters| {
            let ids: Vec<u64> = (0..iters).map(|_| next_fresh()).collect();
            each(
                iters,
                |_| {},
                move |i| {
                    let id = ids[i as usize];
                    async move {
                        black_box(hand.get(id).await);
                    }
                },
            )
        })
    });
    g.bench_function("raw_ping", |b| {
        let conn = hand.conn.clone();
        b.to_async(&rt).iter_custom(|iters| {
            let conn = conn.clone();
            each(
                iters,
                |_| {},
                move |_| {
                    let mut c = conn.clone();
                    async move { raw_ping(&mut c).await }
                },
            )
        })
    });
    g.bench_function("cached_crate", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let ids: Vec<u64> = (0..iters).map(|_| next_fresh()).collect();
            each(
                iters,
                |_| {},
                move |i| {
                    let id = ids[i as usize];
                    async move {
                        black_box(rival(id).await.expect("rival"));
                    }
                },
            )
        })
    });
    g.finish();
    let s = ours_cache().stats();
    record_fact(
        "two_tier",
        "miss_populate/ours_stats",
        format!("{s:?}").into(),
    );
    assert_eq!(
        BODY_RUNS.load(Relaxed),
        s.body_calls,
        "every miss ran the body once"
    );
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = two_tier
}
criterion_main!(benches);
