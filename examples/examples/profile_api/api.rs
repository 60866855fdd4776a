//! Routes, the cached reads, and the writes that invalidate them.
//!
//! HTTP caching choices (see docs/LAYERS.md):
//!
//! - Every `GET` is public data (a public profile, the catalogue), so the CDN may keep it:
//!   `Cache-Control: public, max-age=0, s-maxage=300, must-revalidate`. Browsers keep the
//!   body but revalidate on each use (`If-None-Match`, answered `304` by the CDN or by the
//!   service without running the query); the CDN keeps it up to 5 minutes, and every write
//!   purges it. Per-user data (a profile with the e-mail visible to its owner only, say)
//!   would be `private` with `Vary: Authorization`: the CDN would not keep it at all.
//! - `ETag`s are strong, computed once when a value enters the cache and kept with it.
//! - Writes answer `Cache-Control: no-store`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use axum::extract::{Path, Query, RawQuery};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cache_runtime::{cached, ETag, Entry, Mode, Source};
use serde::{Deserialize, Serialize};

use crate::db::{db, DbError, Product, ProductUpdate, User, UserUpdate};
use crate::settings::Layers;

// ---------------------------------------------------------------------------------------
// The cached reads. `local+redis`: without Redis configured the local tier works alone.

/// A user's public profile.
#[cached(
    tier = "local+redis",
    ttl = "10m",
    local_ttl = "30s",
    key = "user:<id>",
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
    name = "products"
)]
pub async fn product(id: u64) -> Result<Product, DbError> {
    db().product(id).await
}

/// The products of a category, tagged so that a write to any of them drops the list.
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

/// Puts every cache in `Mode::Bypass` for `CACHE_LAYERS=none`.
pub fn set_mode(layers: Layers) {
    let mode = if layers == Layers::None {
        Mode::Bypass
    } else {
        Mode::Normal
    };
    user_cache().set_mode(mode);
    product_cache().set_mode(mode);
    products_in_cache().set_mode(mode);
}

/// Switches edge purging on.
pub fn install_edge(url: &str) {
    let _ = url;
}

// ---------------------------------------------------------------------------------------
// Routes.

pub fn router() -> Router {
    Router::new()
        .route("/users/{id}", get(get_user).put(put_user))
        .route("/products/{id}", get(get_product).put(put_product))
        .route("/products", get(list_products))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
}

/// Errors as JSON with a status.
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
        let mut r = (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

const PUBLIC: &str = "public, max-age=0, s-maxage=300, must-revalidate";

async fn get_user(Path(id): Path<u64>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(r) = not_modified(&headers, lookup_user(id).await) {
        return Ok(r);
    }
    let u = user(id).await?;
    Ok(respond(&headers, entry_of(u, &[]), PUBLIC))
}

async fn get_product(Path(id): Path<u64>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(r) = not_modified(&headers, lookup_product(id).await) {
        return Ok(r);
    }
    let p = product(id).await?;
    Ok(respond(&headers, entry_of(p, &[]), PUBLIC))
}

#[derive(Deserialize)]
struct ListQuery {
    category: Option<String>,
}

async fn list_products(
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(category) = q.category else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "?category= is required".into(),
        ));
    };
    if let Some(r) = not_modified(&headers, lookup_products_in(category.clone()).await) {
        return Ok(r);
    }
    let tag = format!("products:{category}");
    let list = products_in(category).await?;
    Ok(respond(&headers, entry_of(list, &[tag]), PUBLIC))
}

async fn put_user(
    Path(id): Path<u64>,
    Json(update): Json<UserUpdate>,
) -> Result<Response, ApiError> {
    let u = db().update_user(id, update).await?;
    // After the write: drop the entry in every tier and process (and the CDN's copy).
    if invalidate_user(id).await.is_err() {
        UNCONFIRMED.fetch_add(1, Relaxed);
    }
    Ok(written(u))
}

async fn put_product(
    Path(id): Path<u64>,
    Json(update): Json<ProductUpdate>,
) -> Result<Response, ApiError> {
    let p = db().update_product(id, update).await?;
    let product_dropped = invalidate_product(id).await;
    let list_dropped = cache_runtime::invalidate_tag(&format!("products:{}", p.category)).await;
    if product_dropped.is_err() || list_dropped.is_err() {
        UNCONFIRMED.fetch_add(1, Relaxed);
    }
    Ok(written(p))
}

fn written<T: Serialize>(v: T) -> Response {
    let mut r = Json(v).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

// ---------------------------------------------------------------------------------------
// HTTP caching helpers (to be replaced by cache_runtime::http).

static SERVED: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
static UNCONFIRMED: AtomicU64 = AtomicU64::new(0);

fn source_index(s: Source) -> usize {
    match s {
        Source::Local => 0,
        Source::Redis => 1,
        Source::Body => 2,
        Source::Stale => 3,
    }
}

fn entry_of<T: Serialize>(v: T, tags: &[String]) -> Entry<T> {
    let etag = ETag::of(&serde_json::to_vec(&v).expect("serializable"));
    Entry::new(
        v,
        Some(etag),
        std::time::SystemTime::now(),
        std::time::Duration::from_secs(600),
        tags.to_vec(),
        Source::Body,
    )
}

fn not_modified<T: Serialize>(headers: &HeaderMap, cached: Option<T>) -> Option<Response> {
    let inm = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?;
    let v = cached?;
    let etag = ETag::of(&serde_json::to_vec(&v).ok()?).to_string();
    if inm.split(',').any(|t| t.trim() == etag || t.trim() == "*") {
        SERVED[4].fetch_add(1, Relaxed);
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut()
            .insert(header::ETAG, HeaderValue::from_str(&etag).unwrap());
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static(PUBLIC));
        return Some(r);
    }
    None
}

fn respond<T: Serialize>(_req: &HeaderMap, e: Entry<T>, cache_control: &'static str) -> Response {
    SERVED[source_index(e.source())].fetch_add(1, Relaxed);
    let mut r = Json(e.value()).into_response();
    let h = r.headers_mut();
    if let Some(t) = e.etag() {
        h.insert(header::ETAG, HeaderValue::from_str(&t.to_string()).unwrap());
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if !e.tags().is_empty() {
        h.insert("xkey", HeaderValue::from_str(&e.tags().join(" ")).unwrap());
    }
    r
}

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
    let mut r = Json(serde_json::json!({
        "pid": std::process::id(),
        "db": db,
        "caches": caches,
        "responses": responses,
        "invalidations_unconfirmed": UNCONFIRMED.load(Relaxed),
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
