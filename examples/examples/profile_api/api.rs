//! Routes, the cached reads, and the writes that invalidate them.
//!
//! HTTP caching choices (see docs/LAYERS.md):
//!
//! - Public data (a profile's public fields, the catalogue) is the same for every caller, so
//!   the CDN may keep it: `Cache-Control: public, max-age=0, s-maxage=300`. Browsers keep the
//!   body but revalidate on each use (`If-None-Match`, answered `304` by the CDN, or by the
//!   service from its cache without running the query); the CDN keeps it up to 5 minutes
//!   (never past the server cache's remaining TTL), and every write purges it
//!   (`purge = [...]` paths, and the list's tag through `xkey`).
//! - Personal data (the e-mail) is only in `GET /users/{id}/private`, for the user's own
//!   bearer token: `Cache-Control: private, max-age=30` with `Vary: Authorization`, which no
//!   CDN stores and a browser keeps for that token only. Both endpoints read the same cached
//!   row; the public one never serializes the personal fields.
//! - `ETag`s are strong, computed once when a value enters the cache and kept with it.
//! - Writes answer `Cache-Control: no-store`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, RawQuery};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cache_runtime::http::{CachePolicy, Conditional};
use cache_runtime::{cached, edge, Entry, Mode, Source};
use serde::{Deserialize, Serialize};

use crate::db::{db, DbError, Product, ProductUpdate, User, UserUpdate};
use crate::settings::Layers;

// ---------------------------------------------------------------------------------------
// The cached reads. `local+redis`: without Redis configured the local tier works alone.
// Writes go through `invalidate_*`, which also purge the `purge` paths at the edge.

/// A user's public profile.
#[cached(
    tier = "local+redis",
    ttl = "10m",
    local_ttl = "30s",
    key = "user:<id>",
    purge = ["/users/<id>"],
    name = "users"
)]
pub async fn user(id: u64) -> Result<User, DbError> {
    db().user(id).await
}

/// A product.
#[cached(
    tier = "local+redis",
    ttl = "10m",
    local_ttl = "30s",
    key = "product:<id>",
    purge = ["/products/<id>"],
    name = "products"
)]
pub async fn product(id: u64) -> Result<Product, DbError> {
    db().product(id).await
}

/// The products of a category, tagged so that a write to any of them drops the list (in
/// every process, and at the edge through the response's `xkey` header).
#[cached(
    tier = "local+redis",
    ttl = "10m",
    local_ttl = "30s",
    key = "products:<category>",
    tags = ["products:<category>"],
    name = "product_lists"
)]
pub async fn products_in(category: String) -> Result<Vec<Product>, DbError> {
    match db().products_in(category).await? {
        Some(list) => Ok(list),
        None => Err(DbError::NotFound),
    }
}

/// How a product write drops the cached list of its category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListInvalidation {
    /// `cache_runtime::invalidate_tag("products:<category>")`: every entry carrying the tag,
    /// in every process (and, at the edge, every response with that `xkey`).
    Tag,
    /// `invalidate_products_in(category)`: the one list entry, by key (and the tag purged at
    /// the edge with `edge::enqueue_tags`). Same effect here, since one list is cached per
    /// category; see docs/LAYERS.md for why the difference is measurable.
    Key,
}

/// Options of the routes, set once at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub list_invalidation: ListInvalidation,
}

static OPTIONS: std::sync::OnceLock<Options> = std::sync::OnceLock::new();

fn options() -> Options {
    *OPTIONS.get().expect("api::configure is called at start-up")
}

/// Sets the options, and puts every cache in `Mode::Bypass` for `CACHE_LAYERS=none`.
pub fn configure(layers: Layers, options: Options) {
    OPTIONS.set(options).expect("configured once");
    let mode = if layers == Layers::None {
        Mode::Bypass
    } else {
        Mode::Normal
    };
    user_cache().set_mode(mode);
    product_cache().set_mode(mode);
    products_in_cache().set_mode(mode);
}

// ---------------------------------------------------------------------------------------
// Routes.

pub fn router() -> Router {
    Router::new()
        .route("/users/{id}", get(get_user).put(put_user))
        .route("/users/{id}/private", get(get_user_private))
        .route("/products/{id}", get(get_product).put(put_product))
        .route("/products", get(list_products))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
}

/// Public data: browsers revalidate every time, the CDN keeps it 5 minutes or until purged.
const PUBLIC: CachePolicy = CachePolicy::public().s_maxage(Duration::from_secs(300));

/// Personal data: the caller's browser only, 30 s, per `Authorization` (`private` varies on
/// it by default); never a shared cache.
const PRIVATE: CachePolicy = CachePolicy::private().max_age(Duration::from_secs(30));

/// What anyone may see of a user, and so what a CDN may store.
#[derive(Serialize)]
struct PublicProfile {
    id: u64,
    name: String,
    bio: String,
    version: u64,
    updated_unix_ms: u64,
}

impl From<User> for PublicProfile {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            name: u.name,
            bio: u.bio,
            version: u.version,
            updated_unix_ms: u.updated_unix_ms,
        }
    }
}

/// What only the user may see.
#[derive(Serialize)]
struct PrivateProfile {
    id: u64,
    email: String,
    version: u64,
}

impl From<User> for PrivateProfile {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            version: u.version,
        }
    }
}

/// A tiny stand-in for a real session or JWT check: user `id`'s bearer token is
/// `<id>.<API_SECRET>` (`API_SECRET` from the environment, `dev-secret` when unset).
fn authorized(headers: &HeaderMap, id: u64) -> bool {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let secret =
        SECRET.get_or_init(|| std::env::var("API_SECRET").unwrap_or_else(|_| "dev-secret".into()));
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| token == format!("{id}.{secret}"))
}

/// Errors as JSON with a status, never stored by any cache.
pub struct ApiError(StatusCode, String);

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound => ApiError(StatusCode::NOT_FOUND, "not found".into()),
            DbError::Sql(s) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, s),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        no_store((self.0, Json(serde_json::json!({ "error": self.1 }))).into_response())
    }
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn get_user(cond: Conditional, Path(id): Path<u64>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let profile = user_entry(id).await?.map(PublicProfile::from);
    Ok(reply(&cond, profile, started))
}

async fn get_user_private(
    cond: Conditional,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    if !authorized(&headers, id) {
        let mut r = ApiError(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required".into(),
        )
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Ok(r);
    }
    let profile = user_entry(id).await?.map(PrivateProfile::from);
    Ok(cond.json(&profile, &PRIVATE))
}

async fn get_product(cond: Conditional, Path(id): Path<u64>) -> Result<Response, ApiError> {
    let started = Instant::now();
    Ok(reply(&cond, product_entry(id).await?, started))
}

#[derive(Deserialize)]
struct ListQuery {
    category: Option<String>,
}

async fn list_products(
    cond: Conditional,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let category = q
        .category
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "?category= is required".into()))?;
    Ok(reply(&cond, products_in_entry(category).await?, started))
}

/// Sent instead of `PUBLIC` when producing the response took so long that the CDN could
/// store it after the second purge of a write that happened meanwhile.
///
/// `cache_runtime::edge` purges every path and tag a second time, `repurge_after` (1 s)
/// after the first purge, which covers every CDN fetch that ends within that time of the
/// write. Only the service knows how long a response took: a response whose value was read
/// before a write and that reaches the CDN after the second purge would stay there for the
/// whole `s-maxage`. So a response that took more than half of `repurge_after` (half: the
/// time measured here misses the request's wait before the handler and the invalidation
/// bus's delay in other processes) is not shared.
const TOO_SLOW_TO_SHARE: CachePolicy = CachePolicy::public().no_store();

/// The entry as JSON with its validators and `PUBLIC`, or a `304` if the client's copy is
/// current; counted by where the value came from.
fn reply<V: Serialize>(cond: &Conditional, e: Entry<V>, started: Instant) -> Response {
    let source = e.source();
    let policy = match edge::repurge_after() {
        Some(d) if started.elapsed() > d / 2 => {
            SLOW_NOT_SHARED.fetch_add(1, Relaxed);
            &TOO_SLOW_TO_SHARE
        }
        _ => &PUBLIC,
    };
    let r = cond.json(&e, policy);
    let i = if r.status() == StatusCode::NOT_MODIFIED {
        4
    } else {
        match source {
            Source::Local => 0,
            Source::Redis => 1,
            Source::Body => 2,
            Source::Stale => 3,
        }
    };
    SERVED[i].fetch_add(1, Relaxed);
    r
}

async fn put_user(
    Path(id): Path<u64>,
    Json(update): Json<UserUpdate>,
) -> Result<Response, ApiError> {
    let u = db().update_user(id, update).await?;
    // After the write: drop the entry in every tier and process, and purge `/users/{id}` at
    // the edge. (Not `populate_user`: two concurrent writes could then store the older row
    // last; an invalidation is idempotent, and the next read loads the current row.)
    let dropped = invalidate_user(id).await;
    after_write(dropped.is_ok());
    Ok(no_store(Json(u).into_response()))
}

async fn put_product(
    Path(id): Path<u64>,
    Json(update): Json<ProductUpdate>,
) -> Result<Response, ApiError> {
    let p = db().update_product(id, update).await?;
    // The product (and `/products/{id}` at the edge), and the list of its category (and, at
    // the edge, every response carrying its `xkey`).
    let dropped = invalidate_product(id).await;
    let tag = format!("products:{}", p.category);
    let list_dropped = match options().list_invalidation {
        ListInvalidation::Tag => cache_runtime::invalidate_tag(&tag).await,
        ListInvalidation::Key => {
            let r = invalidate_products_in(p.category.clone()).await;
            edge::enqueue_tags(vec![tag]);
            r
        }
    };
    after_write(dropped.is_ok() && list_dropped.is_ok());
    Ok(no_store(Json(p).into_response()))
}

/// Counts invalidations Redis did not confirm (the runtime retries them). The edge purges
/// (`purge = [...]` paths, tags) were enqueued by the invalidations; `cache_runtime::edge`
/// purges each one a second time by itself (see `TOO_SLOW_TO_SHARE`) and times them (the
/// purge latency in `/metrics`).
fn after_write(confirmed: bool) {
    if !confirmed {
        UNCONFIRMED.fetch_add(1, Relaxed);
    }
}

/// Responses by source: local, redis, body, stale, and 304 Not Modified.
static SERVED: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
static UNCONFIRMED: AtomicU64 = AtomicU64::new(0);
static SLOW_NOT_SHARED: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------------------
// Metrics.

#[derive(Serialize)]
struct CacheRow {
    name: String,
    mode: String,
    local_hits: u64,
    redis_hits: u64,
    misses: u64,
    coalesced: u64,
    body_calls: u64,
    invalidations: u64,
    hit_ratio: f64,
}

async fn metrics(RawQuery(q): RawQuery) -> Response {
    let caches: Vec<CacheRow> = [
        (
            user_cache().name(),
            user_cache().stats(),
            user_cache().mode(),
        ),
        (
            product_cache().name(),
            product_cache().stats(),
            product_cache().mode(),
        ),
        (
            products_in_cache().name(),
            products_in_cache().stats(),
            products_in_cache().mode(),
        ),
    ]
    .into_iter()
    .map(|(name, s, mode)| CacheRow {
        name: name.to_string(),
        mode: mode.to_string(),
        local_hits: s.local_hits,
        redis_hits: s.redis_hits,
        misses: s.misses,
        coalesced: s.coalesced,
        body_calls: s.body_calls,
        invalidations: s.invalidations,
        hit_ratio: s.hit_ratio(),
    })
    .collect();
    let db = db().stats();
    let e = edge::stats();
    let served = |i: usize| SERVED[i].load(Relaxed);
    let responses = serde_json::json!({
        "local": served(0), "redis": served(1), "body": served(2), "stale": served(3),
        "not_modified": served(4),
    });
    if q.as_deref()
        .is_some_and(|q| q.contains("format=prometheus"))
    {
        let mut out = String::new();
        use std::fmt::Write;
        let _ = writeln!(out, "# TYPE profile_api_db_queries_total counter");
        let _ = writeln!(
            out,
            "profile_api_db_queries_total{{kind=\"read\"}} {}",
            db.reads
        );
        let _ = writeln!(
            out,
            "profile_api_db_queries_total{{kind=\"write\"}} {}",
            db.writes
        );
        let _ = writeln!(out, "# TYPE profile_api_responses_total counter");
        for (i, s) in ["local", "redis", "body", "stale", "not_modified"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                out,
                "profile_api_responses_total{{source=\"{s}\"}} {}",
                served(i)
            );
        }
        let _ = writeln!(out, "# TYPE profile_api_edge_purges_total counter");
        for (result, n) in [
            ("sent", e.sent),
            ("failed", e.failed),
            ("dropped", e.dropped),
        ] {
            let _ = writeln!(
                out,
                "profile_api_edge_purges_total{{result=\"{result}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# TYPE profile_api_edge_purge_latency_seconds summary");
        for (q, d) in [
            ("0.5", e.latency_p50),
            ("0.99", e.latency_p99),
            ("1", e.latency_max),
        ] {
            let _ = writeln!(
                out,
                "profile_api_edge_purge_latency_seconds{{quantile=\"{q}\"}} {}",
                d.as_secs_f64()
            );
        }
        let _ = writeln!(out, "# TYPE profile_api_cache_hits_total counter");
        for c in &caches {
            let _ = writeln!(
                out,
                "profile_api_cache_hits_total{{cache=\"{}\",tier=\"local\"}} {}",
                c.name, c.local_hits
            );
            let _ = writeln!(
                out,
                "profile_api_cache_hits_total{{cache=\"{}\",tier=\"redis\"}} {}",
                c.name, c.redis_hits
            );
        }
        let _ = writeln!(out, "# TYPE profile_api_cache_misses_total counter");
        for c in &caches {
            let _ = writeln!(
                out,
                "profile_api_cache_misses_total{{cache=\"{}\"}} {}",
                c.name, c.misses
            );
        }
        let mut r = out.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return r;
    }
    no_store(
        Json(serde_json::json!({
            "pid": std::process::id(),
            "db": db,
            "caches": caches,
            "responses": responses,
            "invalidations_unconfirmed": UNCONFIRMED.load(Relaxed),
            "edge": {
                "configured": edge::configured(),
                "enqueued": e.enqueued, "coalesced": e.coalesced, "sent": e.sent,
                "failed": e.failed, "dropped": e.dropped, "retried": e.retried,
                "pending": e.pending, "repurged": e.repurged, "delayed": e.delayed,
                "repurge_after_ms": edge::repurge_after().map_or(0, |d| d.as_millis() as u64),
                // Enqueue → acknowledged by every purger (recent first purges; max: ever).
                "purge_latency_ms": {
                    "p50": ms(e.latency_p50), "p99": ms(e.latency_p99), "max": ms(e.latency_max),
                },
                "slow_responses_not_shared": SLOW_NOT_SHARED.load(Relaxed),
            },
        }))
        .into_response(),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
