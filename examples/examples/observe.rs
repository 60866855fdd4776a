//! Measure before caching: `cargo run --example observe`.
//!
//! Two functions run in observe mode (every call runs the body; nothing is served), under the
//! same traffic: 2,000 calls over 200 keys with a skewed popularity. The report says what each
//! cache would have saved, and whether it is worth it.

use std::time::Duration;

use cache_runtime::{cached, Mode};

/// An indexed lookup: ~20 µs.
#[cached(ttl = "5m", key = "country:<id>", mode = "observe")]
async fn country_name(id: u64) -> String {
    spin(Duration::from_micros(20));
    format!("country {id}")
}

/// A report query: ~2 ms.
#[cached(ttl = "5m", key = "report:<id>", mode = "observe")]
async fn monthly_report(id: u64) -> Vec<u64> {
    tokio::time::sleep(Duration::from_millis(2)).await;
    vec![id; 16]
}

fn spin(d: Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// A skewed id: small ids are much more popular (a cheap Zipf-like draw).
fn skewed(i: u64) -> u64 {
    let x = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    (200.0 * x * x * x) as u64
}

#[tokio::main]
async fn main() {
    for i in 0..2_000 {
        country_name(skewed(i)).await;
        monthly_report(skewed(i)).await;
    }
    for (name, report) in [
        (
            "country_name (≈20 µs)",
            country_name_cache().observe_report(),
        ),
        (
            "monthly_report (≈2 ms)",
            monthly_report_cache().observe_report(),
        ),
    ] {
        let r = report.expect("observed");
        println!(
            "{name}\n  {r}\n  calls {}, would-be hits {}, p99 body time {:?}\n",
            r.calls, r.would_be_hits, r.body_p99
        );
    }
    // The switch is at run time: turn the worthwhile one on without a rebuild.
    monthly_report_cache().set_mode(Mode::Normal);
    let start = std::time::Instant::now();
    monthly_report(1).await;
    monthly_report(1).await;
    println!(
        "monthly_report switched to {}: two calls took {:?} (one body run)",
        monthly_report_cache().mode(),
        start.elapsed()
    );
}
