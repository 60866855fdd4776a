//! [`CloudflarePurger`]: purge by URL, by cache tag and everything through a zone's
//! `purge_cache` endpoint, with an API token.

use std::fmt;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request};
use serde_json::{json, Value};

use super::client::{
    check_url, client, partial_failure, secret_header, send, snippet, status_error, HttpClient,
};
use super::{
    encode_path, encode_surrogate_key, BoxFuture, EdgeError, PurgeBatch, PurgeError, Purger,
};

/// Cloudflare's API root.
const API: &str = "https://api.cloudflare.com/client/v4";
/// URLs or tags per purge request on every plan but Enterprise (which allows 500 URLs).
const DEFAULT_MAX_PER_REQUEST: usize = 100;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Purges a Cloudflare zone: `POST /zones/{zone_id}/purge_cache` with
/// `Authorization: Bearer <API token>` and a JSON body of `{"files": [...]}` (full URLs: the
/// [`site`](CloudflarePurgerBuilder::site) plus the path), `{"tags": [...]}` (cache tags,
/// encoded with [`encode_surrogate_key`]; have the HTTP layer send them in a `Cache-Tag`
/// response header) or `{"purge_everything": true}` (after the queue folded).
///
/// Lists are split at 100 per request (every plan's limit for tags and, except Enterprise,
/// for URLs: [`max_per_request`](CloudflarePurgerBuilder::max_per_request)). A 429 waits for
/// its `Retry-After` and resends only the items not purged; 401/403 are reported as refused
/// credentials ([`Edge::health`](crate::edge::Edge::health)) and not retried; the error
/// envelope's `errors[].code` and `message` are in the error. The token needs the zone's
/// "Cache Purge" permission. See `docs/EDGE.md` for the limits and their sources.
///
/// ```
/// use cache_runtime::edge::CloudflarePurger;
/// # fn main() -> Result<(), cache_runtime::edge::EdgeError> {
/// let cf = CloudflarePurger::builder("023e105f4ecef8ad9ca31a8372d0c353", "API_TOKEN")
///     .site("https://www.example.com")
///     .build()?;
/// assert!(format!("{cf:?}").contains("023e105f") && !format!("{cf:?}").contains("API_TOKEN"));
/// # Ok(()) }
/// ```
pub struct CloudflarePurger {
    url: String,
    zone: String,
    site: Option<String>,
    token: hyper::header::HeaderValue,
    max_per_request: usize,
    timeout: Duration,
    name: String,
    client: HttpClient,
}

impl fmt::Debug for CloudflarePurger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudflarePurger")
            .field("name", &self.name)
            .field("zone", &self.zone)
            .field("site", &self.site)
            .finish_non_exhaustive()
    }
}

/// Configures a [`CloudflarePurger`].
///
/// ```
/// use std::time::Duration;
/// let p = cache_runtime::edge::CloudflarePurger::builder("ZONE_ID", "API_TOKEN")
///     .site("https://www.example.com")
///     .max_per_request(500) // Enterprise
///     .timeout(Duration::from_secs(3))
///     .build()
///     .unwrap();
/// # let _ = p;
/// ```
#[derive(Clone)]
pub struct CloudflarePurgerBuilder {
    zone: String,
    token: String,
    site: Option<String>,
    api: String,
    max_per_request: usize,
    timeout: Duration,
    name: Option<String>,
}

impl fmt::Debug for CloudflarePurgerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudflarePurgerBuilder")
            .field("zone", &self.zone)
            .field("site", &self.site)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl CloudflarePurger {
    /// A builder for the zone `zone_id` with an API token allowed to purge it.
    ///
    /// ```
    /// let _b = cache_runtime::edge::CloudflarePurger::builder("ZONE_ID", "API_TOKEN");
    /// ```
    pub fn builder(
        zone_id: impl Into<String>,
        api_token: impl Into<String>,
    ) -> CloudflarePurgerBuilder {
        CloudflarePurgerBuilder {
            zone: zone_id.into(),
            token: api_token.into(),
            site: None,
            api: API.into(),
            max_per_request: DEFAULT_MAX_PER_REQUEST,
            timeout: DEFAULT_TIMEOUT,
            name: None,
        }
    }

    /// One `purge_cache` call with `body`.
    async fn call(&self, body: &Value) -> Result<(), PurgeError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(&self.url)
            .header(AUTHORIZATION, self.token.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| PurgeError::permanent(e.to_string()))?;
        let answer = send(&self.client, req, self.timeout).await?;
        let envelope: Option<Value> = serde_json::from_str(&answer.body).ok();
        let success = envelope
            .as_ref()
            .and_then(|v| v.get("success"))
            .and_then(Value::as_bool);
        if answer.status.is_success() && success != Some(false) {
            return Ok(());
        }
        let detail = envelope
            .as_ref()
            .map(errors)
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| snippet(&answer.body));
        let mut e = status_error("cloudflare", &answer, &detail);
        if answer.status.is_success() {
            // 200 with `"success": false`: the API refused the request itself.
            e = PurgeError::permanent(e.message());
        }
        Err(e)
    }

    /// Sends `items` in requests of at most `max_per_request` under `key`; returns the items
    /// not purged with the first error. Stops at a rate limit or refused credentials (the
    /// following requests would meet the same answer).
    async fn purge_list(&self, key: &str, items: &[String], values: Vec<String>) -> Failed {
        let mut failed = Vec::new();
        let mut first: Option<PurgeError> = None;
        let mut retryable = false;
        for (chunk, raw) in values
            .chunks(self.max_per_request)
            .zip(items.chunks(self.max_per_request))
        {
            let stop = first
                .as_ref()
                .is_some_and(|e| e.retry_after().is_some() || e.is_unauthorized());
            if !stop {
                match self.call(&json!({ key: chunk })).await {
                    Ok(()) => continue,
                    Err(e) => {
                        retryable |= e.is_retryable();
                        first.get_or_insert(e);
                    }
                }
            }
            failed.extend(raw.iter().cloned());
        }
        (failed, first, retryable)
    }
}

/// Items not purged, the first error, whether a retry may help.
type Failed = (Vec<String>, Option<PurgeError>, bool);

/// `errors[]` of Cloudflare's envelope as `code: message; ...`.
fn errors(envelope: &Value) -> String {
    envelope
        .get("errors")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|e| {
                    let code = e.get("code").map(Value::to_string).unwrap_or_default();
                    let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
                    format!("{code}: {msg}")
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

impl Purger for CloudflarePurger {
    fn purge<'a>(&'a self, batch: &'a PurgeBatch) -> BoxFuture<'a, Result<(), PurgeError>> {
        Box::pin(async move {
            if batch.is_everything() {
                return self.call(&json!({ "purge_everything": true })).await;
            }
            let (mut failed_paths, mut first, mut retryable) = (Vec::new(), None, false);
            if !batch.paths().is_empty() {
                let Some(site) = &self.site else {
                    return Err(PurgeError::permanent(
                        "cloudflare: no site set: cannot turn paths into URLs",
                    )
                    .with_items(PurgeBatch::from_distinct(
                        batch.paths().to_vec(),
                        Vec::new(),
                        false,
                    )));
                };
                let urls = batch
                    .paths()
                    .iter()
                    .map(|p| format!("{site}{}", encode_path(&absolute(p))))
                    .collect();
                (failed_paths, first, retryable) =
                    self.purge_list("files", batch.paths(), urls).await;
            }
            let tags = batch
                .tags()
                .iter()
                .map(|t| encode_surrogate_key(t).into_owned())
                .collect();
            let (failed_tags, first_tags, retryable_tags) =
                self.purge_list("tags", batch.tags(), tags).await;
            let total = batch.len();
            let failed = PurgeBatch::from_distinct(failed_paths, failed_tags, false);
            match first.or(first_tags) {
                None => Ok(()),
                Some(e) => Err(partial_failure(
                    "cloudflare purge(s)",
                    total,
                    failed,
                    e,
                    retryable || retryable_tags,
                )),
            }
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// `p` with a leading `/`.
pub(super) fn absolute(p: &str) -> std::borrow::Cow<'_, str> {
    if p.starts_with('/') {
        p.into()
    } else {
        format!("/{p}").into()
    }
}

impl CloudflarePurgerBuilder {
    /// The site's origin as clients request it, e.g. `https://www.example.com`: Cloudflare
    /// purges full URLs, so paths are appended to it. Needed when paths are purged.
    ///
    /// ```
    /// let _ = cache_runtime::edge::CloudflarePurger::builder("Z", "T").site("https://example.com");
    /// ```
    pub fn site(mut self, origin: impl Into<String>) -> Self {
        self.site = Some(origin.into().trim_end_matches('/').to_string());
        self
    }

    /// The API root (default `https://api.cloudflare.com/client/v4`); tests point it at a
    /// contract server.
    ///
    /// ```
    /// let _ = cache_runtime::edge::CloudflarePurger::builder("Z", "T").api_base("http://127.0.0.1:9");
    /// ```
    pub fn api_base(mut self, url: impl Into<String>) -> Self {
        self.api = url.into().trim_end_matches('/').to_string();
        self
    }

    /// URLs or tags per request (default 100; Enterprise zones accept 500 URLs).
    ///
    /// ```
    /// let _ = cache_runtime::edge::CloudflarePurger::builder("Z", "T").max_per_request(30);
    /// ```
    pub fn max_per_request(mut self, items: usize) -> Self {
        self.max_per_request = items.max(1);
        self
    }

    /// Deadline of one request (default 5 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// let _ = cache_runtime::edge::CloudflarePurger::builder("Z", "T").timeout(Duration::from_secs(2));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The name in logs and metrics (default `cloudflare <zone id>`).
    ///
    /// ```
    /// use cache_runtime::edge::{CloudflarePurger, Purger};
    /// let p = CloudflarePurger::builder("Z", "T").name("cf").build().unwrap();
    /// assert_eq!(p.name(), "cf");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Checks the settings and builds the purger.
    ///
    /// ```
    /// use cache_runtime::edge::CloudflarePurger;
    /// assert!(CloudflarePurger::builder("", "T").build().is_err()); // no zone
    /// assert!(CloudflarePurger::builder("Z", "T").site("example.com").build().is_err()); // no scheme
    /// ```
    pub fn build(self) -> Result<CloudflarePurger, EdgeError> {
        if self.zone.trim().is_empty() || self.token.trim().is_empty() {
            return Err(EdgeError::Config(
                "cloudflare: a zone id and an API token are needed".into(),
            ));
        }
        if let Some(site) = &self.site {
            check_url(site)?;
        }
        check_url(&self.api)?;
        Ok(CloudflarePurger {
            url: format!("{}/zones/{}/purge_cache", self.api, self.zone),
            token: secret_header("Authorization", &format!("Bearer {}", self.token))?,
            name: self
                .name
                .unwrap_or_else(|| format!("cloudflare {}", self.zone)),
            zone: self.zone,
            site: self.site,
            max_per_request: self.max_per_request,
            timeout: self.timeout,
            client: client(self.timeout),
        })
    }
}
