//! Benchmark 4: Stampede: 1 000 concurrent callers on one missing key (`local+redis`), on a
//! two-worker Tokio runtime. Measured: the time from spawning the callers until all are served.
//! Printed beside it: how many times the body ran (ours must be 1) and the Redis commands
//! issued.
//!
//! The body simulates a 1 ms query (`tokio::time::sleep`). Contenders: ours; hand-written
//! moka (`moka::future::Cache::get_with`, moka's own single-flight, around redis-rs `GET`
//! then body + `SET PX` on a miss); the `cached` crate's Redis store, which does not
//! deduplicate concurrent misses.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_benches::{count_commands, criterion, hand_key, our_key, profile, record_commands};
use cache_benches::{record_fact, redis_url, start_redis, two_worker_runtime, Profile};
use cached::AsyncRedisCache;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use redis::aio::ConnectionManager;

const CALLERS: usize = 1_000;
const TTL: Duration = Duration::from_secs(60);
const BODY: Duration = Duration::from_millis(1);

static OURS_RUNS: AtomicU64 = AtomicU64::new(0);
static HAND_RUNS: AtomicU64 = AtomicU64::new(0);
static RIVAL_RUNS: AtomicU64 = AtomicU64::new(0);
/// Each stampede uses a key nobody has read yet.
static NEXT_ID: AtomicU64 = AtomicU64::new(70_000_000);

#[cache_runtime::cached(tier = "local+redis", ttl = 60, key = "user:profile:<id>")]
async fn ours(id: u64) -> Profile {
    OURS_RUNS.fetch_add(1, Relaxed);
    tokio::time::sleep(BODY).await;
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
    create = r#"{ rival_store("stampede").await }"#,
    key = "String",
    convert = r#"{ our_key(id) }"#,
    map_error = r#"|e| format!("{e:?}")"#
)]
async fn rival(id: u64) -> Result<Profile, String> {
    RIVAL_RUNS.fetch_add(1, Relaxed);
    tokio::time::sleep(BODY).await;
    Ok(profile(id))
}

/// Hand-written: moka's `get_with` runs the init future once per key while the others wait.
struct Hand {
    moka: moka::future::Cache<String, Profile>,
    conn: ConnectionManager,
}

impl Hand {
    async fn get(&self, id: u64) -> Profile {
        let mut conn = self.conn.clone();
        self.moka
            .get_with(our_key(id), async move {
                let rkey = hand_key(id);
                let bytes: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&rkey)
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                if let Some(b) = bytes {
                    if let Ok((v, _)) = bincode::serde::decode_from_slice::<Profile, _>(
                        &b,
                        bincode::config::standard(),
                    ) {
                        return v;
                    }
                }
                HAND_RUNS.fetch_add(1, Relaxed);
                tokio::time::sleep(BODY).await;
                let v = profile(id);
                let b =
                    bincode::serde::encode_to_vec(&v, bincode::config::standard()).expect("encode");
                let _: () = redis::cmd("SET")
                    .arg(&rkey)
                    .arg(b)
                    .arg("PX")
                    .arg(TTL.as_millis() as u64)
                    .query_async(&mut conn)
                    .await
                    .expect("SET");
                v
            })
            .await
    }
}

/// One stampede: `CALLERS` tasks call `f(id)` for one fresh id; the time until all returned.
async fn stampede<F, Fut>(f: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let id = NEXT_ID.fetch_add(1, Relaxed);
    let start = Instant::now();
    let tasks: Vec<_> = (0..CALLERS).map(|_| tokio::spawn(f(id))).collect();
    for t in tasks {
        t.await.expect("caller");
    }
    start.elapsed()
}

async fn stampedes<F, Fut>(iters: u64, f: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        total += stampede(&f).await;
    }
    total
}

fn stampede_bench(c: &mut Criterion) {
    let server = start_redis();
    let rt = two_worker_runtime();
    let hand = Arc::new(rt.block_on(async {
        let client = redis::Client::open(server.url()).expect("client");
        Hand {
            moka: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            conn: ConnectionManager::new(client)
                .await
                .expect("connection manager"),
        }
    }));
    // Connect everything once (first calls pay connection set-up and script loading).
    rt.block_on(async {
        ours(1).await;
        hand.get(1).await;
        rival(1).await.expect("rival");
    });
    let ours_f = |id| async move {
        ours(id).await;
    };
    let hand_f = {
        let hand = hand.clone();
        move |id| {
            let hand = hand.clone();
            async move {
                hand.get(id).await;
            }
        }
    };
    let rival_f = |id| async move {
        rival(id).await.expect("rival");
    };

    // One counted stampede each, outside the timed runs.
    // Body runs of each counted stampede (`count_commands` runs it twice).
    let counted = |name: &str, runs: &AtomicU64, run: &dyn Fn() -> Duration| {
        let mut body_runs = Vec::new();
        let mut took = Vec::new();
        let count = count_commands(server, 1, || {
            let before = runs.load(Relaxed);
            took.push(run().as_secs_f64() * 1e3);
            body_runs.push(runs.load(Relaxed) - before);
        });
        record_fact(
            "stampede",
            &format!("body_runs/{name}"),
            serde_json::json!(body_runs[0]),
        );
        record_fact(
            "stampede",
            &format!("counted_run_ms/{name}"),
            serde_json::json!(took[0]),
        );
        record_commands("stampede", &format!("commands/{name}"), &count);
        body_runs
    };
    let ours_runs = counted("ours", &OURS_RUNS, &|| rt.block_on(stampede(ours_f)));
    assert_eq!(
        ours_runs,
        [1, 1],
        "1 000 concurrent misses run our body once"
    );
    counted("hand_written", &HAND_RUNS, &|| {
        rt.block_on(stampede(hand_f.clone()))
    });
    counted("cached_crate", &RIVAL_RUNS, &|| {
        rt.block_on(stampede(rival_f))
    });

    let mut g = c.benchmark_group("stampede_1000");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.bench_function("ours", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| stampedes(iters, ours_f))
    });
    g.bench_function("hand_written", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| stampedes(iters, hand_f.clone()))
    });
    g.bench_function("cached_crate", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| stampedes(iters, rival_f))
    });
    g.finish();
    let s = ours_cache().stats();
    record_fact("stampede", "ours_stats", format!("{s:?}").into());
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = stampede_bench
}
criterion_main!(benches);
