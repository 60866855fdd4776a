//! Hit ratio of the candidate local-tier stores on a Zipf trace (docs/LOCAL_TIER.md).
//!
//! Every store holds at most `capacity` entries and sees the same seeded trace: each request
//! is a read, and a miss inserts the key (what a cache in front of a function does). The
//! trace's first `capacity` requests are counted too (a cold start, as in production).
//!
//! ```text
//! cargo run --release -p cache-benches --bin zipf-hit-ratio -- [requests] [universe] [capacity]
//! ```
//!
//! Defaults: 4 000 000 requests over 1 000 000 keys, capacity 10 000, exponents 0.9 and 1.1,
//! seed 42. Prints a Markdown table.

use std::time::Instant;

use mini_moka::sync::ConcurrentCacheExt;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::Zipf;

/// A bounded cache of `u64 → u64`, as the trace drives it.
trait Store {
    /// Whether `key` was there; a miss inserts it.
    fn access(&mut self, key: u64) -> bool;
    /// Entries held now.
    fn len(&mut self) -> u64;
}

struct Moka(moka::sync::Cache<u64, u64>);

impl Store for Moka {
    fn access(&mut self, key: u64) -> bool {
        if self.0.get(&key).is_some() {
            return true;
        }
        self.0.insert(key, key);
        false
    }
    fn len(&mut self) -> u64 {
        self.0.run_pending_tasks();
        self.0.entry_count()
    }
}

struct Quick(quick_cache::sync::Cache<u64, u64>);

impl Store for Quick {
    fn access(&mut self, key: u64) -> bool {
        if self.0.get(&key).is_some() {
            return true;
        }
        self.0.insert(key, key);
        false
    }
    fn len(&mut self) -> u64 {
        self.0.len() as u64
    }
}

struct MiniMoka(mini_moka::sync::Cache<u64, u64>);

impl Store for MiniMoka {
    fn access(&mut self, key: u64) -> bool {
        if self.0.get(&key).is_some() {
            return true;
        }
        self.0.insert(key, key);
        false
    }
    fn len(&mut self) -> u64 {
        self.0.sync();
        self.0.entry_count()
    }
}

/// The `cached` crate's LRU (what its `#[cached(max_size = ...)]` uses).
struct CachedLru(cached::LruCache<u64, u64>);

impl Store for CachedLru {
    fn access(&mut self, key: u64) -> bool {
        use cached::Cached;
        if self.0.cache_get(&key).is_some() {
            return true;
        }
        self.0.cache_set(key, key);
        false
    }
    fn len(&mut self) -> u64 {
        use cached::Cached;
        self.0.cache_size() as u64
    }
}

fn stores(capacity: u64) -> Vec<(&'static str, Box<dyn Store>)> {
    vec![
        (
            "moka 0.12 (sync, TinyLFU)",
            Box::new(Moka(moka::sync::Cache::new(capacity))),
        ),
        (
            "quick_cache 0.6 (sync, S3-FIFO)",
            Box::new(Quick(quick_cache::sync::Cache::new(capacity as usize))),
        ),
        (
            "mini-moka 0.10 (sync, TinyLFU)",
            Box::new(MiniMoka(mini_moka::sync::Cache::new(capacity))),
        ),
        (
            "cached 4.1 LruCache (LRU)",
            Box::new(CachedLru(cached::LruCache::new(capacity as usize))),
        ),
    ]
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("a number"));
    let requests = args.next().unwrap_or(4_000_000);
    let universe = args.next().unwrap_or(1_000_000);
    let capacity = args.next().unwrap_or(10_000);
    println!(
        "{requests} requests, {universe} keys, capacity {capacity} entries, seed 42 (StdRng)\n"
    );
    println!("| store | Zipf s | hit ratio | entries at end | seconds |");
    println!("|---|---|---|---|---|");
    for s in [0.9, 1.1] {
        let zipf = Zipf::new(universe as f64, s).expect("zipf parameters");
        let mut rng = StdRng::seed_from_u64(42);
        // Ranks are scattered over the key space so that hot keys are not neighbours.
        let trace: Vec<u64> = (0..requests)
            .map(|_| (rng.sample(zipf) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        for (name, mut store) in stores(capacity) {
            let start = Instant::now();
            let hits = trace.iter().filter(|&&k| store.access(k)).count();
            let secs = start.elapsed().as_secs_f64();
            println!(
                "| {name} | {s} | {:.2}% | {} | {secs:.1} |",
                100.0 * hits as f64 / requests as f64,
                store.len()
            );
        }
    }
}
