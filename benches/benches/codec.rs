//! Benchmark 6: Codec: encode + decode of the benchmark value with bincode 2 (standard
//! configuration, through serde, as our runtime uses it for the payload of its Redis envelope),
//! the runtime's whole envelope (`codec::encode` + `codec::decode`: header, checksum, the
//! guard around bincode), MessagePack with field names (rmp-serde `write_named`, the
//! runtime's format for values bincode would not read back as written), postcard and
//! serde_json. Each round trip allocates its output `Vec` (as the runtime does) and decodes
//! into an owned value.

use std::hint::black_box;

use cache_benches::{criterion, profile, record_fact, Profile, FIRST_ID};
use criterion::{criterion_group, criterion_main, Criterion};

const FP: u64 = 0x5eed;
const TTL: std::time::Duration = std::time::Duration::from_secs(300);

fn codec_bench(c: &mut Criterion) {
    let value = profile(FIRST_ID);
    let std = bincode::config::standard();

    let sizes = serde_json::json!({
        "bincode2": bincode::serde::encode_to_vec(&value, std).expect("bincode").len(),
        "envelope": cache_runtime::codec::encode(&value, FP, TTL, &[]).expect("envelope").len(),
        "messagepack_named": rmp_serde::to_vec_named(&value).expect("rmp").len(),
        "postcard": postcard::to_allocvec(&value).expect("postcard").len(),
        "serde_json": serde_json::to_vec(&value).expect("json").len(),
    });
    record_fact("codec", "encoded_bytes", sizes);

    let mut g = c.benchmark_group("codec_roundtrip");
    g.bench_function("bincode2_serde", |b| {
        b.iter(|| {
            let bytes = bincode::serde::encode_to_vec(black_box(&value), std).expect("encode");
            let (v, _): (Profile, usize) =
                bincode::serde::decode_from_slice(black_box(&bytes), std).expect("decode");
            v
        })
    });
    g.bench_function("envelope_ours", |b| {
        b.iter(|| {
            let bytes =
                cache_runtime::codec::encode(black_box(&value), FP, TTL, &[]).expect("encode");
            cache_runtime::codec::decode::<Profile>(black_box(&bytes), FP, 1 << 20)
                .expect("decode")
                .value
        })
    });
    g.bench_function("messagepack_named", |b| {
        b.iter(|| {
            let bytes = rmp_serde::to_vec_named(black_box(&value)).expect("encode");
            let v: Profile = rmp_serde::from_slice(black_box(&bytes)).expect("decode");
            v
        })
    });
    g.bench_function("postcard", |b| {
        b.iter(|| {
            let bytes = postcard::to_allocvec(black_box(&value)).expect("encode");
            let v: Profile = postcard::from_bytes(black_box(&bytes)).expect("decode");
            v
        })
    });
    g.bench_function("serde_json", |b| {
        b.iter(|| {
            let bytes = serde_json::to_vec(black_box(&value)).expect("encode");
            let v: Profile = serde_json::from_slice(black_box(&bytes)).expect("decode");
            v
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = codec_bench
}
criterion_main!(benches);
