//! The workload: closed-loop client tasks sending a skewed mix of reads and writes, recording
//! for every request where it was served and, for every value seen, its version (for the
//! staleness check).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use reqwest::header::{HeaderMap, ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;

use crate::catalog::CATEGORIES;

/// Workload parameters.
#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Fraction of requests that are writes (PUT).
    pub write_ratio: f64,
    /// Zipf exponent of the id and category popularity.
    pub zipf_s: f64,
    pub users: u64,
    pub products: u64,
    pub seed: u64,
}

/// Where a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    /// `304 Not Modified`: the client's own copy was used.
    Client,
    /// A Varnish hit.
    Edge,
    /// The service's in-process tier.
    Local,
    /// Redis.
    Redis,
    /// The function's body ran (a database query, or a wait for a concurrent one).
    Body,
    /// A fail-safe stale fallback.
    Stale,
    /// A write (PUT).
    Write,
    /// An error status or a transport error.
    Error,
}

pub const READ_LAYERS: [Layer; 6] = [
    Layer::Client,
    Layer::Edge,
    Layer::Local,
    Layer::Redis,
    Layer::Body,
    Layer::Stale,
];

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub layer: Layer,
    /// Who sent the 304 (for `Layer::Client`): the edge or the service.
    pub not_modified_by_edge: bool,
    pub latency_us: u64,
    pub measured: bool,
}

/// A value seen by a read: entity (user id, or `PRODUCT_BASE` + product id) and version.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub entity: u64,
    pub version: u64,
    /// When the read started, µs since the run's start.
    pub start_us: u64,
    /// The layer that answered.
    pub layer: Layer,
}

/// A completed write: the version it created and when its response was complete.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub entity: u64,
    pub version: u64,
    pub done_us: u64,
}

pub const PRODUCT_BASE: u64 = 1 << 40;

/// Everything one client task recorded.
#[derive(Default)]
pub struct Record {
    pub samples: Vec<Sample>,
    pub seen: Vec<Seen>,
    pub writes: Vec<Written>,
    pub errors: Vec<String>,
}

#[derive(Clone, Copy)]
enum Op {
    GetUser(u64),
    GetProduct(u64),
    ListProducts(usize),
    PutUser(u64),
    PutProduct(u64),
}

/// The client's copy of a response, for conditional requests.
struct Kept {
    etag: String,
    versions: Vec<(u64, u64)>,
}

/// Runs the workload against `targets` (base URLs; each request picks one at random) until
/// warm-up + duration have passed. `conditional`: clients keep each response's `ETag` and
/// body versions and send `If-None-Match`.
pub async fn run(targets: Vec<String>, w: &Workload, conditional: bool, start: Instant) -> Record {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(w.clients * 2)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let targets = Arc::new(targets);
    let measure_from = w.warmup;
    let end = w.warmup + w.duration;
    let mut tasks = Vec::new();
    for c in 0..w.clients {
        let client = client.clone();
        let targets = targets.clone();
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            client_task(c, client, targets, w, conditional, start, measure_from, end).await
        }));
    }
    let mut all = Record::default();
    for t in tasks {
        let r = t.await.expect("client task");
        all.samples.extend(r.samples);
        all.seen.extend(r.seen);
        all.writes.extend(r.writes);
        all.errors.extend(r.errors);
    }
    all
}

#[allow(clippy::too_many_arguments)]
async fn client_task(
    index: usize,
    client: reqwest::Client,
    targets: Arc<Vec<String>>,
    w: Workload,
    conditional: bool,
    start: Instant,
    measure_from: Duration,
    end: Duration,
) -> Record {
    let mut rng = SmallRng::seed_from_u64(w.seed.wrapping_mul(1_000_003) + index as u64);
    let users = Zipf::new(w.users as f64, w.zipf_s).expect("zipf");
    let products = Zipf::new(w.products as f64, w.zipf_s).expect("zipf");
    let cats = Zipf::new(CATEGORIES.len() as f64, w.zipf_s).expect("zipf");
    let mut kept: HashMap<String, Kept> = HashMap::new();
    let mut rec = Record::default();
    let mut writes_done = 0u64;
    loop {
        let t0 = start.elapsed();
        if t0 >= end {
            break;
        }
        let op = if rng.random_bool(w.write_ratio) {
            if rng.random_bool(0.6) {
                Op::PutUser(users.sample(&mut rng) as u64)
            } else {
                Op::PutProduct(products.sample(&mut rng) as u64)
            }
        } else {
            match rng.random_range(0..100) {
                0..50 => Op::GetUser(users.sample(&mut rng) as u64),
                50..80 => Op::GetProduct(products.sample(&mut rng) as u64),
                _ => Op::ListProducts(cats.sample(&mut rng) as usize - 1),
            }
        };
        let base = &targets[rng.random_range(0..targets.len())];
        let start_us = t0.as_micros() as u64;
        let measured = t0 >= measure_from;
        let result = match op {
            Op::PutUser(id) => {
                writes_done += 1;
                let body = serde_json::json!({
                    "name": format!("User {id} (edit {index}.{writes_done})"),
                });
                put(&client, format!("{base}/users/{id}"), body)
                    .await
                    .map(|v| (id, v))
            }
            Op::PutProduct(id) => {
                writes_done += 1;
                let body = serde_json::json!({ "price_cents": rng.random_range(100..100_000) });
                put(&client, format!("{base}/products/{id}"), body)
                    .await
                    .map(|v| (PRODUCT_BASE + id, v))
            }
            _ => {
                let path = match op {
                    Op::GetUser(id) => format!("/users/{id}"),
                    Op::GetProduct(id) => format!("/products/{id}"),
                    Op::ListProducts(c) => format!("/products?category={}", CATEGORIES[c]),
                    _ => unreachable!(),
                };
                let r = read(&client, base, &path, conditional, &mut kept).await;
                let done = start.elapsed();
                match r {
                    Ok((layer, by_edge, versions)) => {
                        for (entity, version) in versions {
                            rec.seen.push(Seen {
                                entity,
                                version,
                                start_us,
                                layer,
                            });
                        }
                        rec.samples.push(Sample {
                            layer,
                            not_modified_by_edge: by_edge,
                            latency_us: (done - t0).as_micros() as u64,
                            measured,
                        });
                    }
                    Err(e) => {
                        rec.errors.push(e);
                        rec.samples.push(Sample {
                            layer: Layer::Error,
                            not_modified_by_edge: false,
                            latency_us: (done - t0).as_micros() as u64,
                            measured,
                        });
                    }
                }
                continue;
            }
        };
        let done = start.elapsed();
        let latency_us = (done - t0).as_micros() as u64;
        match result {
            Ok((entity, version)) => {
                rec.writes.push(Written {
                    entity,
                    version,
                    done_us: done.as_micros() as u64,
                });
                rec.samples.push(Sample {
                    layer: Layer::Write,
                    not_modified_by_edge: false,
                    latency_us,
                    measured,
                });
            }
            Err(e) => {
                rec.errors.push(e);
                rec.samples.push(Sample {
                    layer: Layer::Error,
                    not_modified_by_edge: false,
                    latency_us,
                    measured,
                });
            }
        }
    }
    rec
}

/// A `PUT`; returns the new version.
async fn put(
    client: &reqwest::Client,
    url: String,
    body: serde_json::Value,
) -> Result<u64, String> {
    let r = client
        .put(&url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("PUT {url}: {e}"))?;
    let status = r.status();
    let bytes = r.bytes().await.map_err(|e| format!("PUT {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("PUT {url}: {status}"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("PUT {url}: {e}"))?;
    v["version"]
        .as_u64()
        .ok_or_else(|| format!("PUT {url}: no version in the response"))
}

type ReadOutcome = (Layer, bool, Vec<(u64, u64)>);

/// A `GET`, conditional if the client kept a copy; returns the layer and the versions seen.
async fn read(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    conditional: bool,
    kept: &mut HashMap<String, Kept>,
) -> Result<ReadOutcome, String> {
    let url = format!("{base}{path}");
    let mut req = client.get(&url);
    if conditional {
        if let Some(k) = kept.get(path) {
            req = req.header(IF_NONE_MATCH, &k.etag);
        }
    }
    let r = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
    let edge_hit = is_edge_hit(&headers);
    if status == StatusCode::NOT_MODIFIED {
        let k = kept
            .get(path)
            .ok_or_else(|| format!("GET {url}: 304 to an unconditional request"))?;
        return Ok((Layer::Client, edge_hit, k.versions.clone()));
    }
    if !status.is_success() {
        return Err(format!("GET {url}: {status}"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("GET {url}: {e}"))?;
    let versions = versions_of(path, &v).ok_or_else(|| format!("GET {url}: no versions"))?;
    let layer = if edge_hit {
        Layer::Edge
    } else {
        match headers
            .get("x-cache-source")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
        {
            "local" => Layer::Local,
            "redis" => Layer::Redis,
            "stale" => Layer::Stale,
            _ => Layer::Body,
        }
    };
    if conditional {
        if let Some(etag) = headers.get(ETAG).and_then(|h| h.to_str().ok()) {
            kept.insert(
                path.to_string(),
                Kept {
                    etag: etag.to_string(),
                    versions: versions.clone(),
                },
            );
        }
    }
    Ok((layer, edge_hit, versions))
}

/// A Varnish hit: `x-cache: HIT…`, or (without that header) an `X-Varnish` with two
/// transaction ids (this request's and the one that stored the object).
fn is_edge_hit(h: &HeaderMap) -> bool {
    if let Some(x) = h.get("x-cache").and_then(|v| v.to_str().ok()) {
        return x.to_ascii_lowercase().starts_with("hit");
    }
    h.get("x-varnish")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split_whitespace().count() == 2)
}

fn versions_of(path: &str, v: &serde_json::Value) -> Option<Vec<(u64, u64)>> {
    let one = |o: &serde_json::Value, base: u64| -> Option<(u64, u64)> {
        Some((base + o["id"].as_u64()?, o["version"].as_u64()?))
    };
    if path.starts_with("/users/") {
        Some(vec![one(v, 0)?])
    } else if path.starts_with("/products/") {
        Some(vec![one(v, PRODUCT_BASE)?])
    } else {
        v.as_array()?.iter().map(|o| one(o, PRODUCT_BASE)).collect()
    }
}
