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

/// `cmdstat_<name>:calls=N,usec=U` of every master, per master port: (calls, µs).
fn command_counts(cluster: &RedisCluster) -> BTreeMap<u16, BTreeMap<String, (u64, u64)>> {
    cluster
        .masters()
        .iter()
        .map(|m| {
            let info: String = m.cmd(&["INFO", "commandstats"]).expect("INFO");
            let counts = info
                .lines()
                .filter_map(|l| {
                    let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                    let field = |f: &str| -> Option<u64> {
                        rest.split(',')
                            .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))?
                            .parse()
                            .ok()
                    };
                    Some((name.to_string(), (field("calls")?, field("usec")?)))
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
    let used_memory = |c: &RedisCluster| -> u64 {
        c.masters()
            .iter()
            .map(|m| m.info_field("used_memory").unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let memory_before = used_memory(&cluster);
    let init_at = Instant::now();
    cache_runtime::init(
        Config::builder()
            .redis_cluster(seeds.clone())
            .key_prefix("cb")
            .redis_timeout(Duration::from_secs(1))
            .build(),
    )
    .expect("init");
    let rt = cache_tests::current_thread_runtime();
    rt.block_on(async {
        // The bus: 1 024 bucket channels and one probe channel per master, then one probe
        // round answered by every master.
        let _ = cache_runtime::redis_status();
        while !cache_runtime::bus_status().trusted {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let trusted_after = init_at.elapsed();
        let memory_after = used_memory(&cluster);
        let grown = memory_after.saturating_sub(memory_before);
        println!("## One process's sharded subscription");
        println!("| figure | value |");
        println!("|---|---|");
        println!(
            "| start → subscribed to 1 024 + 3 channels and trusted | {:.1} ms |",
            trusted_after.as_secs_f64() * 1e3
        );
        println!(
            "| masters' `used_memory` growth (3 connections, 1 027 subscriptions) | {grown} bytes (≈ {} per subscription, connections included) |",
            grown / 1027
        );
        // A second process (a cache node): what every further process adds.
        let db = cache_tests::RedisServer::start();
        let before_second = used_memory(&cluster);
        let seeds_env = cluster.seed_urls().join(",");
        let second = cache_tests::Node::start(
            env!("CARGO_BIN_EXE_cache-node"),
            &db,
            &[("NODE_CLUSTER_URLS", seeds_env.as_str())],
        );
        cache_tests::eventually_blocking(Duration::from_secs(30), "the node trusted", || {
            second.call("trusted") == "true"
        });
        let grown = used_memory(&cluster).saturating_sub(before_second);
        println!(
            "| a second process's growth (its bus connection and 1 027 subscriptions; channels exist already) | {grown} bytes (≈ {} per subscription, connection included) |",
            grown / 1027
        );
        drop(second);
        println!();
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
        println!("| master | commands per 1 000 hits (server µs per call) |");
        println!("|---|---|");
        for (port, counts) in &after {
            let delta: Vec<String> = counts
                .iter()
                .filter_map(|(name, &(n, us))| {
                    let (was, was_us) = before
                        .get(port)
                        .and_then(|b| b.get(name))
                        .copied()
                        .unwrap_or((0, 0));
                    let d = n - was;
                    (d * 1000 >= hits as u64).then(|| {
                        format!(
                            "{name} {:.0} ({:.2} µs)",
                            d as f64 * 1000.0 / hits as f64,
                            (us - was_us) as f64 / d as f64
                        )
                    })
                })
                .collect();
            println!("| {port} | {} |", delta.join(", "));
        }

        println!();
        println!("## Invalidations ({invalidations} sequential, confirmed by `WAIT 1`)");
        println!("| operation | p50 | p99 | mean |");
        println!("|---|---|---|---|");
        let before = command_counts(&cluster);
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
        let after = command_counts(&cluster);
        println!();
        println!(
            "Server time of the {invalidations} key and {invalidations} tag invalidations, all masters:"
        );
        println!();
        println!("| command | calls | server µs per call |");
        println!("|---|---|---|");
        let mut total: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (port, counts) in &after {
            for (name, &(n, us)) in counts {
                let (was, was_us) = before
                    .get(port)
                    .and_then(|b| b.get(name))
                    .copied()
                    .unwrap_or((0, 0));
                let e = total.entry(name.clone()).or_default();
                e.0 += n - was;
                e.1 += us - was_us;
            }
        }
        for (name, (n, us)) in total {
            if n >= invalidations {
                println!("| {name} | {n} | {:.2} |", us as f64 / n as f64);
            }
        }
    });
}
