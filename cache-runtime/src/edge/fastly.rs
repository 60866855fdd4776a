//! [`FastlyPurger`]: URL purges, batched surrogate-key purges and purge-all through Fastly's
//! API, authenticated with `Fastly-Key`, optionally soft.

use std::fmt;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request};
use serde_json::{json, Value};

use super::client::{
    check_url, client, partial_failure, secret_header, send, snippet, status_error, HttpClient,
};
use super::cloudflare::absolute;
use super::{
    encode_path, encode_surrogate_key, BoxFuture, EdgeError, PurgeBatch, PurgeError, Purger,
};

const API: &str = "https://api.fastly.com";
/// Surrogate keys per bulk purge request: Fastly's documented maximum.
const DEFAULT_MAX_KEYS: usize = 256;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CONCURRENCY: usize = 8;
const FASTLY_KEY: HeaderName = HeaderName::from_static("fastly-key");
const SOFT_PURGE: HeaderName = HeaderName::from_static("fastly-soft-purge");

/// Purges a Fastly service through its API, with `Fastly-Key: <API token>`:
///
/// * paths: `POST /purge/<host><path>` (Fastly's purge of one URL; the host comes from
///   [`site`](FastlyPurgerBuilder::site)), 8 at a time;
/// * tags: `POST /service/<service_id>/purge` with `{"surrogate_keys": [...]}`, up to 256
///   keys per request (Fastly's limit), each encoded with [`encode_surrogate_key`], as the
///   HTTP layer writes them in `Surrogate-Key` response headers;
/// * everything (after the queue folded): `POST /service/<service_id>/purge_all`.
///
/// [`soft`](FastlyPurgerBuilder::soft) adds `Fastly-Soft-Purge: 1` (objects are marked stale
/// rather than removed; purge-all is always hard). 401/403 are refused credentials, 429 waits
/// for `Retry-After`, 5xx are retried; the API's `msg`/`detail` are in the error.
///
/// ```
/// use cache_runtime::edge::FastlyPurger;
/// # fn main() -> Result<(), cache_runtime::edge::EdgeError> {
/// let fastly = FastlyPurger::builder("SU1Z0isxPaozGVKXdv0eY", "API_TOKEN")
///     .site("www.example.com")
///     .soft(true)
///     .build()?;
/// assert!(!format!("{fastly:?}").contains("API_TOKEN"));
/// # Ok(()) }
/// ```
pub struct FastlyPurger {
    api: String,
    service: String,
    host: Option<String>,
    key: HeaderValue,
    soft: bool,
    max_keys: usize,
    concurrency: usize,
    timeout: Duration,
    name: String,
    client: HttpClient,
}

impl fmt::Debug for FastlyPurger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastlyPurger")
            .field("name", &self.name)
            .field("service", &self.service)
            .field("host", &self.host)
            .field("soft", &self.soft)
            .finish_non_exhaustive()
    }
}

/// Configures a [`FastlyPurger`].
///
/// ```
/// let p = cache_runtime::edge::FastlyPurger::builder("SERVICE_ID", "API_TOKEN")
///     .site("https://www.example.com") // the scheme is dropped: Fastly purges host + path
///     .max_keys(128)
///     .build()
///     .unwrap();
/// # let _ = p;
/// ```
#[derive(Clone)]
pub struct FastlyPurgerBuilder {
    service: String,
    token: String,
    host: Option<String>,
    api: String,
    soft: bool,
    max_keys: usize,
    concurrency: usize,
    timeout: Duration,
    name: Option<String>,
}

impl fmt::Debug for FastlyPurgerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastlyPurgerBuilder")
            .field("service", &self.service)
            .field("host", &self.host)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl FastlyPurger {
    /// A builder for the service `service_id` with an API token that may purge it
    /// (`purge_select`, and `purge_all` for folded purges).
    ///
    /// ```
    /// let _b = cache_runtime::edge::FastlyPurger::builder("SERVICE_ID", "API_TOKEN");
    /// ```
    pub fn builder(
        service_id: impl Into<String>,
        api_token: impl Into<String>,
    ) -> FastlyPurgerBuilder {
        FastlyPurgerBuilder {
            service: service_id.into(),
            token: api_token.into(),
            host: None,
            api: API.into(),
            soft: false,
            max_keys: DEFAULT_MAX_KEYS,
            concurrency: DEFAULT_CONCURRENCY,
            timeout: DEFAULT_TIMEOUT,
            name: None,
        }
    }

    async fn call(&self, path: &str, body: Option<Value>, soft: bool) -> Result<(), PurgeError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.api))
            .header(FASTLY_KEY, self.key.clone())
            .header(ACCEPT, "application/json");
        if soft {
            req = req.header(SOFT_PURGE, "1");
        }
        let body = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::default(),
        };
        let req = req
            .body(body)
            .map_err(|e| PurgeError::permanent(e.to_string()))?;
        let answer = send(&self.client, req, self.timeout).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        // Fastly's errors: {"msg": "...", "detail": "..."}.
        let detail = serde_json::from_str::<Value>(&answer.body)
            .ok()
            .map(|v| {
                let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                [field("msg"), field("detail")]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(": ")
            })
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| snippet(&answer.body));
        Err(status_error("fastly", &answer, &detail))
    }

    async fn purge_paths(&self, paths: &[String]) -> (Vec<String>, Option<PurgeError>, bool) {
        let Some(host) = &self.host else {
            let e = PurgeError::permanent("fastly: no site set: cannot purge paths");
            return (paths.to_vec(), Some(e), false);
        };
        let results: Vec<(usize, Result<(), PurgeError>)> = stream::iter(0..paths.len())
            .map(|i| async move {
                let target = format!("/purge/{host}{}", encode_path(&absolute(&paths[i])));
                (i, self.call(&target, None, self.soft).await)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let (mut failed, mut first, mut retryable) = (Vec::new(), None, false);
        for (i, r) in results {
            if let Err(e) = r {
                retryable |= e.is_retryable();
                first.get_or_insert_with(|| e.prefixed(&paths[i]));
                failed.push(paths[i].clone());
            }
        }
        (failed, first, retryable)
    }

    async fn purge_keys(&self, tags: &[String]) -> (Vec<String>, Option<PurgeError>, bool) {
        let (mut failed, mut first, mut retryable) = (Vec::new(), None::<PurgeError>, false);
        let target = format!("/service/{}/purge", self.service);
        for chunk in tags.chunks(self.max_keys) {
            let stop = first
                .as_ref()
                .is_some_and(|e| e.retry_after().is_some() || e.is_unauthorized());
            if !stop {
                let keys: Vec<_> = chunk.iter().map(|t| encode_surrogate_key(t)).collect();
                let body = json!({ "surrogate_keys": keys });
                match self.call(&target, Some(body), self.soft).await {
                    Ok(()) => continue,
                    Err(e) => {
                        retryable |= e.is_retryable();
                        first.get_or_insert(e);
                    }
                }
            }
            failed.extend(chunk.iter().cloned());
        }
        (failed, first, retryable)
    }
}

impl Purger for FastlyPurger {
    fn purge<'a>(&'a self, batch: &'a PurgeBatch) -> BoxFuture<'a, Result<(), PurgeError>> {
        Box::pin(async move {
            if batch.is_everything() {
                let target = format!("/service/{}/purge_all", self.service);
                return self.call(&target, None, false).await;
            }
            let (failed_paths, first, r1) = if batch.paths().is_empty() {
                (Vec::new(), None, false)
            } else {
                self.purge_paths(batch.paths()).await
            };
            let (failed_tags, first_tags, r2) = self.purge_keys(batch.tags()).await;
            match first.or(first_tags) {
                None => Ok(()),
                Some(e) => Err(partial_failure(
                    "fastly purge(s)",
                    batch.len(),
                    PurgeBatch::from_distinct(failed_paths, failed_tags, false),
                    e,
                    r1 || r2,
                )),
            }
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl FastlyPurgerBuilder {
    /// The host the pages are served under (`www.example.com`; a scheme is dropped), needed
    /// to purge paths: Fastly purges `host + path`.
    ///
    /// ```
    /// let _ = cache_runtime::edge::FastlyPurger::builder("S", "T").site("www.example.com");
    /// ```
    pub fn site(mut self, host: impl Into<String>) -> Self {
        let host: String = host.into();
        let host = host.split_once("://").map_or(host.as_str(), |(_, h)| h);
        self.host = Some(host.trim_end_matches('/').to_string());
        self
    }

    /// Soft purges (`Fastly-Soft-Purge: 1`): objects are marked stale, so Fastly may serve
    /// them while revalidating (per `stale-while-revalidate`) instead of every request
    /// reaching the origin at once. Default off. Purge-all is always hard.
    ///
    /// ```
    /// let _ = cache_runtime::edge::FastlyPurger::builder("S", "T").soft(true);
    /// ```
    pub fn soft(mut self, soft: bool) -> Self {
        self.soft = soft;
        self
    }

    /// The API root (default `https://api.fastly.com`); tests point it at a contract server.
    ///
    /// ```
    /// let _ = cache_runtime::edge::FastlyPurger::builder("S", "T").api_base("http://127.0.0.1:9");
    /// ```
    pub fn api_base(mut self, url: impl Into<String>) -> Self {
        self.api = url.into().trim_end_matches('/').to_string();
        self
    }

    /// Keys per bulk purge request (default and maximum 256).
    ///
    /// ```
    /// let _ = cache_runtime::edge::FastlyPurger::builder("S", "T").max_keys(100);
    /// ```
    pub fn max_keys(mut self, keys: usize) -> Self {
        self.max_keys = keys.clamp(1, DEFAULT_MAX_KEYS);
        self
    }

    /// URL purge requests in flight at once (default 8).
    ///
    /// ```
    /// let _ = cache_runtime::edge::FastlyPurger::builder("S", "T").concurrency(16);
    /// ```
    pub fn concurrency(mut self, requests: usize) -> Self {
        self.concurrency = requests.max(1);
        self
    }

    /// Deadline of one request (default 5 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// let _ = cache_runtime::edge::FastlyPurger::builder("S", "T").timeout(Duration::from_secs(2));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The name in logs and metrics (default `fastly <service id>`).
    ///
    /// ```
    /// use cache_runtime::edge::{FastlyPurger, Purger};
    /// assert_eq!(FastlyPurger::builder("S", "T").name("f").build().unwrap().name(), "f");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Checks the settings and builds the purger.
    ///
    /// ```
    /// assert!(cache_runtime::edge::FastlyPurger::builder("S", "").build().is_err()); // no token
    /// ```
    pub fn build(self) -> Result<FastlyPurger, EdgeError> {
        if self.service.trim().is_empty() || self.token.trim().is_empty() {
            return Err(EdgeError::Config(
                "fastly: a service id and an API token are needed".into(),
            ));
        }
        check_url(&self.api)?;
        Ok(FastlyPurger {
            key: secret_header("Fastly-Key", &self.token)?,
            name: self
                .name
                .unwrap_or_else(|| format!("fastly {}", self.service)),
            api: self.api,
            service: self.service,
            host: self.host,
            soft: self.soft,
            max_keys: self.max_keys,
            concurrency: self.concurrency,
            timeout: self.timeout,
            client: client(self.timeout),
        })
    }
}
