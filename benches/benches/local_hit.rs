//! Benchmark 1: Local hit: `#[cached(tier = "local")]` against hand-written moka and the
//! `cached` crate's `#[cached]`, single thread and two threads.
//!
//! All three hold the same 1 000 entries (21-byte keys, ~200-byte values) and read them in
//! the same pseudo-random order; every call is a hit and returns an owned clone.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cache_benches::{access_pattern, criterion, init_local_only, our_key, profile, Profile};
use cache_benches::{record_fact, FIRST_ID};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

const KEYS: u64 = 1_000;
const PATTERN: usize = 4_096; // a power of two

#[cache_runtime::cached(tier = "local", ttl = 300, key = "user:profile:<id>")]
fn ours(id: u64) -> Profile {
    profile(id)
}

/// The `cached` crate, configured like ours: bounded (LRU, 10 000), TTL 300 s, and the same
/// string key.
#[cached::macros::cached(
    max_size = 10_000,
    ttl_secs = 300,
    key = "String",
    convert = r#"{ our_key(id) }"#
)]
fn rival(id: u64) -> Profile {
    profile(id)
}

/// Hand-written moka: `format!` the key, `moka::sync::Cache::get` (which returns a clone),
/// fill on a miss. Same capacity and TTL as ours.
struct Hand {
    moka: moka::sync::Cache<String, Profile>,
}

impl Hand {
    fn new() -> Self {
        Self {
            moka: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
        }
    }

    fn get(&self, id: u64) -> Profile {
        let key = our_key(id);
        if let Some(v) = self.moka.get(&key) {
            return v;
        }
        let v = profile(id);
        self.moka.insert(key, v.clone());
        v
    }
}

/// Runs `iters` calls split over two threads (each walking the pattern from its own offset);
/// the wall time from start to both done.
fn two_threads(ids: &[u64], iters: u64, f: &(dyn Fn(u64) -> Profile + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let n = iters / 2 + (t < iters % 2) as u64;
            s.spawn(move || {
                let mut i = (t as usize) * PATTERN / 2;
                for _ in 0..n {
                    i = (i + 1) & (PATTERN - 1);
                    black_box(f(black_box(ids[i])));
                }
            });
        }
    });
    start.elapsed()
}

fn local_hit(c: &mut Criterion) {
    init_local_only();
    let ids: Vec<u64> = access_pattern(PATTERN, KEYS)
        .into_iter()
        .map(|i| FIRST_ID + i)
        .collect();
    let hand = Hand::new();
    for id in FIRST_ID..FIRST_ID + KEYS {
        ours(id);
        rival(id);
        hand.get(id);
    }
    ours_cache().reset_stats();
    record_fact(
        "local_hit",
        "key",
        format!("{} ({} bytes)", our_key(FIRST_ID), our_key(FIRST_ID).len()).into(),
    );

    let mut g = c.benchmark_group("local_hit");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("ours", |b| {
        b.iter(|| {
            i = (i + 1) & (PATTERN - 1);
            ours(black_box(ids[i]))
        })
    });
    let mut i = 0;
    g.bench_function("hand_written", |b| {
        b.iter(|| {
            i = (i + 1) & (PATTERN - 1);
            hand.get(black_box(ids[i]))
        })
    });
    let mut i = 0;
    g.bench_function("cached_crate", |b| {
        b.iter(|| {
            i = (i + 1) & (PATTERN - 1);
            rival(black_box(ids[i]))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("local_hit_2_threads");
    g.throughput(Throughput::Elements(1));
    // Equal samples: thread start-up (tens of µs) stays below 0.2% of each ~60 ms sample.
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("ours", |b| b.iter_custom(|n| two_threads(&ids, n, &ours)));
    g.bench_function("hand_written", |b| {
        b.iter_custom(|n| two_threads(&ids, n, &|id| hand.get(id)))
    });
    g.bench_function("cached_crate", |b| {
        b.iter_custom(|n| two_threads(&ids, n, &rival))
    });
    g.finish();

    let s = ours_cache().stats();
    record_fact("local_hit", "ours_stats", format!("{s:?}").into());
    assert_eq!(s.body_calls, 0, "every measured call of ours was a hit");
    assert_eq!(s.misses, 0, "every measured call of ours was a hit");
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = local_hit
}
criterion_main!(benches);
