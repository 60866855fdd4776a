//! Benchmark 1: Local hit: `#[cached(tier = "local")]` against hand-written moka and the
//! `cached` crate's `#[cached]`, single thread (a plain call and an `async fn`'s future) and
//! two threads.
//!
//! All three hold the same 1 000 entries (21-byte keys, ~200-byte values) and read them in
//! the same pseudo-random order; every call is a hit and returns an owned clone.

use std::hint::black_box;

use cache_benches::stores::{HandStore, Moka, MokaFuture};
use cache_benches::{access_pattern, criterion, init_local_only, our_key, profile, Profile};
use cache_benches::{bench_mode, current_thread_runtime, poll_ready, process_cost, record_cost};
use cache_benches::{record_fact, two_threads, FIRST_ID};
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

/// Ours as an `async fn`: the same cache, reached through its future.
#[cache_runtime::cached(tier = "local", ttl = 300, key = "user:profile:<id>")]
async fn ours_async(id: u64) -> Profile {
    profile(id)
}

/// The `cached` crate's `#[cached]` on an `async fn` (its store behind an async mutex).
#[cached::macros::cached(
    max_size = 10_000,
    ttl_secs = 300,
    key = "String",
    convert = r#"{ our_key(id) }"#
)]
async fn rival_async(id: u64) -> Profile {
    profile(id)
}

fn local_hit(c: &mut Criterion) {
    init_local_only();
    let ids: Vec<u64> = access_pattern(PATTERN, KEYS)
        .into_iter()
        .map(|i| FIRST_ID + i)
        .collect();
    // Hand-written moka: `format!` the key, `get` (a clone), fill on a miss; same capacity
    // and TTL as ours.
    let hand = Moka::new();
    // Hand-written async: moka's `future::Cache` (`get(..).await`).
    let hand_async = MokaFuture::new();
    let rt = current_thread_runtime();
    for id in FIRST_ID..FIRST_ID + KEYS {
        ours(id);
        rival(id);
        hand.get(id);
        rt.block_on(async {
            ours_async(id).await;
            rival_async(id).await;
            hand_async.get(id).await;
        });
    }
    ours_cache().reset_stats();
    ours_async_cache().reset_stats();
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

    // The same hits through each contender's future, polled on this thread with a no-op
    // waker (`poll_ready`): the futures' own cost, no executor's.
    let mut g = c.benchmark_group("local_hit_future");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("ours", |b| {
        b.iter(|| {
            i = (i + 1) & (PATTERN - 1);
            poll_ready(ours_async(black_box(ids[i])))
        })
    });
    let mut i = 0;
    g.bench_function("hand_written", |b| {
        b.iter(|| {
            i = (i + 1) & (PATTERN - 1);
            poll_ready(hand_async.get(black_box(ids[i])))
        })
    });
    let mut i = 0;
    g.bench_function("cached_crate", |b| {
        b.iter(|| {
            i = (i + 1) & (PATTERN - 1);
            poll_ready(rival_async(black_box(ids[i])))
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

    // Allocations and CPU per hit, outside the timed runs.
    let costed = if bench_mode() { 1_000_000 } else { 100 };
    let cost = |f: &dyn Fn(u64) -> Profile| {
        process_cost(costed, || {
            for k in 0..costed {
                black_box(f(ids[k as usize & (PATTERN - 1)]));
            }
        })
    };
    record_cost("local_hit", "cost/ours", &cost(&ours));
    record_cost("local_hit", "cost/hand_written", &cost(&|id| hand.get(id)));
    record_cost("local_hit", "cost/cached_crate", &cost(&rival));
    record_cost(
        "local_hit_future",
        "cost/ours",
        &cost(&|id| poll_ready(ours_async(id))),
    );
    record_cost(
        "local_hit_future",
        "cost/hand_written",
        &cost(&|id| poll_ready(hand_async.get(id))),
    );
    record_cost(
        "local_hit_future",
        "cost/cached_crate",
        &cost(&|id| poll_ready(rival_async(id))),
    );

    let s = ours_cache().stats();
    record_fact("local_hit", "ours_stats", format!("{s:?}").into());
    assert_eq!(s.body_calls, 0, "every measured call of ours was a hit");
    assert_eq!(s.misses, 0, "every measured call of ours was a hit");
    let s = ours_async_cache().stats();
    assert_eq!(
        s.body_calls, 0,
        "every measured call of ours (async) was a hit"
    );
    assert_eq!(s.misses, 0, "every measured call of ours (async) was a hit");
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = local_hit
}
criterion_main!(benches);
