//! Contract servers for the CDN purge APIs: one per provider, on a free loopback port, that
//! checks what the provider *documents* for its purge endpoint (method, path, headers,
//! authentication, body shape, per-request limits) and answers as the documentation says,
//! errors included (401/403 with the provider's error body, 429 with `Retry-After`, 5xx, slow
//! answers). They test our side of the documented contract, not the live services, which
//! cannot be reached from tests (and would need real accounts).
//!
//! Sources (also cited in `docs/EDGE.md`):
//! * Cloudflare: `POST /client/v4/zones/{zone_id}/purge_cache`, `Authorization: Bearer`,
//!   `{"files"|"tags"|"purge_everything"}`, at most 100 URLs or tags per request, the
//!   `{"success", "errors": [{"code", "message"}]}` envelope
//!   (developers.cloudflare.com/api/.../cache/methods/purge, /cache/how-to/purge-cache/).
//! * Fastly: `POST /purge/{host}{path}`, `POST /service/{id}/purge` with
//!   `{"surrogate_keys": [...]}` (at most 256), `POST /service/{id}/purge_all`, `Fastly-Key`,
//!   `Fastly-Soft-Purge: 1` (Fastly API reference, "Purging").
//! * CloudFront: `POST /2020-05-31/distribution/{id}/invalidation` with an
//!   `InvalidationBatch`, AWS Signature V4 (service `cloudfront`, `us-east-1`), at most 3000
//!   paths and 15 wildcard paths in progress, `TooManyInvalidationsInProgress` (CloudFront API
//!   reference, CreateInvalidation; Developer Guide, "Concurrent invalidation request maximum").
//!
//! ```no_run
//! use cache_tests::cdn::{CdnContract, Fault, Purge};
//! let cf = CdnContract::cloudflare("zone1", "token");
//! cf.fail_next(2, Fault::RateLimited { retry_after_secs: 1 });
//! // ... point a CloudflarePurger at cf.api_base() and purge ...
//! assert!(cf.violations().is_empty());
//! assert!(matches!(cf.purges()[0], Purge::Urls(_)));
//! ```

#[path = "cdn_sigv4.rs"]
mod sigv4;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// Cloudflare's documented maximum of URLs or tags per purge request (non-Enterprise).
pub const CLOUDFLARE_MAX_PER_REQUEST: usize = 100;
/// Fastly's documented maximum of surrogate keys per bulk purge.
pub const FASTLY_MAX_KEYS: usize = 256;
/// CloudFront's maxima: paths per invalidation (and in progress), wildcard paths in progress.
pub const CLOUDFRONT_MAX_PATHS: usize = 3000;
pub const CLOUDFRONT_MAX_WILDCARDS: usize = 15;

/// Which API the server plays.
#[derive(Debug, Clone)]
enum Provider {
    Cloudflare {
        zone: String,
        token: String,
    },
    Fastly {
        service: String,
        token: String,
    },
    CloudFront {
        distribution: String,
        key_id: String,
        secret: String,
    },
}

/// An answer the server gives instead of a success, once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 401 with the provider's error body.
    Unauthorized,
    /// 403 with the provider's error body.
    Forbidden,
    /// 429 with `Retry-After` (for CloudFront: 400 `Throttling`, with `Retry-After`).
    RateLimited { retry_after_secs: u64 },
    /// 503 with an error body.
    ServerError,
    /// CloudFront's 400 `TooManyInvalidationsInProgress`.
    TooManyInvalidations,
    /// The answer comes after this long (then the request is handled normally).
    Slow(Duration),
}

/// A purge the server accepted, as the provider would have applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// Cloudflare `files` (full URLs), Fastly single URLs (`host/path`).
    Urls(Vec<String>),
    /// Cloudflare `tags`, Fastly `surrogate_keys`.
    Tags(Vec<String>),
    /// CloudFront invalidation paths.
    Paths(Vec<String>),
    /// Cloudflare `purge_everything`, Fastly `purge_all`.
    Everything,
}

/// One request, whatever the answer.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    /// The status the server answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    faults: VecDeque<Fault>,
    attempts: Vec<Attempt>,
    purges: Vec<(Purge, HashMap<String, String>)>,
    violations: Vec<String>,
    caller_refs: HashSet<String>,
}

/// A contract server for one provider (see the module docs). Stops with the test process.
pub struct CdnContract {
    port: u16,
    provider: Provider,
    state: Arc<Mutex<State>>,
}

impl CdnContract {
    /// Cloudflare's purge API for `zone`, accepting the API token `token`.
    pub fn cloudflare(zone: &str, token: &str) -> Self {
        Self::start(Provider::Cloudflare {
            zone: zone.into(),
            token: token.into(),
        })
    }

    /// Fastly's purge API for `service`, accepting the API token `token`.
    pub fn fastly(service: &str, token: &str) -> Self {
        Self::start(Provider::Fastly {
            service: service.into(),
            token: token.into(),
        })
    }

    /// CloudFront's `CreateInvalidation` for `distribution`, accepting requests signed with
    /// this access key and secret.
    pub fn cloudfront(distribution: &str, key_id: &str, secret: &str) -> Self {
        Self::start(Provider::CloudFront {
            distribution: distribution.into(),
            key_id: key_id.into(),
            secret: secret.into(),
        })
    }

    fn start(provider: Provider) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (p, s) = (provider.clone(), state.clone());
        std::thread::Builder::new()
            .name("cdn-contract".into())
            .spawn(move || {
                let rt = crate::current_thread_runtime();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind a loopback port");
                    tx.send(listener.local_addr().unwrap().port()).unwrap();
                    let app = axum::Router::new().fallback(
                        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                            let (p, s) = (p.clone(), s.clone());
                            async move { handle(&p, &s, method, uri, headers, body).await }
                        },
                    );
                    axum::serve(listener, app).await.expect("contract server");
                });
            })
            .expect("spawn the contract server");
        let port = rx.recv().expect("the contract server started");
        Self {
            port,
            provider,
            state,
        }
    }

    /// The API root to configure the purger with (`api_base`).
    pub fn api_base(&self) -> String {
        match self.provider {
            Provider::Cloudflare { .. } => format!("http://127.0.0.1:{}/client/v4", self.port),
            _ => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// Answers the next `n` requests with `fault`.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        let mut s = self.state.lock().unwrap();
        s.faults.extend(std::iter::repeat_n(fault, n));
    }

    /// Purges accepted so far, in order.
    pub fn purges(&self) -> Vec<Purge> {
        let s = self.state.lock().unwrap();
        s.purges.iter().map(|(p, _)| p.clone()).collect()
    }

    /// Purges accepted so far with the request headers (lower-case names).
    pub fn purges_with_headers(&self) -> Vec<(Purge, HashMap<String, String>)> {
        self.state.lock().unwrap().purges.clone()
    }

    /// Every request received, answered or not.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.state.lock().unwrap().attempts.clone()
    }

    /// Requests that broke the documented contract (each was answered with the provider's
    /// 400 error). Tests assert this is empty.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    /// Every URL, tag or path accepted so far, flattened.
    pub fn purged_items(&self) -> Vec<String> {
        self.purges()
            .into_iter()
            .flat_map(|p| match p {
                Purge::Urls(v) | Purge::Tags(v) | Purge::Paths(v) => v,
                Purge::Everything => vec!["*everything*".into()],
            })
            .collect()
    }
}

async fn handle(
    provider: &Provider,
    state: &Mutex<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fault = state.lock().unwrap().faults.pop_front();
    let fault = match fault {
        Some(Fault::Slow(d)) => {
            tokio::time::sleep(d).await;
            None
        }
        other => other,
    };
    let heads: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let response = match fault {
        Some(f) => fault_response(provider, f),
        None => {
            let checked = match provider {
                Provider::Cloudflare { zone, token } => {
                    cloudflare(zone, token, &method, &uri, &heads, &body)
                }
                Provider::Fastly { service, token } => {
                    fastly(service, token, &method, &uri, &heads, &body)
                }
                Provider::CloudFront {
                    distribution,
                    key_id,
                    secret,
                } => cloudfront(
                    distribution,
                    AwsKey { id: key_id, secret },
                    &method,
                    &uri,
                    &heads,
                    &body,
                ),
            };
            let mut s = state.lock().unwrap();
            match checked {
                Ok(purge) => {
                    if let Purge::Paths(_) = &purge {
                        if let Some(r) =
                            xml_text(&String::from_utf8_lossy(&body), "CallerReference")
                        {
                            if !s.caller_refs.insert(r.clone()) {
                                s.violations.push(format!("CallerReference {r} reused"));
                            }
                        }
                    }
                    s.purges.push((purge, heads.clone()));
                    success(provider)
                }
                Err(Refusal::Auth(r)) => *r,
                Err(Refusal::Contract(why)) => {
                    s.violations.push(why.clone());
                    bad_request(provider, &why)
                }
            }
        }
    };
    state.lock().unwrap().attempts.push(Attempt {
        at: Instant::now(),
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: heads,
        status: response.status().as_u16(),
    });
    response
}

enum Refusal {
    /// Credentials refused: the provider's own answer.
    Auth(Box<Response>),
    /// Not what the documentation allows: 400.
    Contract(String),
}

type Checked = Result<Purge, Refusal>;

fn contract(why: impl Into<String>) -> Refusal {
    Refusal::Contract(why.into())
}

fn cloudflare_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "success": false,
        "errors": [{ "code": code, "message": message }],
        "messages": [],
        "result": null
    });
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn cloudflare(
    zone: &str,
    token: &str,
    method: &Method,
    uri: &Uri,
    h: &HashMap<String, String>,
    body: &[u8],
) -> Checked {
    if method != Method::POST || uri.path() != format!("/client/v4/zones/{zone}/purge_cache") {
        return Err(contract(format!("cloudflare: {method} {uri}")));
    }
    if h.get("authorization") != Some(&format!("Bearer {token}")) {
        return Err(Refusal::Auth(Box::new(cloudflare_error(
            StatusCode::FORBIDDEN,
            10000,
            "Authentication error",
        ))));
    }
    if h.get("content-type").map(String::as_str) != Some("application/json") {
        return Err(contract("cloudflare: content-type is not application/json"));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| contract(format!("json: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| contract("body is not an object"))?;
    if obj.len() != 1 {
        return Err(contract(format!(
            "one purge type per request, got {:?}",
            obj.keys()
        )));
    }
    let list = |key: &str| -> Result<Vec<String>, Refusal> {
        let items: Vec<String> = obj[key]
            .as_array()
            .ok_or_else(|| contract(format!("{key} is not an array")))?
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| contract("not a string"))
            })
            .collect::<Result<_, _>>()?;
        if items.is_empty() || items.len() > CLOUDFLARE_MAX_PER_REQUEST {
            return Err(contract(format!("{key}: {} items", items.len())));
        }
        Ok(items)
    };
    if obj.contains_key("files") {
        let files = list("files")?;
        if let Some(bad) = files
            .iter()
            .find(|f| !f.starts_with("http://") && !f.starts_with("https://"))
        {
            return Err(contract(format!("files: {bad:?} is not a full URL")));
        }
        Ok(Purge::Urls(files))
    } else if obj.contains_key("tags") {
        let tags = list("tags")?;
        if let Some(bad) = tags.iter().find(|t| t.contains([' ', ','])) {
            return Err(contract(format!("tags: {bad:?} has a space or comma")));
        }
        Ok(Purge::Tags(tags))
    } else if obj.get("purge_everything") == Some(&Value::Bool(true)) {
        Ok(Purge::Everything)
    } else {
        Err(contract(format!("unknown purge {v}")))
    }
}

fn fastly_error(status: StatusCode, msg: &str) -> Response {
    let body = json!({ "msg": msg, "detail": "" });
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn fastly(
    service: &str,
    token: &str,
    method: &Method,
    uri: &Uri,
    h: &HashMap<String, String>,
    body: &[u8],
) -> Checked {
    if method != Method::POST {
        return Err(contract(format!("fastly: {method} {uri}")));
    }
    if h.get("fastly-key") != Some(&token.to_string()) {
        return Err(Refusal::Auth(Box::new(fastly_error(
            StatusCode::UNAUTHORIZED,
            "Provided credentials are missing or invalid",
        ))));
    }
    let path = uri.path();
    if let Some(url) = path.strip_prefix("/purge/") {
        if !url.contains('/') || url.starts_with('/') {
            return Err(contract(format!("fastly: {url:?} is not host/path")));
        }
        return Ok(Purge::Urls(vec![url.to_string()]));
    }
    if path == format!("/service/{service}/purge_all") {
        if h.contains_key("fastly-soft-purge") {
            return Err(contract("fastly: purge_all cannot be soft"));
        }
        return Ok(Purge::Everything);
    }
    if path != format!("/service/{service}/purge") {
        return Err(contract(format!("fastly: unknown path {path}")));
    }
    if h.get("content-type").map(String::as_str) != Some("application/json") {
        return Err(contract("fastly: bulk purge without application/json"));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| contract(format!("json: {e}")))?;
    let keys: Vec<String> = v["surrogate_keys"]
        .as_array()
        .ok_or_else(|| contract("surrogate_keys is not an array"))?
        .iter()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    if keys.is_empty() || keys.len() > FASTLY_MAX_KEYS {
        return Err(contract(format!("surrogate_keys: {} keys", keys.len())));
    }
    // Keys are printable ASCII without spaces (they are space-separated in headers).
    if let Some(bad) = keys
        .iter()
        .find(|k| !k.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(contract(format!("surrogate key {bad:?}")));
    }
    Ok(Purge::Tags(keys))
}

fn cloudfront_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\"?><ErrorResponse xmlns=\"http://cloudfront.amazonaws.com/doc/2020-05-31/\">\
         <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>\
         <RequestId>test-request</RequestId></ErrorResponse>"
    );
    (status, [("content-type", "text/xml")], body).into_response()
}

/// The access key and secret a CloudFront contract server accepts.
struct AwsKey<'a> {
    id: &'a str,
    secret: &'a str,
}

fn cloudfront(
    distribution: &str,
    key: AwsKey<'_>,
    method: &Method,
    uri: &Uri,
    h: &HashMap<String, String>,
    body: &[u8],
) -> Checked {
    let expected = format!("/2020-05-31/distribution/{distribution}/invalidation");
    if method != Method::POST || uri.path() != expected {
        return Err(contract(format!("cloudfront: {method} {uri}")));
    }
    sigv4::verify(key.id, key.secret, method, uri, h, body).map_err(|(code, msg)| {
        Refusal::Auth(Box::new(cloudfront_error(
            StatusCode::FORBIDDEN,
            code,
            &msg,
        )))
    })?;
    let xml = String::from_utf8_lossy(body);
    if !xml
        .contains("<InvalidationBatch xmlns=\"http://cloudfront.amazonaws.com/doc/2020-05-31/\">")
    {
        return Err(contract("cloudfront: not an InvalidationBatch"));
    }
    if xml_text(&xml, "CallerReference").is_none_or(|r| r.is_empty()) {
        return Err(contract("cloudfront: no CallerReference"));
    }
    let paths: Vec<String> = xml
        .split("<Path>")
        .skip(1)
        .filter_map(|p| p.split("</Path>").next())
        .map(|p| p.replace("&amp;", "&"))
        .collect();
    let quantity: usize = xml_text(&xml, "Quantity")
        .and_then(|q| q.parse().ok())
        .ok_or_else(|| contract("cloudfront: no Quantity"))?;
    if quantity != paths.len() || paths.is_empty() || paths.len() > CLOUDFRONT_MAX_PATHS {
        return Err(contract(format!(
            "cloudfront: Quantity {quantity}, {} paths",
            paths.len()
        )));
    }
    let wildcards = paths.iter().filter(|p| p.contains('*')).count();
    if wildcards > CLOUDFRONT_MAX_WILDCARDS {
        return Err(contract(format!("cloudfront: {wildcards} wildcard paths")));
    }
    if let Some(bad) = paths
        .iter()
        .find(|p| !p.starts_with('/') || p.trim_end_matches('*').contains('*'))
    {
        return Err(contract(format!("cloudfront: path {bad:?}")));
    }
    Ok(Purge::Paths(paths))
}

fn xml_text(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].to_string())
}

fn success(provider: &Provider) -> Response {
    match provider {
        Provider::Cloudflare { .. } => {
            let body = json!({ "success": true, "errors": [], "messages": [], "result": { "id": "purge-1" } });
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Provider::Fastly { .. } => {
            let body = json!({ "status": "ok", "id": "108-1391560174-974124" });
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Provider::CloudFront { .. } => {
            let body = "<?xml version=\"1.0\"?><Invalidation xmlns=\"http://cloudfront.amazonaws.com/doc/2020-05-31/\">\
                        <Id>IDFDVBD632BHDS5</Id><Status>InProgress</Status></Invalidation>";
            (StatusCode::CREATED, [("content-type", "text/xml")], body).into_response()
        }
    }
}

fn bad_request(provider: &Provider, why: &str) -> Response {
    match provider {
        Provider::Cloudflare { .. } => cloudflare_error(StatusCode::BAD_REQUEST, 1012, why),
        Provider::Fastly { .. } => fastly_error(StatusCode::BAD_REQUEST, why),
        Provider::CloudFront { .. } => {
            cloudfront_error(StatusCode::BAD_REQUEST, "InvalidArgument", why)
        }
    }
}

fn fault_response(provider: &Provider, fault: Fault) -> Response {
    use StatusCode as S;
    let (status, retry_after) = match fault {
        Fault::Unauthorized => (S::UNAUTHORIZED, None),
        Fault::Forbidden => (S::FORBIDDEN, None),
        Fault::RateLimited { retry_after_secs } => (S::TOO_MANY_REQUESTS, Some(retry_after_secs)),
        Fault::ServerError => (S::SERVICE_UNAVAILABLE, None),
        Fault::TooManyInvalidations => (S::BAD_REQUEST, None),
        Fault::Slow(_) => unreachable!("handled before"),
    };
    let mut r = match (provider, fault) {
        (Provider::Cloudflare { .. }, Fault::RateLimited { .. }) => cloudflare_error(
            status,
            971,
            "Please wait and consider throttling your request speed",
        ),
        (Provider::Cloudflare { .. }, _) => cloudflare_error(status, 10000, "Authentication error"),
        (Provider::Fastly { .. }, _) => fastly_error(status, "error"),
        (Provider::CloudFront { .. }, Fault::TooManyInvalidations) => cloudfront_error(
            status,
            "TooManyInvalidationsInProgress",
            "Processing your request will cause you to exceed the maximum number of in-progress invalidations.",
        ),
        (Provider::CloudFront { .. }, Fault::RateLimited { .. }) => {
            cloudfront_error(S::BAD_REQUEST, "Throttling", "Rate exceeded")
        }
        (Provider::CloudFront { .. }, Fault::Unauthorized | Fault::Forbidden) => cloudfront_error(
            S::FORBIDDEN,
            "AccessDenied",
            "User is not authorized to perform: cloudfront:CreateInvalidation",
        ),
        (Provider::CloudFront { .. }, _) => {
            cloudfront_error(status, "ServiceUnavailable", "try again")
        }
    };
    if let Some(secs) = retry_after {
        r.headers_mut()
            .insert("retry-after", secs.to_string().parse().unwrap());
    }
    r
}
