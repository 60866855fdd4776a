//! The built-in HTTP purgers (cargo feature `edge`): `PURGE <path>` per path, and surrogate
//! keys purged in bulk through one request header. HTTP/1.1 over hyper's pooled client, with
//! rustls (ring) and the system's root certificates for `https://` endpoints.

use std::fmt;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, HOST};
use hyper::{Method, Request, StatusCode, Uri};

use super::client::{
    check_url, client, header_value, headers, partial_failure, redact, send, snippet, status_error,
    HttpClient,
};
use super::{
    encode_path, encode_surrogate_key, BoxFuture, EdgeError, PurgeBatch, PurgeError, Purger,
};

const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_CONCURRENCY: usize = 8;
const DEFAULT_MAX_KEYS: usize = 256;
/// Keeps one request's key header under the 8 KiB Varnish accepts by default.
const MAX_KEY_HEADER_BYTES: usize = 4096;

/// Sends one `PURGE <path>` request per path to an edge cache (Varnish with the shipped VCL,
/// Fastly's purge-by-URL, nginx/Squid setups that accept `PURGE`). Ignores tags.
///
/// A path is appended to the base URL (after [`encode_path`]; a missing leading `/` is added),
/// and requests go out concurrently (8 at a time by default). A batch of
/// [everything](PurgeBatch::everything) (a folded queue) is one `BAN /`
/// ([`everything_method`](HttpPurgerBuilder::everything_method)), which the shipped VCL turns
/// into a ban of the whole `Host`. 2xx means purged; 404 too (some edges answer it when
/// nothing was cached at that URL). 408, 429 (after its `Retry-After`), 5xx, connection
/// errors and timeouts are transient (retried by the edge worker); 401/403 are refused
/// credentials; other statuses are permanent.
///
/// ```
/// use cache_runtime::edge::HttpPurger;
/// use std::time::Duration;
/// # fn main() -> Result<(), cache_runtime::edge::EdgeError> {
/// let varnish = HttpPurger::new("http://127.0.0.1:6081")?;
/// let site = HttpPurger::builder("http://10.0.0.7:6081")
///     .host("www.example.com") // the Host the pages are cached under
///     .timeout(Duration::from_secs(1))
///     .concurrency(16)
///     .build()?;
/// # let _ = (varnish, site);
/// # Ok(()) }
/// ```
pub struct HttpPurger {
    base: String,
    method: Method,
    everything_method: Method,
    host: Option<HeaderValue>,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    concurrency: usize,
    name: String,
    client: HttpClient,
}

impl fmt::Debug for HttpPurger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpPurger")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// Configures an [`HttpPurger`].
///
/// ```
/// let p = cache_runtime::edge::HttpPurger::builder("http://127.0.0.1:6081")
///     .method("BAN")
///     .header("x-purge-token", "secret")
///     .build()
///     .unwrap();
/// # let _ = p;
/// ```
#[derive(Debug, Clone)]
pub struct HttpPurgerBuilder {
    base: String,
    method: String,
    everything_method: String,
    host: Option<String>,
    headers: Vec<(String, String)>,
    timeout: Duration,
    concurrency: usize,
    name: Option<String>,
}

impl HttpPurger {
    /// A purger sending `PURGE <path>` to `base_url` (`http://` or `https://`, optionally
    /// with a path prefix), with the defaults.
    ///
    /// ```
    /// assert!(cache_runtime::edge::HttpPurger::new("http://127.0.0.1:6081").is_ok());
    /// assert!(cache_runtime::edge::HttpPurger::new("127.0.0.1:6081").is_err()); // no scheme
    /// ```
    pub fn new(base_url: impl Into<String>) -> Result<Self, EdgeError> {
        Self::builder(base_url).build()
    }

    /// A builder: method `PURGE`, the base URL's own `Host`, no extra header, 2 s per request,
    /// 8 requests at a time.
    ///
    /// ```
    /// let _b = cache_runtime::edge::HttpPurger::builder("https://edge.example.com");
    /// ```
    pub fn builder(base_url: impl Into<String>) -> HttpPurgerBuilder {
        HttpPurgerBuilder {
            base: base_url.into(),
            method: "PURGE".into(),
            everything_method: "BAN".into(),
            host: None,
            headers: Vec::new(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            name: None,
        }
    }

    async fn purge_one(&self, path: &str) -> Result<(), PurgeError> {
        self.request(&self.method, path).await
    }

    async fn request(&self, method: &Method, path: &str) -> Result<(), PurgeError> {
        let encoded = encode_path(path);
        let slash = if encoded.starts_with('/') { "" } else { "/" };
        let url = format!("{}{slash}{encoded}", self.base);
        let uri: Uri = url
            .parse()
            .map_err(|e| PurgeError::permanent(format!("{url}: {e}")))?;
        let mut req = Request::builder().method(method.clone()).uri(uri);
        if let Some(h) = &self.host {
            req = req.header(HOST, h.clone());
        }
        for (k, v) in &self.headers {
            req = req.header(k.clone(), v.clone());
        }
        let req = req
            .body(Full::default())
            .map_err(|e| PurgeError::permanent(format!("{url}: {e}")))?;
        let answer = send(&self.client, req, self.timeout).await?;
        if answer.status.is_success() || answer.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(status_error("edge", &answer, &snippet(&answer.body)))
        }
    }
}

impl HttpPurgerBuilder {
    /// The request method (default `PURGE`).
    ///
    /// ```
    /// let _ = cache_runtime::edge::HttpPurger::builder("http://127.0.0.1:6081").method("BAN");
    /// ```
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    /// The method of the request that purges everything (default `BAN`, on `/`), sent when
    /// the queue [folded](crate::edge::EdgeStats::folded) its purges. The shipped VCL bans
    /// every object of the request's `Host`.
    ///
    /// ```
    /// let _ = cache_runtime::edge::HttpPurger::builder("http://127.0.0.1:6081").everything_method("BAN");
    /// ```
    pub fn everything_method(mut self, method: impl Into<String>) -> Self {
        self.everything_method = method.into();
        self
    }

    /// The `Host` header, when the pages are cached under another name than the edge's
    /// address (e.g. `www.example.com`).
    ///
    /// ```
    /// let _ = cache_runtime::edge::HttpPurger::builder("http://10.0.0.7:6081").host("example.com");
    /// ```
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// An extra header on every request (e.g. an API token).
    ///
    /// ```
    /// let _ = cache_runtime::edge::HttpPurger::builder("https://api.fastly.com/purge/www.example.com")
    ///     .method("POST")
    ///     .header("Fastly-Key", "token");
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Deadline of one request, connecting included (default 2 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// let _ = cache_runtime::edge::HttpPurger::builder("http://127.0.0.1:6081")
    ///     .timeout(Duration::from_millis(500));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many requests may be in flight at once (default 8).
    ///
    /// ```
    /// let _ = cache_runtime::edge::HttpPurger::builder("http://127.0.0.1:6081").concurrency(32);
    /// ```
    pub fn concurrency(mut self, requests: usize) -> Self {
        self.concurrency = requests.max(1);
        self
    }

    /// The name in logs and metrics (default `http-purge <base url>`).
    ///
    /// ```
    /// let p = cache_runtime::edge::HttpPurger::builder("http://127.0.0.1:6081")
    ///     .name("varnish-1")
    ///     .build()
    ///     .unwrap();
    /// use cache_runtime::edge::Purger;
    /// assert_eq!(p.name(), "varnish-1");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Checks the URL and headers and builds the purger.
    ///
    /// ```
    /// use cache_runtime::edge::{EdgeError, HttpPurger};
    /// let bad = HttpPurger::builder("http://127.0.0.1:6081").header("bad name", "v").build();
    /// assert!(matches!(bad, Err(EdgeError::InvalidHeader(_))));
    /// ```
    pub fn build(self) -> Result<HttpPurger, EdgeError> {
        let base = check_url(&self.base)?.trim_end_matches('/').to_string();
        let method = Method::from_bytes(self.method.as_bytes())
            .map_err(|_| EdgeError::InvalidHeader(format!("method {:?}", self.method)))?;
        let everything_method =
            Method::from_bytes(self.everything_method.as_bytes()).map_err(|_| {
                EdgeError::InvalidHeader(format!("method {:?}", self.everything_method))
            })?;
        Ok(HttpPurger {
            everything_method,
            name: self
                .name
                .unwrap_or_else(|| format!("http-purge {}", redact(&base))),
            base,
            method,
            host: self.host.as_deref().map(header_value).transpose()?,
            headers: headers(&self.headers)?,
            timeout: self.timeout,
            concurrency: self.concurrency,
            client: client(self.timeout),
        })
    }
}

impl Purger for HttpPurger {
    fn purge<'a>(&'a self, batch: &'a PurgeBatch) -> BoxFuture<'a, Result<(), PurgeError>> {
        Box::pin(async move {
            if batch.is_everything() {
                // Covers the batch's paths too.
                return self.request(&self.everything_method, "/").await;
            }
            // By index: a closure over `&String` trips the compiler's higher-ranked lifetime
            // check inside this `Send` future.
            let paths = batch.paths();
            let results: Vec<(&String, Result<(), PurgeError>)> = stream::iter(0..paths.len())
                .map(|i| async move { (&paths[i], self.purge_one(&paths[i]).await) })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
            let mut failed = PurgeBatch::new();
            let mut retryable = false;
            let mut first: Option<PurgeError> = None;
            for (path, r) in results {
                if let Err(e) = r {
                    retryable |= e.is_retryable();
                    first.get_or_insert_with(|| e.prefixed(path));
                    failed.add_path(path.clone());
                }
            }
            match first {
                None => Ok(()),
                Some(first) => Err(partial_failure(
                    "path purge(s)",
                    paths.len(),
                    failed,
                    first,
                    retryable,
                )),
            }
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Purges surrogate keys (the attribute's `tags`) in bulk: one request carries many keys in
/// one header, separated by spaces, each encoded with [`encode_surrogate_key`]. Ignores
/// paths.
///
/// [`xkey`](Self::xkey) is set up for Varnish with vmod-xkey and the shipped VCL:
/// `PURGE /` with `xkey-purge: k1 k2 ...`. For a CDN's API, set the URL, method, key header
/// and credentials, e.g. Fastly's purge by surrogate keys:
///
/// ```
/// use cache_runtime::edge::SurrogateKeyPurger;
/// # fn main() -> Result<(), cache_runtime::edge::EdgeError> {
/// let varnish = SurrogateKeyPurger::xkey("http://127.0.0.1:6081").build()?;
/// let fastly = SurrogateKeyPurger::builder("https://api.fastly.com/service/SERVICE_ID/purge")
///     .method("POST")
///     .key_header("Surrogate-Key")
///     .header("Fastly-Key", "API_TOKEN")
///     .max_keys(256)
///     .build()?;
/// # let _ = (varnish, fastly);
/// # Ok(()) }
/// ```
///
/// Keys are split over several requests when there are more than `max_keys` of them or their
/// header would exceed 4 KiB. 2xx means purged; 408, 429, 5xx, connection errors and timeouts
/// are transient, other statuses permanent.
pub struct SurrogateKeyPurger {
    url: Uri,
    method: Method,
    key_header: HeaderName,
    host: Option<HeaderValue>,
    headers: Vec<(HeaderName, HeaderValue)>,
    max_keys: usize,
    timeout: Duration,
    name: String,
    client: HttpClient,
}

impl fmt::Debug for SurrogateKeyPurger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SurrogateKeyPurger")
            .field("name", &self.name)
            .field("method", &self.method)
            .field("key_header", &self.key_header)
            .finish_non_exhaustive()
    }
}

/// Configures a [`SurrogateKeyPurger`].
///
/// ```
/// let p = cache_runtime::edge::SurrogateKeyPurger::builder("http://127.0.0.1:6081/")
///     .key_header("xkey-softpurge") // the shipped VCL's soft purge
///     .build()
///     .unwrap();
/// # let _ = p;
/// ```
#[derive(Debug, Clone)]
pub struct SurrogateKeyPurgerBuilder {
    url: String,
    method: String,
    key_header: String,
    host: Option<String>,
    headers: Vec<(String, String)>,
    max_keys: usize,
    timeout: Duration,
    name: Option<String>,
}

impl SurrogateKeyPurger {
    /// For Varnish with vmod-xkey and the shipped VCL: `PURGE` on `base_url` + `/` with the
    /// keys in an `xkey-purge` header.
    ///
    /// ```
    /// let p = cache_runtime::edge::SurrogateKeyPurger::xkey("http://127.0.0.1:6081").build();
    /// assert!(p.is_ok());
    /// ```
    pub fn xkey(base_url: impl Into<String>) -> SurrogateKeyPurgerBuilder {
        let base: String = base_url.into();
        let url = if base.ends_with('/') {
            base
        } else {
            format!("{base}/")
        };
        Self::builder(url)
            .method("PURGE")
            .key_header("xkey-purge")
            .name_default("xkey")
    }

    /// A builder for a request to exactly `url`: method `PURGE`, header `Surrogate-Key`, up to
    /// 256 keys per request, 2 s per request.
    ///
    /// ```
    /// let _b = cache_runtime::edge::SurrogateKeyPurger::builder("https://edge.example.com/purge");
    /// ```
    pub fn builder(url: impl Into<String>) -> SurrogateKeyPurgerBuilder {
        SurrogateKeyPurgerBuilder {
            url: url.into(),
            method: "PURGE".into(),
            key_header: "Surrogate-Key".into(),
            host: None,
            headers: Vec::new(),
            max_keys: DEFAULT_MAX_KEYS,
            timeout: DEFAULT_REQUEST_TIMEOUT,
            name: None,
        }
    }

    async fn purge_keys(&self, keys: &str) -> Result<(), PurgeError> {
        let value = HeaderValue::from_str(keys)
            .map_err(|e| PurgeError::permanent(format!("keys {keys:?}: {e}")))?;
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(self.url.clone())
            .header(self.key_header.clone(), value);
        if let Some(h) = &self.host {
            req = req.header(HOST, h.clone());
        }
        for (k, v) in &self.headers {
            req = req.header(k.clone(), v.clone());
        }
        let req = req
            .body(Full::default())
            .map_err(|e| PurgeError::permanent(e.to_string()))?;
        let answer = send(&self.client, req, self.timeout).await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(status_error("edge", &answer, &snippet(&answer.body)))
        }
    }
}

impl SurrogateKeyPurgerBuilder {
    fn name_default(mut self, kind: &str) -> Self {
        if self.name.is_none() {
            self.name = Some(format!("{kind} {}", redact(&self.url)));
        }
        self
    }

    /// The request method (default `PURGE`; Fastly's API wants `POST`).
    ///
    /// ```
    /// let _ = cache_runtime::edge::SurrogateKeyPurger::builder("https://x.example/purge").method("POST");
    /// ```
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    /// The request header carrying the keys (default `Surrogate-Key`; `xkey-purge` for
    /// [`SurrogateKeyPurger::xkey`]).
    ///
    /// ```
    /// let _ = cache_runtime::edge::SurrogateKeyPurger::builder("http://127.0.0.1:6081/")
    ///     .key_header("xkey-softpurge");
    /// ```
    pub fn key_header(mut self, name: impl Into<String>) -> Self {
        self.key_header = name.into();
        self
    }

    /// The `Host` header, when it must differ from the URL's.
    ///
    /// ```
    /// let _ = cache_runtime::edge::SurrogateKeyPurger::xkey("http://10.0.0.7:6081").host("example.com");
    /// ```
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// An extra header on every request (e.g. `Fastly-Key`).
    ///
    /// ```
    /// let _ = cache_runtime::edge::SurrogateKeyPurger::builder("https://x.example/purge")
    ///     .header("Authorization", "Bearer token");
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The most keys in one request (default 256, Fastly's limit).
    ///
    /// ```
    /// let _ = cache_runtime::edge::SurrogateKeyPurger::xkey("http://127.0.0.1:6081").max_keys(64);
    /// ```
    pub fn max_keys(mut self, keys: usize) -> Self {
        self.max_keys = keys.max(1);
        self
    }

    /// Deadline of one request, connecting included (default 2 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// let _ = cache_runtime::edge::SurrogateKeyPurger::xkey("http://127.0.0.1:6081")
    ///     .timeout(Duration::from_secs(1));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The name in logs and metrics (default `xkey <url>` or `surrogate-key <url>`).
    ///
    /// ```
    /// use cache_runtime::edge::{Purger, SurrogateKeyPurger};
    /// let p = SurrogateKeyPurger::xkey("http://127.0.0.1:6081").name("varnish-1 tags").build().unwrap();
    /// assert_eq!(p.name(), "varnish-1 tags");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Checks the URL and headers and builds the purger.
    ///
    /// ```
    /// let p = cache_runtime::edge::SurrogateKeyPurger::builder("not a url").build();
    /// assert!(p.is_err());
    /// ```
    pub fn build(self) -> Result<SurrogateKeyPurger, EdgeError> {
        let url: Uri = check_url(&self.url)?
            .parse()
            .map_err(|e| EdgeError::InvalidUrl(format!("{}: {e}", redact(&self.url))))?;
        Ok(SurrogateKeyPurger {
            method: Method::from_bytes(self.method.as_bytes())
                .map_err(|_| EdgeError::InvalidHeader(format!("method {:?}", self.method)))?,
            key_header: HeaderName::from_bytes(self.key_header.as_bytes())
                .map_err(|_| EdgeError::InvalidHeader(format!("name {:?}", self.key_header)))?,
            host: self.host.as_deref().map(header_value).transpose()?,
            headers: headers(&self.headers)?,
            max_keys: self.max_keys,
            timeout: self.timeout,
            name: self
                .name
                .unwrap_or_else(|| format!("surrogate-key {}", redact(&self.url))),
            client: client(self.timeout),
            url,
        })
    }
}

impl Purger for SurrogateKeyPurger {
    /// Purges the batch's tags; a batch of [everything](PurgeBatch::everything) is left to
    /// the path purger of the same edge (an `HttpPurger` bans everything).
    fn purge<'a>(&'a self, batch: &'a PurgeBatch) -> BoxFuture<'a, Result<(), PurgeError>> {
        Box::pin(async move {
            let mut failed = PurgeBatch::new();
            let mut retryable = false;
            let mut first: Option<PurgeError> = None;
            for chunk in key_chunks(batch.tags(), self.max_keys, MAX_KEY_HEADER_BYTES) {
                let header = chunk
                    .iter()
                    .map(|t| encode_surrogate_key(t))
                    .collect::<Vec<_>>()
                    .join(" ");
                if let Err(e) = self.purge_keys(&header).await {
                    retryable |= e.is_retryable();
                    for t in chunk {
                        failed.add_tag(t.clone());
                    }
                    first.get_or_insert(e);
                }
            }
            match first {
                None => Ok(()),
                Some(e) => Err(partial_failure(
                    "key purge(s)",
                    batch.tags().len(),
                    failed,
                    e,
                    retryable,
                )),
            }
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Splits keys (skipping empty ones) into groups of at most `max_keys` whose encoded,
/// space-joined form stays within `max_bytes` (a single longer key gets a group of its own).
fn key_chunks(keys: &[String], max_keys: usize, max_bytes: usize) -> Vec<Vec<&String>> {
    let mut chunks: Vec<Vec<&String>> = Vec::new();
    let mut current: Vec<&String> = Vec::new();
    let mut bytes = 0;
    for key in keys.iter().filter(|k| !k.is_empty()) {
        let len = encode_surrogate_key(key).len();
        let sep = usize::from(!current.is_empty());
        if !current.is_empty() && (current.len() >= max_keys || bytes + sep + len > max_bytes) {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += usize::from(!current.is_empty()) + len;
        current.push(key);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_chunked_by_count_and_size() {
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let chunks = key_chunks(&keys, 4, 1000);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        // "k0 k1" is 5 bytes: a third key does not fit in 7.
        let chunks = key_chunks(&keys[..3], 10, 7);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
        let big = vec!["x".repeat(50), "".to_string(), "y".into()];
        let chunks = key_chunks(&big, 10, 10);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
    }
}
