//! The waterfall, measured: `cargo run --release --example waterfall`.
//!
//! Starts everything itself on loopback free ports and runs the same skewed workload four
//! times against the `profile_api` example service:
//!
//! 1. no cache (every cache bypassed: each read is a query), one service process;
//! 2. with the in-process tier, one process;
//! 3. with Redis added, and several service processes sharing one SQLite database and one
//!    `redis-server` (its own port, `--save "" --appendonly no`), requests spread over them;
//! 4. with HTTP caching and a CDN: `varnishd` with the repository's VCL and a round-robin
//!    director over the processes, writes purging it, and clients sending `If-None-Match`
//!    with the `ETag` they kept.
//!
//! For each run it records which layer answered each request (the client's copy on a 304,
//! a Varnish hit, the in-process tier, Redis, or the database), database queries (from the
//! services' `/metrics`), p50/p99 latency and throughput, and checks that no read that
//! started after a write's response returned an older version than that write created
//! (beyond the documented window of asynchronous invalidation). It prints a markdown table
//! and writes a chart (`--svg`, default `docs/layers.svg`).
//!
//! The service binary: `cargo run` sets `CARGO`, and the driver runs `cargo build
//! --example profile_api` with its own profile first, then uses the path cargo reports.
//! Outside cargo it takes `profile_api` next to its own executable, or `PROFILE_API_BIN`.
//!
//! ```text
//! --duration S      measured seconds per run (20)       --warmup S   unmeasured start (3)
//! --clients N       concurrent client tasks (64)         --writes F   write fraction (0.08)
//! --zipf S          Zipf exponent of ids (1.0)           --processes N  for runs 3-4 (3)
//! --db-latency-ms N per query (20)                       --db-connections N  in all (12)
//! --window-ms N     allowed staleness after a write with several processes (bus) (100)
//! --repurge-ms N    the services' second edge purge, after N ms (CACHE_EDGE_REPURGE_MS,
//!                   1000; 0: none); the CDN run allows N + window-ms of staleness after a write
//! --list-invalidation tag|key   how a product write drops its list (tag)
//! --runs 1,2,3,4    which runs                           --svg PATH   chart ("-": none)
//! --markdown PATH   also write the table there
//! ```

#[path = "../common/catalog.rs"]
mod catalog;
mod check;
mod load;
mod procs;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use load::{Layer, Workload};
use procs::{free_port, ServiceEnv};
use report::RunResult;

#[derive(Debug, Clone)]
struct Args {
    workload: Workload,
    processes: usize,
    db_latency_ms: u64,
    /// Database connections in all, split over the processes of a run.
    db_connections: usize,
    window_ms: u64,
    repurge_ms: u64,
    list_invalidation: String,
    runs: Vec<usize>,
    svg: Option<PathBuf>,
    markdown: Option<PathBuf>,
}

fn parse_args() -> Args {
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut a = Args {
        workload: Workload {
            clients: 64,
            warmup: Duration::from_secs(3),
            duration: Duration::from_secs(20),
            write_ratio: 0.08,
            zipf_s: 1.0,
            users: 10_000,
            products: 2_000,
            seed: 42,
        },
        processes: 3,
        db_latency_ms: 20,
        db_connections: 12,
        window_ms: 100,
        repurge_ms: 1000,
        list_invalidation: "tag".into(),
        runs: vec![1, 2, 3, 4],
        svg: Some(docs.join("layers.svg")),
        markdown: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let secs = |v: String| Duration::from_secs_f64(v.parse().expect("seconds"));
        match flag.as_str() {
            "--duration" => a.workload.duration = secs(val()),
            "--warmup" => a.workload.warmup = secs(val()),
            "--clients" => a.workload.clients = val().parse().expect("--clients N"),
            "--writes" => a.workload.write_ratio = val().parse().expect("--writes F"),
            "--zipf" => a.workload.zipf_s = val().parse().expect("--zipf S"),
            "--seed" => a.workload.seed = val().parse().expect("--seed N"),
            "--processes" => a.processes = val().parse().expect("--processes N"),
            "--db-latency-ms" => a.db_latency_ms = val().parse().expect("--db-latency-ms N"),
            "--db-connections" => a.db_connections = val().parse().expect("--db-connections N"),
            "--window-ms" => a.window_ms = val().parse().expect("--window-ms N"),
            "--repurge-ms" => a.repurge_ms = val().parse().expect("--repurge-ms N"),
            "--list-invalidation" => a.list_invalidation = val(),
            "--runs" => {
                a.runs = val()
                    .split(',')
                    .map(|r| r.trim().parse().expect("--runs 1,2,3,4"))
                    .collect()
            }
            "--svg" => {
                let v = val();
                a.svg = (v != "-").then(|| PathBuf::from(v));
            }
            "--markdown" => a.markdown = Some(PathBuf::from(val())),
            other => panic!("unknown argument {other} (see the doc comment of waterfall.rs)"),
        }
    }
    a
}

/// One configuration of the stack.
struct Spec {
    number: usize,
    name: &'static str,
    layers: &'static str,
    processes: usize,
    varnish: bool,
    conditional: bool,
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let binary = procs::service_binary();
    let vcl_path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/varnish/cache-toolkit.vcl");
    let shipped_vcl = std::fs::read_to_string(&vcl_path).ok();
    let specs = [
        Spec {
            number: 1,
            name: "no cache",
            layers: "none",
            processes: 1,
            varnish: false,
            conditional: false,
        },
        Spec {
            number: 2,
            name: "+ local",
            layers: "local",
            processes: 1,
            varnish: false,
            conditional: false,
        },
        Spec {
            number: 3,
            name: "+ Redis",
            layers: "redis",
            processes: args.processes,
            varnish: false,
            conditional: false,
        },
        Spec {
            number: 4,
            name: "+ HTTP/CDN",
            layers: "redis",
            processes: args.processes,
            varnish: true,
            conditional: true,
        },
    ];
    let w = &args.workload;
    println!(
        "waterfall: {} clients, {:?} warm-up + {:?} measured per run, {:.0} % writes, Zipf s = {}, \
         {} users / {} products, {} ms per query, {} database connections (split over the processes)",
        w.clients,
        w.warmup,
        w.duration,
        w.write_ratio * 100.0,
        w.zipf_s,
        w.users,
        w.products,
        args.db_latency_ms,
        args.db_connections
    );
    println!("service binary: {}", binary.display());
    if args.runs.contains(&4) {
        assert!(
            shipped_vcl.is_some(),
            "{} not found: run 4 needs the shipped VCL",
            vcl_path.display()
        );
        println!(
            "VCL: {} with a generated round-robin director over the services",
            vcl_path.display()
        );
    }
    let mut results = Vec::new();
    for spec in specs.iter().filter(|s| args.runs.contains(&s.number)) {
        println!(
            "\n== run {}: {} ({} process(es)) ==",
            spec.number, spec.name, spec.processes
        );
        let r = run(spec, &args, &binary, shipped_vcl.as_deref()).await;
        report::print_run(&r);
        results.push(r);
    }
    let table = report::markdown(&results);
    println!("\n{table}");
    if let Some(p) = &args.markdown {
        std::fs::write(p, &table).expect("write the markdown table");
        println!("table written to {}", p.display());
    }
    if let Some(p) = &args.svg {
        match report::chart(&results, p) {
            Ok(()) => println!("chart written to {}", p.display()),
            Err(e) => eprintln!("chart: {e}"),
        }
    }
}

async fn run(
    spec: &Spec,
    args: &Args,
    binary: &std::path::Path,
    shipped_vcl: Option<&str>,
) -> RunResult {
    let dir = std::env::temp_dir().join(format!(
        "waterfall-{}-run{}",
        std::process::id(),
        spec.number
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the run directory");

    let redis = (spec.layers == "redis").then(cache_tests::RedisServer::start);
    let ports: Vec<u16> = (0..spec.processes).map(|_| free_port()).collect();
    // Varnish first (it needs no backend to start): the services get its address to purge.
    let varnish = spec.varnish.then(|| {
        let vcl = procs::director_vcl(shipped_vcl.expect("the shipped VCL"), &ports);
        cache_tests::VarnishServer::start_with_vcl(&vcl, ports[0])
    });
    let env = ServiceEnv {
        binary,
        dir: &dir,
        layers: spec.layers,
        redis_url: redis.as_ref().map(|r| r.url()),
        edge_url: varnish.as_ref().map(|v| v.url()),
        db_latency_ms: args.db_latency_ms,
        db_pool: (args.db_connections / spec.processes).max(1),
        repurge_ms: args.repurge_ms,
        list_invalidation: &args.list_invalidation,
    };
    // The first process creates and seeds the database; the others open it.
    let mut services = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let mut s = env.start(i, port);
        if i == 0 {
            let url = format!("{}/health", s.url());
            procs::wait_http(&url, &mut s.proc, &s.log.clone(), Duration::from_secs(60)).await;
        }
        services.push(s);
    }
    for s in &mut services {
        let url = format!("{}/health", s.url());
        let log = s.log.clone();
        procs::wait_http(&url, &mut s.proc, &log, Duration::from_secs(60)).await;
    }
    let varnish_before = varnish.as_ref().map(|v| v.stats());
    if let Some(first) = std::fs::read_to_string(&services[0].log)
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.contains("layers:"))
                .map(str::to_string)
        })
    {
        println!("service {}", first.trim());
    }

    let targets = match &varnish {
        Some(v) => vec![v.url()],
        None => services.iter().map(|s| s.url()).collect(),
    };
    let service_urls: Vec<String> = services.iter().map(|s| s.url()).collect();
    let w = args.workload.clone();
    let start = Instant::now();
    // Snapshot the services' counters when the measured window opens.
    let at_warmup = {
        let urls = service_urls.clone();
        let warmup = w.warmup;
        tokio::spawn(async move {
            tokio::time::sleep_until((start + warmup).into()).await;
            report::snapshot(&urls).await
        })
    };
    let rec = load::run(targets, &w, spec.conditional, start).await;
    if let (Some(v), Some(before)) = (&varnish, &varnish_before) {
        let after = v.stats();
        let d = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        println!(
            "varnishstat: {} hits, {} misses, {} hit-for-miss/pass, {} purges by path, {} backend fetches",
            d("MAIN.cache_hit"),
            d("MAIN.cache_miss"),
            d("MAIN.cache_hitmiss") + d("MAIN.s_pass"),
            d("MAIN.n_purges"),
            d("MAIN.s_fetch")
        );
    }
    let measured = start.elapsed().saturating_sub(w.warmup);
    let before = at_warmup.await.expect("snapshot task");
    let after = report::snapshot(&service_urls).await;

    // Staleness allowed after a write completed: none in one process; the bus's propagation
    // across processes; with a CDN, also the second purge (the first may race a fetch).
    let window_us = 1000
        * match (spec.processes > 1, spec.varnish) {
            (_, true) => args.repurge_ms + args.window_ms,
            (true, false) => args.window_ms,
            (false, false) => 0,
        };
    let staleness = check::check(&rec.seen, &rec.writes, window_us);
    let mut by_layer: BTreeMap<Layer, u64> = BTreeMap::new();
    let mut read_lat = Vec::new();
    let mut write_lat = Vec::new();
    let mut edge_304 = 0;
    for s in rec.samples.iter().filter(|s| s.measured) {
        *by_layer.entry(s.layer).or_default() += 1;
        match s.layer {
            Layer::Write => write_lat.push(s.latency_us),
            Layer::Error => {}
            _ => read_lat.push(s.latency_us),
        }
        if s.layer == Layer::Client && s.not_modified_by_edge {
            edge_304 += 1;
        }
    }
    if !rec.errors.is_empty() {
        println!(
            "{} errors, e.g. {}",
            rec.errors.len(),
            rec.errors
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let result = RunResult {
        number: spec.number,
        name: spec.name.to_string(),
        processes: spec.processes,
        measured,
        by_layer,
        not_modified_by_edge: edge_304,
        read_latency: report::Percentiles::of(&mut read_lat),
        write_latency: report::Percentiles::of(&mut write_lat),
        db: after.minus(&before),
        staleness,
        window_ms: window_us / 1000,
        purge: after.purge.clone(),
    };
    drop(varnish);
    drop(services);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
