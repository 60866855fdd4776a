//! Redis Cluster figures (issue 13), on a local cluster of 3 masters + 3 replicas started by
//! the harness: Redis hit latency and 64-task throughput of `#[cached(tier = "redis")]`
//! against hand-written redis-rs cluster code (`GET` + bincode 2 decode on a
//! `ClusterConnection`), the commands each master executes per cached hit, and the cost of
//! key and tag invalidations (a tag deletes its token in every bucket).
//!
//! `cargo bench -p cache-tests --bench cluster` (20 000 sequential hits, 5 s of 64 tasks per
//! contender, 500 invalidations of each kind); `cargo test` runs a smoke version. Prints
//! Markdown tables (docs/CLUSTER_BENCH.md).
//!
//! Callers run on one current-thread Tokio runtime, as in `benches/benches/redis_hit.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cache_runtime::{cached, Config};
use cache_tests::RedisCluster;
use redis::cluster_async::ClusterConnection;
use serde::{Deserialize, Serialize};

const KEYS: u64 = 1_000;
const TASKS: u64 = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
}

fn profile(id: u64) -> Profile {
    Profile {
        id,
        name: format!("user number {id}"),
        email: format!("user{id}@example.com"),
        roles: vec!["reader".into(), "writer".into()],
    }
}

#[cached(tier = "redis", ttl = 300, key = "user:profile:<id>", tags = ["team:<id>"])]
async fn ours(id: u64) -> Profile {
    profile(id)
}

fn hand_key(id: u64) -> String {
    format!("hw:user:profile:{id}")
}

async fn hand_get(conn: &mut ClusterConnection, id: u64) -> Profile {
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(hand_key(id))
        .query_async(conn)
        .await
        .expect("GET");
    bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
        .expect("decode")
        .0
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(mut ns: Vec<u64>) -> String {
    ns.sort_unstable();
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64;
    format!(
        "{:.1} µs | {:.1} µs | {:.1} µs",
        percentile(&ns, 0.5) as f64 / 1e3,
        percentile(&ns, 0.99) as f64 / 1e3,
        mean / 1e3
    )
}

/// `cmdstat_<name>:calls=N` of every master, per master port.
fn command_counts(cluster: &RedisCluster) -> BTreeMap<u16, BTreeMap<String, u64>> {
    cluster
        .masters()
        .iter()
        .map(|m| {
            let info: String = m.cmd(&["INFO", "commandstats"]).expect("INFO");
            let counts = info
                .lines()
                .filter_map(|l| {
                    let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                    let calls = rest
                        .strip_prefix("calls=")?
                        .split(',')
                        .next()?
                        .parse()
                        .ok()?;
                    Some((name.to_string(), calls))
                })
                .collect();
            (m.port(), counts)
        })
        .collect()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (hits, secs, invalidations) = if bench {
        (20_000, 5.0, 500)
    } else {
        (500, 0.3, 20)
    };
    let cluster = RedisCluster::start();
    let seeds = cluster.seed_urls();
    cache_runtime::init(
        Config::builder()
            .redis_cluster(seeds.clone())
            .key_prefix("cb")
            .redis_timeout(Duration::from_secs(1))
            .build(),
    )
    .expect("init");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = redis::cluster::ClusterClient::new(seeds).expect("cluster client");
        let mut hand = client
            .get_async_connection()
            .await
            .expect("cluster connection");
        // Fill: every key once (ours: miss + store; hand-written: SET).
        for id in 0..KEYS {
            ours(id).await;
            let bytes = bincode::serde::encode_to_vec(profile(id), bincode::config::standard())
                .expect("encode");
            let _: () = redis::cmd("SET")
                .arg(hand_key(id))
                .arg(bytes)
                .arg("EX")
                .arg(300)
                .query_async(&mut hand)
                .await
                .expect("SET");
        }
        // Warm-up: the caller runtime's own connections, scripts, slot maps.
        for id in 0..KEYS {
            assert_eq!(ours(id).await, hand_get(&mut hand, id).await);
        }

        println!("## Redis hit latency (sequential, {hits} hits over {KEYS} keys)");
        println!("| contender | p50 | p99 | mean |");
        println!("|---|---|---|---|");
        let mut ns = Vec::with_capacity(hits);
        for i in 0..hits as u64 {
            let t = Instant::now();
            std::hint::black_box(ours(i % KEYS).await);
            ns.push(t.elapsed().as_nanos() as u64);
        }
        println!("| `#[cached(tier = \"redis\")]` | {} |", summary(ns));
        let mut ns = Vec::with_capacity(hits);
        for i in 0..hits as u64 {
            let t = Instant::now();
            std::hint::black_box(hand_get(&mut hand, i % KEYS).await);
            ns.push(t.elapsed().as_nanos() as u64);
        }
        println!(
            "| hand-written `GET` + decode (`ClusterConnection`) | {} |",
            summary(ns)
        );
        let mut ns = Vec::with_capacity(hits);
        for _ in 0..hits {
            let t = Instant::now();
            let _: String = redis::cmd("PING")
                .query_async(&mut hand)
                .await
                .expect("PING");
            ns.push(t.elapsed().as_nanos() as u64);
        }
        println!("| `PING` (round-trip reference) | {} |", summary(ns));

        println!();
        println!("## Throughput, {TASKS} tasks, {secs} s each");
        println!("| contender | hits/s |");
        println!("|---|---|");
        let run_for = Duration::from_secs_f64(secs);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for lane in 0..TASKS {
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut id = lane;
                while start.elapsed() < run_for {
                    std::hint::black_box(ours(id % KEYS).await);
                    id += TASKS;
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let ours_rate = total as f64 / start.elapsed().as_secs_f64();
        println!("| `#[cached(tier = \"redis\")]` | {ours_rate:.0} |");
        let start = Instant::now();
        let mut tasks = Vec::new();
        for lane in 0..TASKS {
            let mut conn = hand.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut id = lane;
                while start.elapsed() < run_for {
                    std::hint::black_box(hand_get(&mut conn, id % KEYS).await);
                    id += TASKS;
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let hand_rate = total as f64 / start.elapsed().as_secs_f64();
        println!("| hand-written `GET` + decode (`ClusterConnection`) | {hand_rate:.0} |");

        println!();
        println!("## Commands per master for {hits} cached hits (INFO commandstats)");
        let before = command_counts(&cluster);
        for i in 0..hits as u64 {
            ours(i % KEYS).await;
        }
        let after = command_counts(&cluster);
        println!("| master | commands per 1 000 hits |");
        println!("|---|---|");
        for (port, counts) in &after {
            let delta: Vec<String> = counts
                .iter()
                .filter_map(|(name, &n)| {
                    let was = before
                        .get(port)
                        .and_then(|b| b.get(name))
                        .copied()
                        .unwrap_or(0);
                    let d = n - was;
                    (d > 0).then(|| format!("{name} {:.0}", d as f64 * 1000.0 / hits as f64))
                })
                .collect();
            println!("| {port} | {} |", delta.join(", "));
        }

        println!();
        println!("## Invalidations ({invalidations} sequential, confirmed by `WAIT 1`)");
        println!("| operation | p50 | p99 | mean |");
        println!("|---|---|---|---|");
        let mut ns = Vec::new();
        for id in 0..invalidations {
            let t = Instant::now();
            invalidate_ours(id % KEYS).await.expect("invalidate");
            ns.push(t.elapsed().as_nanos() as u64);
        }
        println!(
            "| key (`DEL v t` + `SPUBLISH` + `WAIT`, one master) | {} |",
            summary(ns)
        );
        let mut ns = Vec::new();
        for id in 0..invalidations {
            let t = Instant::now();
            cache_runtime::invalidate_tag(&format!("team:{}", id % KEYS))
                .await
                .expect("invalidate_tag");
            ns.push(t.elapsed().as_nanos() as u64);
        }
        println!(
            "| tag (`DEL` of its 1 024 bucket tokens on every master + `SPUBLISH` + `WAIT`) | {} |",
            summary(ns)
        );
    });
}
