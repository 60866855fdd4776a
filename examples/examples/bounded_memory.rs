//! A stream of a million unique keys through a local cache bounded by `max_bytes`: the
//! process's peak memory stays bounded. `cargo run --release --example bounded_memory`.

use cache_runtime::cached;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
struct Row {
    id: u64,
    name: String,
    tags: Vec<String>,
}

#[cached(ttl = "1h", key = "row:<id>", max_bytes = "64MiB")]
fn row(id: u64) -> Row {
    Row {
        id,
        name: format!("row number {id} with a longer name to weigh something"),
        tags: vec!["alpha".into(), "beta".into(), format!("t{}", id % 97)],
    }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let before = status_kib("VmRSS:");
    for id in 0..n {
        row(id);
        if id > 0 && id % 250_000 == 0 {
            println!(
                "{id:>9} keys: cache {:>6.1} MiB estimated, {:>7} entries, RSS {:>6.1} MiB",
                row_cache().local_weighted_size() as f64 / (1 << 20) as f64,
                row_cache().local_entry_count(),
                status_kib("VmRSS:") as f64 / 1024.0
            );
        }
    }
    println!(
        "{n} unique keys through a 64 MiB cache: {} entries kept, {:.1} MiB estimated; \
         RSS at start {:.1} MiB, peak {:.1} MiB",
        row_cache().local_entry_count(),
        row_cache().local_weighted_size() as f64 / (1 << 20) as f64,
        before as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0
    );
}
