//! Benchmark 5: Invalidate: the cost of one `invalidate_<fn>` call on a `tier = "redis"` cache
//! (and, for reference, on a `local+redis` one), against hand-written redis-rs `DEL` and the
//! `cached` crate's `async_cache_delete` (a plain `DEL`), and against the hand-written
//! equivalent of ours' guarantee: `DEL` + `PUBLISH` in one pipeline, with a subscriber to the
//! channel in the process (`hand_del_publish`; Redis delivers each message to the publisher's
//! own subscription too, as it does ours), and against the hand-written equivalent of ours'
//! commands in a process that does not subscribe (`hand_protocol`: `DEL v t`, `PUBLISH` to a
//! channel nobody hears, `SET t PX`, one pipeline). Most calls delete an existing entry:
//! the key pools are refilled (untimed) whenever a contender has gone through them.
//!
//! Group `invalidate_tag`: one `cache_runtime::invalidate_tag` call (the tag's token deleted,
//! the bus message published) against the hand-written floor of an O(1) tag invalidation,
//! `DEL` of a tag-version key, and the same with its bus message (`DEL` + `PUBLISH`, one
//! pipeline, subscribed in the process). Each call's tag has a live token (ours: created by
//! a read of an entry carrying the tag; hand-written: `SET`), refilled like the key pools.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cache_benches::hand_invalidate_protocol;
use cache_benches::RedisServer;
use cache_benches::{bench_mode, count_commands, criterion, current_thread_runtime, hand_key};
use cache_benches::{hand_bus_subscriber, hand_del_publish, hand_del_publish_of};
use cache_benches::{our_key, profile, record_commands, record_fact, redis_url, start_redis};
use cache_benches::{process_cost, raw_ping, record_cost, Profile, FIRST_ID};
use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use redis::aio::ConnectionManager;

const TTL: Duration = Duration::from_secs(300);

/// Entries per contender; refilled (untimed) when a contender has deleted them all.
fn pool() -> u64 {
    if bench_mode() {
        20_000
    } else {
        16
    }
}

/// After a refill of ours: lets the runtime's bus subscriber process the refill's messages
/// before timing resumes (every `populate` publishes one, and this process receives its own).
async fn settle(who: Who) {
    if who.ours() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cache_runtime::cached(tier = "redis", ttl = 300, key = "user:profile:<id>")]
#[allow(dead_code)] // only its companions are called (`<fn>_uncached` would warn)
async fn ours(id: u64) -> Profile {
    profile(id)
}

#[cache_runtime::cached(tier = "local+redis", ttl = 300, key = "two:profile:<id>")]
#[allow(dead_code)] // only its companions are called (`<fn>_uncached` would warn)
async fn ours_two_tier(id: u64) -> Profile {
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
    create = r#"{ rival_store("invalidate").await }"#,
    key = "String",
    convert = r#"{ our_key(id) }"#,
    map_error = r#"|e| format!("{e:?}")"#
)]
async fn rival(id: u64) -> Result<Profile, String> {
    Ok(profile(id))
}

/// An entry carrying the tag `team:<id>`: reading it creates the tag's token in Redis.
#[cache_runtime::cached(tier = "redis", ttl = 300, key = "tagged:<id>", tags = ["team:<id>"])]
async fn ours_tagged(id: u64) -> Profile {
    profile(id)
}

/// The hand-written tag-version key of `team:<id>`.
fn hand_tag_key(id: u64) -> String {
    format!("hw:tag:team:{id}")
}

#[derive(Clone, Copy)]
enum Who {
    Ours,
    OursTwoTier,
    Hand,
    /// Hand-written `DEL` + `PUBLISH` with a subscriber in the process: ours' guarantee
    /// written by hand.
    HandPublish,
    /// Hand-written `DEL v t` + `PUBLISH` (to a channel nobody hears) + `SET t PX`: the
    /// commands of ours in a process that does not subscribe.
    HandProtocol,
    Rival,
    /// `invalidate_tag("team:<id>")`.
    OursTag,
    /// `DEL` of the tag's version key.
    HandTag,
    /// `DEL` of the tag's version key + `PUBLISH`, one pipeline, subscribed in the process.
    HandTagPublish,
}

impl Who {
    fn ours(self) -> bool {
        matches!(self, Who::Ours | Who::OursTwoTier | Who::OursTag)
    }
}

/// Writes the pool's entries for one contender, 64 writes in flight.
async fn fill(who: Who, conn: &ConnectionManager, pool: u64) {
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..64 {
        let mut conn = conn.clone();
        tasks.spawn(async move {
            let mut id = FIRST_ID + lane;
            while id < FIRST_ID + pool {
                match who {
                    Who::Ours => populate_ours(id, profile(id)).await.expect("populate"),
                    Who::OursTwoTier => populate_ours_two_tier(id, profile(id))
                        .await
                        .expect("populate"),
                    Who::Hand | Who::HandPublish | Who::HandProtocol => {
                        let b =
                            bincode::serde::encode_to_vec(profile(id), bincode::config::standard())
                                .expect("encode");
                        let _: () = redis::cmd("SET")
                            .arg(hand_key(id))
                            .arg(b)
                            .arg("PX")
                            .arg(TTL.as_millis() as u64)
                            .query_async(&mut conn)
                            .await
                            .expect("SET");
                    }
                    Who::Rival => {
                        rival_prime_cache(id).await.expect("prime");
                    }
                    Who::OursTag => {
                        black_box(ours_tagged(id).await);
                    }
                    Who::HandTag | Who::HandTagPublish => {
                        let _: () = redis::cmd("SET")
                            .arg(hand_tag_key(id))
                            .arg(id.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                            .arg("PX")
                            .arg(TTL.as_millis() as u64)
                            .query_async(&mut conn)
                            .await
                            .expect("SET");
                    }
                }
                id += 64;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("fill task");
    }
}

async fn invalidate(who: Who, conn: &mut ConnectionManager, id: u64) {
    match who {
        Who::Ours => invalidate_ours(id).await.expect("invalidate"),
        Who::OursTwoTier => invalidate_ours_two_tier(id).await.expect("invalidate"),
        Who::Hand => {
            let _: i64 = redis::cmd("DEL")
                .arg(hand_key(id))
                .query_async(conn)
                .await
                .expect("DEL");
        }
        Who::HandPublish => hand_del_publish(conn, id).await,
        Who::HandProtocol => hand_invalidate_protocol(conn, id).await,
        Who::Rival => {
            let store = RIVAL.get().expect("the rival store is built by the fill");
            black_box(
                store
                    .async_cache_delete(&our_key(id))
                    .await
                    .expect("async_cache_delete"),
            );
        }
        Who::OursTag => cache_runtime::invalidate_tag(&format!("team:{id}"))
            .await
            .expect("invalidate_tag"),
        Who::HandTag => {
            let _: i64 = redis::cmd("DEL")
                .arg(hand_tag_key(id))
                .query_async(conn)
                .await
                .expect("DEL");
        }
        Who::HandTagPublish => hand_tag_del_publish(conn, id).await,
    }
}

/// Hand-written tag invalidation with its bus message: `DEL` of the tag's version key and a
/// `PUBLISH` shaped like ours (origin, action, time sent, tag), one pipeline.
async fn hand_tag_del_publish(conn: &mut ConnectionManager, id: u64) {
    hand_del_publish_of(conn, &hand_tag_key(id), 'T', &format!("team:{id}")).await;
}

fn invalidate_bench(c: &mut Criterion) {
    let server = start_redis();
    let rt = current_thread_runtime();
    let conn = rt.block_on(async {
        let client = redis::Client::open(server.url()).expect("client");
        ConnectionManager::new(client)
            .await
            .expect("connection manager")
    });
    hand_bus_subscriber();
    // The Redis-only rows first: until a cache with a local tier is built the process has
    // no bus subscription (docs/PROTOCOL.md §5.2), as a process whose caches are all
    // Redis-only, and no echo of its own messages. `ours_local_redis` comes last, below.
    let keys = [
        ("ours", Who::Ours),
        ("hand_written", Who::Hand),
        ("hand_del_publish", Who::HandPublish),
        ("hand_protocol", Who::HandProtocol),
        ("cached_crate", Who::Rival),
    ];
    let mut g = c.benchmark_group("invalidate");
    contenders(&mut g, server, &rt, &conn, "invalidate", &keys);
    g.bench_function("raw_ping", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let mut c = conn.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    raw_ping(&mut c).await;
                }
                start.elapsed()
            }
        })
    });
    g.finish();
    let tags = [
        ("ours", Who::OursTag),
        ("hand_written", Who::HandTag),
        ("hand_del_publish", Who::HandTagPublish),
    ];
    let mut g = c.benchmark_group("invalidate_tag");
    contenders(&mut g, server, &rt, &conn, "invalidate_tag", &tags);
    g.finish();
    // A `local+redis` cache subscribes the process from its build on: every message,
    // its own included, is then delivered to it too.
    let mut g = c.benchmark_group("invalidate");
    let two_tier = [("ours_local_redis", Who::OursTwoTier)];
    contenders(&mut g, server, &rt, &conn, "invalidate", &two_tier);
    g.finish();
    record_fact(
        "invalidate",
        "ours_stats",
        format!("{:?}", ours_cache().stats()).into(),
    );
    record_fact(
        "invalidate",
        "ours_local_redis_stats",
        format!("{:?}", ours_two_tier_cache().stats()).into(),
    );
    record_fact(
        "invalidate_tag",
        "ours_stats",
        format!("{:?}", ours_tagged_cache().stats()).into(),
    );
}

/// Counts each contender's commands and client cost (facts under `bench`), then times it in
/// `g`, on pools of live entries (refilled, untimed, when a contender has gone through them).
fn contenders(
    g: &mut BenchmarkGroup<'_, WallTime>,
    server: &RedisServer,
    rt: &tokio::runtime::Runtime,
    conn: &ConnectionManager,
    bench: &str,
    contenders: &[(&str, Who)],
) {
    let pool = pool();
    for &(name, who) in contenders {
        rt.block_on(async {
            fill(who, conn, pool).await;
            // Not part of the steady state: the first use of a script loads it, and the
            // runtime opens this runtime's own connections (the lane among them) after its
            // first calls. Ids below the pool's.
            for id in 1..=64 {
                invalidate(who, &mut conn.clone(), id).await;
            }
            settle(who).await;
        });
        let n = 100.min(pool);
        let count = count_commands(server, n, || {
            rt.block_on(async {
                let mut c = conn.clone();
                for id in FIRST_ID..FIRST_ID + n {
                    invalidate(who, &mut c, id).await;
                }
            })
        });
        record_commands(bench, &format!("commands/{name}"), &count);
        // Client-side cost (CPU of this process, context switches) on existing entries.
        let costed = (pool - n).min(2_000);
        let cost = process_cost(costed, || {
            rt.block_on(async {
                let mut c = conn.clone();
                for id in FIRST_ID + n..FIRST_ID + n + costed {
                    invalidate(who, &mut c, id).await;
                }
            })
        });
        record_cost(bench, &format!("cost/{name}"), &cost);
    }

    // The counting above deleted some entries: refill every pool once more.
    rt.block_on(async {
        for &(_, who) in contenders {
            fill(who, conn, pool).await;
        }
        settle(Who::Ours).await;
    });

    g.throughput(Throughput::Elements(1));
    for &(name, who) in contenders {
        // Across samples (criterion calls the closure once per sample).
        let mut next = 0u64;
        g.bench_function(name, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let start = next;
                next += iters;
                let conn = conn.clone();
                async move {
                    let mut c = conn.clone();
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let k = (start + i) % pool;
                        if k == 0 && start + i > 0 {
                            fill(who, &conn, pool).await;
                            settle(who).await;
                        }
                        let t = Instant::now();
                        invalidate(who, &mut c, FIRST_ID + k).await;
                        total += t.elapsed();
                    }
                    total
                }
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = invalidate_bench
}
criterion_main!(benches);
