//! Per-run results: the services' counters, latency percentiles, the markdown table and the
//! chart.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::check::Staleness;
use crate::load::{Layer, READ_LAYERS};

/// The services' counters, summed over the processes of a run.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub db_queries: u64,
    pub db_reads: u64,
    pub db_writes: u64,
    /// Per cache (by name): local hits, Redis hits, misses, coalesced misses, invalidations.
    pub caches: BTreeMap<String, [u64; 5]>,
    pub purge: Option<Purge>,
}

/// Edge purges, from the services' `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Purge {
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
    /// Second purges (`cache_runtime::edge`, `CACHE_EDGE_REPURGE_MS`).
    pub repurges: u64,
    /// Responses sent `no-store` because they took too long to produce.
    pub slow_not_shared: u64,
    /// Enqueue → purge acknowledged by the edge, the largest of the processes' (ms).
    pub delay_p50_ms: f64,
    pub delay_p99_ms: f64,
    pub delay_max_ms: f64,
}

impl Counters {
    pub fn minus(&self, before: &Counters) -> Counters {
        Counters {
            db_queries: self.db_queries - before.db_queries.min(self.db_queries),
            db_reads: self.db_reads - before.db_reads.min(self.db_reads),
            db_writes: self.db_writes - before.db_writes.min(self.db_writes),
            caches: self
                .caches
                .iter()
                .map(|(name, now)| {
                    let then = before.caches.get(name).copied().unwrap_or_default();
                    let mut d = [0; 5];
                    for i in 0..5 {
                        d[i] = now[i].saturating_sub(then[i]);
                    }
                    (name.clone(), d)
                })
                .collect(),
            purge: self.purge.clone(),
        }
    }
}

/// Fetches and sums `/metrics` of every service.
pub async fn snapshot(urls: &[String]) -> Counters {
    let client = reqwest::Client::new();
    let mut c = Counters::default();
    for u in urls {
        let Ok(r) = client
            .get(format!("{u}/metrics"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
        else {
            continue;
        };
        let Ok(bytes) = r.bytes().await else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let n = |p: &str| v.pointer(p).and_then(|x| x.as_u64()).unwrap_or(0);
        let f = |p: &str| v.pointer(p).and_then(|x| x.as_f64()).unwrap_or(0.0);
        c.db_queries += n("/db/queries");
        c.db_reads += n("/db/reads");
        c.db_writes += n("/db/writes");
        for cache in v["caches"].as_array().into_iter().flatten() {
            let name = cache["name"].as_str().unwrap_or("?").to_string();
            let row = c.caches.entry(name).or_default();
            for (i, f) in [
                "local_hits",
                "redis_hits",
                "misses",
                "coalesced",
                "invalidations",
            ]
            .iter()
            .enumerate()
            {
                row[i] += cache[f].as_u64().unwrap_or(0);
            }
        }
        if v.pointer("/edge/configured").and_then(|x| x.as_bool()) == Some(true) {
            let p = c.purge.get_or_insert_with(Purge::default);
            p.sent += n("/edge/sent");
            p.failed += n("/edge/failed");
            p.dropped += n("/edge/dropped");
            p.repurges += n("/edge/repurged");
            p.slow_not_shared += n("/edge/slow_responses_not_shared");
            p.delay_p50_ms = p.delay_p50_ms.max(f("/edge/purge_latency_ms/p50"));
            p.delay_p99_ms = p.delay_p99_ms.max(f("/edge/purge_latency_ms/p99"));
            p.delay_max_ms = p.delay_max_ms.max(f("/edge/purge_latency_ms/max"));
        }
    }
    c
}

/// Latency percentiles (ms).
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

impl Percentiles {
    pub fn of(us: &mut [u64]) -> Percentiles {
        if us.is_empty() {
            return Percentiles::default();
        }
        us.sort_unstable();
        let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub number: usize,
    pub name: String,
    pub processes: usize,
    pub measured: Duration,
    /// Requests in the measured window, by the layer that answered.
    pub by_layer: BTreeMap<Layer, u64>,
    /// Of the 304s, those sent by the edge.
    pub not_modified_by_edge: u64,
    pub read_latency: Percentiles,
    pub write_latency: Percentiles,
    /// Database queries in the measured window.
    pub db: Counters,
    pub staleness: Staleness,
    pub window_ms: u64,
    pub purge: Option<Purge>,
}

impl RunResult {
    fn n(&self, l: Layer) -> u64 {
        self.by_layer.get(&l).copied().unwrap_or(0)
    }

    pub fn reads(&self) -> u64 {
        READ_LAYERS.iter().map(|l| self.n(*l)).sum()
    }

    pub fn requests(&self) -> u64 {
        self.reads() + self.n(Layer::Write)
    }

    pub fn throughput(&self) -> f64 {
        self.requests() as f64 / self.measured.as_secs_f64()
    }

    fn share(&self, l: Layer) -> f64 {
        let r = self.reads();
        if r == 0 {
            0.0
        } else {
            self.n(l) as f64 / r as f64 * 100.0
        }
    }
}

pub fn print_run(r: &RunResult) {
    println!(
        "{} requests in {:.1} s ({:.0}/s): reads p50 {:.2} ms p99 {:.2} ms; writes p50 {:.2} ms p99 {:.2} ms",
        r.requests(),
        r.measured.as_secs_f64(),
        r.throughput(),
        r.read_latency.p50,
        r.read_latency.p99,
        r.write_latency.p50,
        r.write_latency.p99
    );
    println!(
        "reads answered by: client 304 {} ({} by the edge) · Varnish {} · local {} · Redis {} · body {} · stale {}; errors {}",
        r.n(Layer::Client),
        r.not_modified_by_edge,
        r.n(Layer::Edge),
        r.n(Layer::Local),
        r.n(Layer::Redis),
        r.n(Layer::Body),
        r.n(Layer::Stale),
        r.n(Layer::Error)
    );
    println!(
        "database: {} queries ({} reads, {} writes); staleness: {} values checked, {} stale \
         (max {:.1} ms after the write), {} beyond the {} ms window",
        r.db.db_queries,
        r.db.db_reads,
        r.db.db_writes,
        r.staleness.values_checked,
        r.staleness.stale,
        r.staleness.max_lag_us as f64 / 1000.0,
        r.staleness.beyond_window,
        r.window_ms
    );
    if !r.staleness.by_layer.is_empty() {
        println!("stale values by layer: {:?}", r.staleness.by_layer);
    }
    for (name, c) in &r.db.caches {
        println!(
            "  cache {name}: {} local hits, {} Redis hits, {} misses ({} coalesced), {} invalidations",
            c[0], c[1], c[2], c[3], c[4]
        );
    }
    if let Some(p) = &r.purge {
        println!(
            "edge purges: {} sent, {} failed, {} dropped; enqueue → purged p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             {} second purges; {} slow responses sent no-store",
            p.sent,
            p.failed,
            p.dropped,
            p.delay_p50_ms,
            p.delay_p99_ms,
            p.delay_max_ms,
            p.repurges,
            p.slow_not_shared
        );
    }
}

/// The results table (markdown).
pub fn markdown(results: &[RunResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| run | processes | requests/s | read p50 | read p99 | write p50 | client 304 | Varnish hit | local hit | Redis hit | body | DB queries/s | DB queries per 100 requests | stale reads (beyond window) |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let pct = |l: Layer| format!("{:.1} %", r.share(l));
        let _ = writeln!(
            s,
            "| {}. {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} | {} | {} | {} | {:.0} | {:.1} | {} ({}) |",
            r.number,
            r.name,
            r.processes,
            r.throughput(),
            r.read_latency.p50,
            r.read_latency.p99,
            r.write_latency.p50,
            pct(Layer::Client),
            pct(Layer::Edge),
            pct(Layer::Local),
            pct(Layer::Redis),
            pct(Layer::Body),
            r.db.db_queries as f64 / r.measured.as_secs_f64(),
            r.db.db_queries as f64 * 100.0 / r.requests().max(1) as f64,
            r.staleness.stale,
            r.staleness.beyond_window
        );
    }
    let windows: Vec<String> = results
        .iter()
        .map(|r| format!("{} ms in run {}", r.window_ms, r.number))
        .collect();
    let _ = writeln!(
        s,
        "\nShares are of reads in the measured window. \"stale reads\": values older than a write \
         whose response had completed before the read started (lists count each product); \
         the allowed window after the write is {}.",
        windows.join(", ")
    );
    s
}

const COLORS: [RGBColor; 6] = [
    RGBColor(44, 160, 44),   // client 304
    RGBColor(148, 103, 189), // Varnish
    RGBColor(31, 119, 180),  // local
    RGBColor(255, 127, 14),  // Redis
    RGBColor(214, 39, 40),   // body (database)
    RGBColor(127, 127, 127), // stale
];

const LABELS: [&str; 6] = [
    "client 304",
    "Varnish hit",
    "in-process hit",
    "Redis hit",
    "database (body)",
    "stale fallback",
];

/// A stacked bar per run: which layer answered the reads, with throughput, p99 and the
/// database load beside it.
pub fn chart(results: &[RunResult], path: &Path) -> Result<(), String> {
    if results.is_empty() {
        return Err("no results".into());
    }
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let n = results.len();
    let height = 130 + 60 * n as u32;
    let root = SVGBackend::new(path, (1060, height)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (main, legend) = root.split_vertically(height - 36);
    let (left, right) = main.split_horizontally(600);
    let mut ch = ChartBuilder::on(&left)
        .caption(
            "Which layer answered each read (% of reads)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(120)
        .build_cartesian_2d(0f64..100f64, 0f64..n as f64)
        .map_err(e)?;
    ch.configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(0)
        .x_labels(11)
        .x_label_formatter(&|x| format!("{x:.0}%"))
        .draw()
        .map_err(e)?;
    let top = |i: usize| (n - i) as f64;
    for (i, r) in results.iter().enumerate() {
        let mut x = 0.0;
        for (k, l) in READ_LAYERS.iter().enumerate() {
            let w = r.share(*l);
            if w <= 0.0 {
                continue;
            }
            ch.draw_series(std::iter::once(Rectangle::new(
                [(x, top(i) - 0.8), (x + w, top(i) - 0.2)],
                COLORS[k].filled(),
            )))
            .map_err(e)?;
            if w >= 6.0 {
                ch.draw_series(std::iter::once(Text::new(
                    format!("{w:.0}%"),
                    (x + w / 2.0 - 2.5, top(i) - 0.45),
                    ("sans-serif", 11).into_font().color(&WHITE),
                )))
                .map_err(e)?;
            }
            x += w;
        }
        let (_, y) = ch.backend_coord(&(0.0, top(i) - 0.5));
        left.draw(&Text::new(
            format!("{}. {}", r.number, r.name),
            (8, y - 6),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(e)?;
        right
            .draw(&Text::new(
                format!(
                    "{:.0} req/s · read p50 {:.1} ms, p99 {:.0} ms · {:.0} DB queries per 100 requests",
                    r.throughput(),
                    r.read_latency.p50,
                    r.read_latency.p99,
                    r.db.db_queries as f64 * 100.0 / r.requests().max(1) as f64
                ),
                (10, y - 6),
                ("sans-serif", 13).into_font(),
            ))
            .map_err(e)?;
    }
    // Legend (the layers that answered anything).
    let legend_y = 10;
    let mut x = 10;
    for (k, label) in LABELS.iter().enumerate() {
        if results.iter().all(|r| r.share(READ_LAYERS[k]) == 0.0) {
            continue;
        }
        legend
            .draw(&Rectangle::new(
                [(x, legend_y), (x + 12, legend_y + 12)],
                COLORS[k].filled(),
            ))
            .map_err(e)?;
        legend
            .draw(&Text::new(
                label.to_string(),
                (x + 16, legend_y),
                ("sans-serif", 12).into_font(),
            ))
            .map_err(e)?;
        x += 30 + 7 * label.len() as i32;
    }
    root.present().map_err(e)?;
    Ok(())
}
