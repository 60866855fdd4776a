//! The local tier's candidate stores side by side (docs/LOCAL_TIER.md): our
//! `#[cached(tier = "local")]`, hand-written caches on moka, quick_cache and mini-moka, and
//! the `cached` crate's `#[cached]`, single thread and two threads, in one run.
//!
//! Same set-up as `local_hit`: 1 000 entries (20-byte keys, ~200-byte values) read in the
//! same pseudo-random order; every call is a hit and returns an owned clone.
//!
//! `cargo bench -p cache-benches --bench local_store`

use std::hint::black_box;

use cache_benches::stores::{HandStore, MiniMoka, Moka, Quick};
use cache_benches::two_threads;
use cache_benches::FIRST_ID;
use cache_benches::{access_pattern, criterion, init_local_only, our_key, profile, Profile};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

const KEYS: u64 = 1_000;
const PATTERN: usize = 4_096; // a power of two

#[cache_runtime::cached(tier = "local", ttl = 300, key = "user:profile:<id>")]
fn ours(id: u64) -> Profile {
    profile(id)
}

#[cached::macros::cached(
    max_size = 10_000,
    ttl_secs = 300,
    key = "String",
    convert = r#"{ our_key(id) }"#
)]
fn rival(id: u64) -> Profile {
    profile(id)
}

fn local_store(c: &mut Criterion) {
    init_local_only();
    let ids: Vec<u64> = access_pattern(PATTERN, KEYS)
        .into_iter()
        .map(|i| FIRST_ID + i)
        .collect();
    let (moka, quick, mini) = (Moka::new(), Quick::new(), MiniMoka::new());
    for id in FIRST_ID..FIRST_ID + KEYS {
        ours(id);
        rival(id);
        moka.get(id);
        quick.get(id);
        mini.get(id);
    }
    ours_cache().reset_stats();
    let contenders: [(&str, &(dyn Fn(u64) -> Profile + Sync)); 5] = [
        ("ours", &ours),
        ("moka", &|id| moka.get(id)),
        ("quick_cache", &|id| quick.get(id)),
        ("mini_moka", &|id| mini.get(id)),
        ("cached_crate", &rival),
    ];

    let mut g = c.benchmark_group("local_store");
    g.throughput(Throughput::Elements(1));
    for (name, f) in contenders {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & (PATTERN - 1);
                f(black_box(ids[i]))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("local_store_2_threads");
    g.throughput(Throughput::Elements(1));
    g.sampling_mode(SamplingMode::Flat);
    for (name, f) in contenders {
        g.bench_function(name, |b| b.iter_custom(|n| two_threads(&ids, n, f)));
    }
    g.finish();

    let s = ours_cache().stats();
    assert_eq!(s.misses, 0, "every measured call of ours was a hit");
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = local_store
}
criterion_main!(benches);
