//! Soak: many tasks read and write against a source of truth through a `local+redis` cache
//! for 60 s (`cargo bench -p cache-tests --bench soak`; 6 s under `cargo test`), with Redis
//! killed at one third and restarted at one half of the run. Every returned value is checked
//! against the source of truth: a read that starts after an `invalidate_*` call returned must
//! see that write or a newer one. Prints requests, wrong values, errors and latency
//! percentiles before, during and after the outage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_runtime::{cached, Config};
use cache_tests::RedisServer;

const KEYS: u64 = 1_000;
static DB: Mutex<Option<HashMap<u64, u64>>> = Mutex::new(None);
/// Per key, the newest version whose invalidation has returned.
static SETTLED: Mutex<Option<HashMap<u64, u64>>> = Mutex::new(None);

fn db_version(id: u64) -> u64 {
    *DB.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .get(&id)
        .unwrap_or(&0)
}

#[cached(tier = "local+redis", ttl = 30, local_ttl = 5, key = "soak:<id>")]
async fn item(id: u64) -> Result<u64, String> {
    // A 200 µs query.
    tokio::time::sleep(Duration::from_micros(200)).await;
    Ok(db_version(id))
}

fn skewed(x: u64) -> u64 {
    let u = (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    (KEYS as f64 * u * u) as u64
}

#[derive(Default)]
struct Phase {
    latencies_us: Vec<u64>,
    requests: u64,
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let total = if bench {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(6)
    };
    let server = Arc::new(RedisServer::start());
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url())
            .key_prefix("soak")
            .redis_timeout(Duration::from_millis(50))
            .build(),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let wrong = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let outage = Arc::new(AtomicBool::new(false));
    let phases: Arc<Mutex<[Phase; 3]>> = Arc::new(Mutex::new(Default::default()));
    let start = Instant::now();
    let phase_of = move |t: Duration| {
        if t < total / 3 {
            0
        } else if t < total / 2 {
            1
        } else {
            2
        }
    };
    rt.block_on(async {
        let mut tasks = Vec::new();
        for task in 0..24u64 {
            let (wrong, errors, writes, phases) = (
                wrong.clone(),
                errors.clone(),
                writes.clone(),
                phases.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = task * 1_000_003;
                let mut local: [Phase; 3] = Default::default();
                while start.elapsed() < total {
                    i += 1;
                    let id = skewed(i);
                    if task < 3 && i % 4 == 0 {
                        // A writer: update the source of truth, then invalidate.
                        let v = {
                            let mut db = DB.lock().unwrap();
                            let e = db.get_or_insert_with(HashMap::new).entry(id).or_insert(0);
                            *e += 1;
                            *e
                        };
                        let _ = invalidate_item(id).await; // Err while Redis is down: retried
                        let mut settled = SETTLED.lock().unwrap();
                        let s = settled
                            .get_or_insert_with(HashMap::new)
                            .entry(id)
                            .or_insert(0);
                        *s = (*s).max(v);
                        writes.fetch_add(1, SeqCst);
                        continue;
                    }
                    let must_see = *SETTLED
                        .lock()
                        .unwrap()
                        .get_or_insert_with(HashMap::new)
                        .get(&id)
                        .unwrap_or(&0);
                    let t0 = Instant::now();
                    let res = item(id).await;
                    let took = t0.elapsed();
                    match res {
                        Ok(v) if v >= must_see && v <= db_version(id) => {}
                        Ok(_) => {
                            wrong.fetch_add(1, SeqCst);
                        }
                        Err(_) => {
                            errors.fetch_add(1, SeqCst);
                        }
                    }
                    let p = &mut local[phase_of(start.elapsed())];
                    p.requests += 1;
                    if p.latencies_us.len() < 200_000 {
                        p.latencies_us.push(took.as_micros() as u64);
                    }
                }
                let mut all = phases.lock().unwrap();
                for (agg, mine) in all.iter_mut().zip(local) {
                    agg.requests += mine.requests;
                    agg.latencies_us.extend(mine.latencies_us);
                }
            }));
        }
        // The outage: kill at 1/3, restart at 1/2.
        let s = server.clone();
        let o = outage.clone();
        let chaos = tokio::task::spawn_blocking(move || {
            std::thread::sleep(total / 3);
            s.kill();
            o.store(true, SeqCst);
            std::thread::sleep(total / 2 - total / 3);
            s.restart();
        });
        for t in tasks {
            t.await.unwrap();
        }
        chaos.await.unwrap();
    });
    let mut phases = std::mem::take(&mut *phases.lock().unwrap());
    let served: u64 = phases.iter().map(|p| p.requests).sum();
    let stats = item_cache().stats();
    println!("soak: {:?}, 24 tasks (3 also write), {KEYS} keys (skewed), Redis killed at {:?} and restarted at {:?}", total, total / 3, total / 2);
    println!(
        "requests served: {served}, writes: {}, wrong values: {}, errors surfaced: {}",
        writes.load(SeqCst),
        wrong.load(SeqCst),
        errors.load(SeqCst)
    );
    println!("cache: {} local hits, {} redis hits, {} body runs, {} redis errors, {} stale rejected, {} superseded writes", stats.local_hits, stats.redis_hits, stats.body_calls, stats.redis_errors, stats.stale_rejected, stats.superseded);
    println!("| phase | requests | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for (name, p) in ["before", "during the outage", "after"]
        .iter()
        .zip(phases.iter_mut())
    {
        p.latencies_us.sort_unstable();
        let l = &p.latencies_us;
        println!(
            "| {name} | {} | {} µs | {} µs | {} µs | {} µs |",
            p.requests,
            pct(l, 0.5),
            pct(l, 0.9),
            pct(l, 0.99),
            l.last().copied().unwrap_or(0)
        );
    }
    assert_eq!(wrong.load(SeqCst), 0, "wrong values served");
    assert_eq!(errors.load(SeqCst), 0, "errors surfaced to callers");
    assert!(outage.load(SeqCst));
}
