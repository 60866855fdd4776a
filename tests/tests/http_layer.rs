//! HTTP caching (layer 3) through a real axum `Router`, driven with `oneshot` (no network):
//! handlers serve `#[cached]` functions with their validators, and conditional requests are
//! answered `304` from the cache without running the function's body.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body};
use axum::extract::Path;
use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use cache_runtime::edge::encode_surrogate_key;
use cache_runtime::http::{CachePolicy, Conditional};
use cache_runtime::{cached, codec};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    rev: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    title: String,
}

/// The revision of the users behind `get_user_write` (the only test that writes).
static WRITE_REV: AtomicU32 = AtomicU32::new(0);

fn user(id: u64) -> User {
    User {
        id,
        name: format!("user {id}"),
        rev: 0,
    }
}

// One cached function per test below: each asserts its own function's body calls.

#[cached(ttl = 60, key = "http:user:<id>", etag = true)]
async fn get_user(id: u64) -> Result<User, String> {
    if id == 0 {
        return Err("no such user".into());
    }
    Ok(user(id))
}

#[cached(ttl = 60, key = "http:user_ims:<id>", etag = true)]
async fn get_user_ims(id: u64) -> Result<User, String> {
    Ok(user(id))
}

#[cached(ttl = 60, key = "http:user_write:<id>", etag = true)]
async fn get_user_write(id: u64) -> Result<User, String> {
    Ok(User {
        rev: WRITE_REV.load(SeqCst),
        ..user(id)
    })
}

#[cached(ttl = 60, key = "http:product:<id>", etag = true, tags = ["products", "product:<id>"])]
async fn get_product(id: u64) -> Option<Product> {
    (id < 100).then(|| Product {
        id,
        title: format!("product {id}"),
    })
}

#[cached(ttl = 60, key = "http:secret:<id>", etag = true)]
async fn get_secret(id: u64) -> u64 {
    id * 7
}

const USER: CachePolicy = CachePolicy::private().max_age(Duration::from_secs(30));
const PRODUCT: CachePolicy = CachePolicy::public()
    .max_age(Duration::from_secs(10))
    .s_maxage(Duration::from_secs(300))
    .stale_while_revalidate(Duration::from_secs(30));
const SECRET: CachePolicy = CachePolicy::no_store_at_all();

// The handler idiom: one line from the cached function to the response.

async fn user_handler(cond: Conditional, Path(id): Path<u64>) -> Result<Response, StatusCode> {
    Ok(cond.json(
        get_user_entry(id)
            .await
            .map_err(|_| StatusCode::NOT_FOUND)?,
        &USER,
    ))
}

async fn user_ims_handler(cond: Conditional, Path(id): Path<u64>) -> Result<Response, String> {
    Ok(cond.json(get_user_ims_entry(id).await?, &USER))
}

async fn user_write_handler(cond: Conditional, Path(id): Path<u64>) -> Result<Response, String> {
    Ok(cond.json(get_user_write_entry(id).await?, &USER))
}

async fn product_handler(cond: Conditional, Path(id): Path<u64>) -> Result<Response, StatusCode> {
    let entry = get_product_entry(id).await.ok_or(StatusCode::NOT_FOUND)?;
    Ok(cond.json(entry, &PRODUCT))
}

async fn secret_handler(cond: Conditional, Path(id): Path<u64>) -> Response {
    cond.json(get_secret_entry(id).await, &SECRET)
}

fn app() -> Router {
    Router::new()
        .route("/users/{id}", get(user_handler))
        .route("/ims/users/{id}", get(user_ims_handler))
        .route("/write/users/{id}", get(user_write_handler))
        .route("/products/{id}", get(product_handler))
        .route("/secrets/{id}", get(secret_handler))
}

async fn send(method: Method, uri: &str, headers: &[(&str, &str)]) -> (Response, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.unwrap().to_vec();
    (Response::from_parts(parts, Body::empty()), bytes)
}

async fn get_req(uri: &str, headers: &[(&str, &str)]) -> (Response, Vec<u8>) {
    send(Method::GET, uri, headers).await
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn conditional_gets_are_answered_from_the_cache_without_running_the_body() {
    // First request: the body runs, 200 with the ETag the cache computed when storing.
    let (r, body) = get_req("/users/1", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(get_user_cache().stats().body_calls, 1);
    let etag = header(&r, "etag").expect("an ETag").to_string();
    assert_eq!(
        Some(etag.clone()),
        codec::payload_etag(&user(1)).map(|t| t.to_string())
    );
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(header(&r, "content-length"), Some(&*body.len().to_string()));
    assert_eq!(serde_json::from_slice::<User>(&body).unwrap(), user(1));
    assert_eq!(header(&r, "vary"), Some("Authorization"));
    assert_eq!(header(&r, "x-cache-source"), Some("body"));
    let cc = header(&r, "cache-control").unwrap();
    assert!(
        cc == "private, max-age=30" || cc == "private, max-age=31",
        "{cc}"
    );

    // The same tag, strong or weak, alone or in a list: 304, no content, body not run.
    let weak = format!("W/{etag}");
    let list = format!("\"nope\", junk, {weak}");
    for inm in [etag.as_str(), weak.as_str(), list.as_str(), "*"] {
        let (r, body) = get_req("/users/1", &[("if-none-match", inm)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{inm}");
        assert!(body.is_empty());
        assert_eq!(header(&r, "etag"), Some(etag.as_str()));
        assert_eq!(header(&r, "vary"), Some("Authorization"));
        assert!(header(&r, "cache-control")
            .unwrap()
            .starts_with("private, max-age="));
        assert_eq!(header(&r, "x-cache-source"), Some("local"));
        assert_eq!(header(&r, "content-length"), None, "a 304 must not say 0");
        assert_eq!(header(&r, "content-type"), None);
    }
    assert_eq!(get_user_cache().stats().body_calls, 1);

    // Another tag: the full response, still from the cache.
    let other = format!("\"{}\"", "0".repeat(32));
    let (r, body) = get_req("/users/1", &[("if-none-match", &other)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(serde_json::from_slice::<User>(&body).unwrap(), user(1));
    assert_eq!(header(&r, "x-cache-source"), Some("local"));
    assert_eq!(get_user_cache().stats().body_calls, 1);

    // HEAD: the GET's headers and length, no content; conditional HEAD too.
    let (r, body) = send(Method::HEAD, "/users/1", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(header(&r, "etag"), Some(etag.as_str()));
    let full = serde_json::to_vec(&user(1)).unwrap().len().to_string();
    assert_eq!(header(&r, "content-length"), Some(full.as_str()));
    let (r, _) = send(Method::HEAD, "/users/1", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(get_user_cache().stats().body_calls, 1);

    // An error from the cached function is the handler's to map; no caching headers.
    let (r, _) = get_req("/users/0", &[]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&r, "etag"), None);
}

#[tokio::test]
async fn if_modified_since_with_past_equal_and_future_dates() {
    let (r, _) = get_req("/ims/users/1", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let etag = header(&r, "etag").unwrap().to_string();
    // Last-Modified is only sent once the creation second is over (RFC 9110 §8.8.2.2).
    let created = get_user_ims_entry(1).await.unwrap().created();
    let created_s = created.duration_since(UNIX_EPOCH).unwrap().as_secs();
    if SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        == created_s
    {
        assert_eq!(header(&r, "last-modified"), None);
    }
    let next_second = UNIX_EPOCH + Duration::from_secs(created_s + 1);
    if let Ok(wait) = next_second.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(20)).await;
    }
    let (r, _) = get_req("/ims/users/1", &[]).await;
    let lm = header(&r, "last-modified")
        .expect("Last-Modified")
        .to_string();
    let lm_time = httpdate::parse_http_date(&lm).unwrap();
    assert_eq!(lm_time, UNIX_EPOCH + Duration::from_secs(created_s));
    let fmt = |t: SystemTime| httpdate::fmt_http_date(t);

    // Equal or later (but not in the future): 304.
    for ims in [lm.clone(), fmt(SystemTime::now())] {
        let (r, body) = get_req("/ims/users/1", &[("if-modified-since", &ims)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{ims}");
        assert!(body.is_empty());
        assert_eq!(header(&r, "etag"), Some(etag.as_str()));
    }
    // Earlier: modified since, 200.
    let past = fmt(lm_time - Duration::from_secs(1));
    let (r, _) = get_req("/ims/users/1", &[("if-modified-since", &past)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    // In the future, or not a date: ignored, 200.
    let future = fmt(SystemTime::now() + Duration::from_secs(3600));
    for ims in [future.as_str(), "yesterday", "2024-01-01"] {
        let (r, _) = get_req("/ims/users/1", &[("if-modified-since", ims)]).await;
        assert_eq!(r.status(), StatusCode::OK, "{ims}");
    }
    // If-None-Match takes precedence: a stale tag with a valid date is a 200...
    let (r, _) = get_req(
        "/ims/users/1",
        &[("if-none-match", "\"old\""), ("if-modified-since", &lm)],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    // ...and a current tag with an old date a 304.
    let (r, _) = get_req(
        "/ims/users/1",
        &[("if-none-match", &etag), ("if-modified-since", &past)],
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(get_user_ims_cache().stats().body_calls, 1);
}

#[tokio::test]
async fn a_write_changes_the_etag_and_old_copies_get_the_new_value() {
    let (r, _) = get_req("/write/users/5", &[]).await;
    let old = header(&r, "etag").unwrap().to_string();
    let (r, _) = get_req("/write/users/5", &[("if-none-match", &old)]).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    // The write: the source changes, then the entry is invalidated.
    WRITE_REV.fetch_add(1, SeqCst);
    invalidate_get_user_write(5).await.unwrap();

    let (r, body) = get_req("/write/users/5", &[("if-none-match", &old)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let new = header(&r, "etag").unwrap().to_string();
    assert_ne!(new, old);
    let got: User = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        Some(new.clone()),
        codec::payload_etag(&got).map(|t| t.to_string())
    );
    assert_eq!(get_user_write_cache().stats().body_calls, 2);
    let (r, _) = get_req("/write/users/5", &[("if-none-match", &new)]).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn public_responses_carry_shared_cache_directives_and_surrogate_keys() {
    let (r, body) = get_req("/products/7", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Product>(&body).unwrap().title,
        "product 7"
    );
    let cc = header(&r, "cache-control").unwrap();
    // s-maxage=300 is capped by the 60 s the server keeps the value.
    assert!(
        cc == "public, max-age=10, s-maxage=60, stale-while-revalidate=30"
            || cc == "public, max-age=10, s-maxage=59, stale-while-revalidate=30",
        "{cc}"
    );
    assert_eq!(header(&r, "vary"), None);
    let entry = get_product_entry(7).await.unwrap();
    let keys: Vec<String> = entry
        .tags()
        .iter()
        .map(|t| encode_surrogate_key(t).into_owned())
        .collect();
    assert!(keys.iter().any(|k| k == "products"), "{keys:?}");
    assert_eq!(header(&r, "xkey"), Some(keys.join(" ").as_str()));
    assert_eq!(header(&r, "surrogate-key"), Some(keys.join(" ").as_str()));

    let etag = header(&r, "etag").unwrap().to_string();
    let (r, _) = get_req("/products/7", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&r, "xkey"), Some(keys.join(" ").as_str()));
    assert_eq!(get_product_cache().stats().body_calls, 1);

    // `None` from the cached function: the handler's 404.
    let (r, _) = get_req("/products/100", &[]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn no_store_responses_are_never_304() {
    let (r, body) = get_req("/secrets/3", &[("if-none-match", "*")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body, b"21");
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    assert_eq!(header(&r, "last-modified"), None);
    assert_eq!(header(&r, "age"), None);
    let etag = header(&r, "etag").unwrap().to_string();
    let (r, _) = get_req("/secrets/3", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status(), StatusCode::OK);
}
