//! [`CloudFrontPurger`]: `CreateInvalidation` on a distribution, signed with AWS Signature
//! Version 4 by `aws-sigv4`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request};

use super::client::{check_url, client, partial_failure, send, snippet, status_error, HttpClient};
use super::cloudflare::absolute;
use super::{encode_path, BoxFuture, EdgeError, PurgeBatch, PurgeError, Purger};

const API: &str = "https://cloudfront.amazonaws.com";
/// CloudFront's API is global, signed for this region.
const REGION: &str = "us-east-1";
const SERVICE: &str = "cloudfront";
/// Paths per invalidation, and invalidations of single files in progress per distribution.
const DEFAULT_MAX_PATHS: usize = 3000;
/// Wildcard paths in progress per distribution.
const MAX_WILDCARDS: usize = 15;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait after "too many invalidations in progress" or throttling: invalidations take
/// minutes, so a short backoff would only be refused again.
const IN_PROGRESS_WAIT: Duration = Duration::from_secs(30);

/// Maps a tag to the paths to invalidate (wildcards allowed).
type TagPaths = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// What a tag means on CloudFront, which has no tags.
#[derive(Clone)]
enum Tags {
    /// A tag fails (permanently, counted and logged): the default, so that
    /// `invalidate_tag` with CloudFront is never silently a no-op.
    Fail,
    /// Tags are skipped (e.g. CloudFront behind a Varnish that purges them).
    Ignore,
    /// Tags become the paths the function returns.
    Paths(TagPaths),
}

/// Invalidates paths of a CloudFront distribution: `POST /2020-05-31/distribution/<id>/
/// invalidation` with an `InvalidationBatch` (a unique `CallerReference`, the paths), signed
/// with AWS Signature V4 (service `cloudfront`, region `us-east-1`) by the `aws-sigv4` crate.
///
/// Paths are percent-encoded like any purge path and may end with `*`. One request carries at
/// most 3000 paths, of which at most 15 wildcards (the distribution's limits on invalidations
/// in progress); more are split. A batch of [everything](PurgeBatch::everything) invalidates
/// `/*`. `TooManyInvalidationsInProgress` and throttling wait 30 s (or the `Retry-After`)
/// without using up retries; `AccessDenied`, `SignatureDoesNotMatch` and other 403s are
/// refused credentials.
///
/// CloudFront has no tags: by default a tag fails permanently (counted and logged, so
/// `invalidate_tag` is never silently lost); [`tag_paths`](CloudFrontPurgerBuilder::tag_paths)
/// maps a tag to the paths its pages are served under, and
/// [`ignore_tags`](CloudFrontPurgerBuilder::ignore_tags) skips tags (when another purger
/// handles them).
///
/// ```
/// use cache_runtime::edge::CloudFrontPurger;
/// # fn main() -> Result<(), cache_runtime::edge::EdgeError> {
/// let cf = CloudFrontPurger::builder("EDFDVBD6EXAMPLE")
///     .credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None)
///     // `user:42` → every page under /users/42
///     .tag_paths(|tag| match tag.strip_prefix("user:") {
///         Some(id) => vec![format!("/users/{id}*")],
///         None => Vec::new(),
///     })
///     .build()?;
/// assert!(!format!("{cf:?}").contains("EXAMPLEKEY"));
/// # Ok(()) }
/// ```
pub struct CloudFrontPurger {
    url: String,
    distribution: String,
    credentials: Credentials,
    tags: Tags,
    max_paths: usize,
    in_progress_wait: Duration,
    timeout: Duration,
    name: String,
    client: HttpClient,
}

impl fmt::Debug for CloudFrontPurger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudFrontPurger")
            .field("name", &self.name)
            .field("distribution", &self.distribution)
            .finish_non_exhaustive()
    }
}

/// Configures a [`CloudFrontPurger`].
///
/// ```
/// let p = cache_runtime::edge::CloudFrontPurger::builder("EDFDVBD6EXAMPLE")
///     .credentials("AKID", "SECRET", Some("SESSION_TOKEN".to_string()))
///     .ignore_tags()
///     .build()
///     .unwrap();
/// # let _ = p;
/// ```
#[derive(Clone)]
pub struct CloudFrontPurgerBuilder {
    distribution: String,
    credentials: Option<Credentials>,
    tags: Tags,
    api: String,
    max_paths: usize,
    in_progress_wait: Duration,
    timeout: Duration,
    name: Option<String>,
}

impl fmt::Debug for CloudFrontPurgerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudFrontPurgerBuilder")
            .field("distribution", &self.distribution)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl CloudFrontPurger {
    /// A builder for the distribution `distribution_id`.
    ///
    /// ```
    /// let _b = cache_runtime::edge::CloudFrontPurger::builder("EDFDVBD6EXAMPLE");
    /// ```
    pub fn builder(distribution_id: impl Into<String>) -> CloudFrontPurgerBuilder {
        CloudFrontPurgerBuilder {
            distribution: distribution_id.into(),
            credentials: None,
            tags: Tags::Fail,
            api: API.into(),
            max_paths: DEFAULT_MAX_PATHS,
            in_progress_wait: IN_PROGRESS_WAIT,
            timeout: DEFAULT_TIMEOUT,
            name: None,
        }
    }

    /// One signed `CreateInvalidation` of `paths` (already encoded).
    async fn invalidate(&self, paths: &[String]) -> Result<(), PurgeError> {
        let body = invalidation_batch(&caller_reference(), paths);
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(&self.url)
            .header(CONTENT_TYPE, "text/xml")
            .body(Full::new(Bytes::from(body.clone())))
            .map_err(|e| PurgeError::permanent(e.to_string()))?;
        self.sign(&mut req, body.as_bytes())?;
        let answer = send(&self.client, req, self.timeout).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        let code = xml_field(&answer.body, "Code").unwrap_or_default();
        let message = xml_field(&answer.body, "Message").unwrap_or_default();
        let detail = if code.is_empty() {
            snippet(&answer.body)
        } else {
            format!("{code}: {message}")
        };
        Err(match code.as_str() {
            "TooManyInvalidationsInProgress" | "Throttling" | "ThrottlingException" => {
                PurgeError::rate_limited(
                    format!("cloudfront answered {}: {detail}", answer.status),
                    answer.retry_after.unwrap_or(self.in_progress_wait),
                )
            }
            _ => status_error("cloudfront", &answer, &detail),
        })
    }

    /// Adds the SigV4 headers (`Authorization`, `X-Amz-Date`, and `X-Amz-Security-Token`
    /// with temporary credentials) for this exact request.
    fn sign(&self, req: &mut Request<Full<Bytes>>, body: &[u8]) -> Result<(), PurgeError> {
        let failed = |e: &dyn fmt::Display| PurgeError::permanent(format!("sigv4: {e}"));
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(REGION)
            .name(SERVICE)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| failed(&e))?
            .into();
        let uri = req.uri().to_string();
        let headers = req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
        let signable = SignableRequest::new(
            req.method().as_str(),
            uri,
            headers,
            SignableBody::Bytes(body),
        )
        .map_err(|e| failed(&e))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| failed(&e))?
            .into_parts();
        instructions.apply_to_request_http1x(req);
        Ok(())
    }

    /// The paths to invalidate for a batch, encoded; tags that fail go to `refused`.
    fn paths_of(&self, batch: &PurgeBatch, refused: &mut Vec<String>) -> Vec<String> {
        if batch.is_everything() {
            return vec!["/*".into()];
        }
        let mut paths: Vec<String> = batch.paths().to_vec();
        for tag in batch.tags() {
            match &self.tags {
                Tags::Fail => refused.push(tag.clone()),
                Tags::Ignore => {}
                Tags::Paths(f) => paths.extend(f(tag)),
            }
        }
        let mut out: Vec<String> = Vec::new();
        for p in paths {
            let p = encode_path(&absolute(&p)).into_owned();
            if !out.contains(&p) {
                out.push(p);
            }
        }
        if out.iter().any(|p| p == "/*") {
            return vec!["/*".into()];
        }
        out
    }
}

/// Splits paths into invalidations of at most `max_paths` paths and 15 wildcards.
fn requests(paths: Vec<String>, max_paths: usize) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let (mut current, mut wildcards) = (Vec::new(), 0);
    for p in paths {
        let wild = p.ends_with('*');
        if current.len() >= max_paths || (wild && wildcards >= MAX_WILDCARDS) {
            out.push(std::mem::take(&mut current));
            wildcards = 0;
        }
        wildcards += usize::from(wild);
        current.push(p);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The `CreateInvalidation` request body.
fn invalidation_batch(reference: &str, paths: &[String]) -> String {
    let items: String = paths
        .iter()
        .map(|p| format!("<Path>{}</Path>", xml_escape(p)))
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <InvalidationBatch xmlns=\"http://cloudfront.amazonaws.com/doc/2020-05-31/\">\
         <CallerReference>{reference}</CallerReference>\
         <Paths><Quantity>{}</Quantity><Items>{items}</Items></Paths>\
         </InvalidationBatch>",
        paths.len()
    )
}

/// Unique per request: CloudFront treats a repeated reference as the same invalidation.
fn caller_reference() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("cache-runtime-{ms}-{:016x}", fastrand::u64(..))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The text of the first `<name>…</name>` in an XML error body.
fn xml_field(body: &str, name: &str) -> Option<String> {
    let start = body.find(&format!("<{name}>"))? + name.len() + 2;
    let end = body[start..].find(&format!("</{name}>"))? + start;
    Some(body[start..end].trim().to_string())
}

impl Purger for CloudFrontPurger {
    fn purge<'a>(&'a self, batch: &'a PurgeBatch) -> BoxFuture<'a, Result<(), PurgeError>> {
        Box::pin(async move {
            let mut refused = Vec::new();
            let paths = self.paths_of(batch, &mut refused);
            for chunk in requests(paths, self.max_paths) {
                // Tags map to paths, so a failure cannot be pinned to fewer items: the whole
                // batch is retried.
                self.invalidate(&chunk).await?;
            }
            if refused.is_empty() {
                return Ok(());
            }
            let e = PurgeError::permanent(
                "cloudfront has no tags: set tag_paths (or ignore_tags) on the CloudFrontPurger",
            );
            let n = refused.len();
            Err(partial_failure(
                "cloudfront tag purge(s)",
                n,
                PurgeBatch::from_distinct(Vec::new(), refused, false),
                e,
                false,
            ))
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl CloudFrontPurgerBuilder {
    /// The AWS access key, its secret and, for temporary credentials, the session token
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`). The identity needs
    /// `cloudfront:CreateInvalidation` on the distribution.
    ///
    /// ```
    /// let _ = cache_runtime::edge::CloudFrontPurger::builder("D").credentials("AKID", "SECRET", None);
    /// ```
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        self.credentials = Some(Credentials::new(
            access_key_id,
            secret_access_key,
            session_token,
            None,
            "cache-runtime",
        ));
        self
    }

    /// Maps a tag to the paths to invalidate (e.g. `user:42` → `/users/42*`): what
    /// [`invalidate_tag`](crate::invalidate_tag) means on this distribution.
    ///
    /// ```
    /// let _ = cache_runtime::edge::CloudFrontPurger::builder("D")
    ///     .tag_paths(|tag| vec![format!("/tags/{tag}*")]);
    /// ```
    pub fn tag_paths(
        mut self,
        paths: impl Fn(&str) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.tags = Tags::Paths(Arc::new(paths));
        self
    }

    /// Skips tags instead of failing them, when another purger (a Varnish in front) handles
    /// them or the application purges only paths.
    ///
    /// ```
    /// let _ = cache_runtime::edge::CloudFrontPurger::builder("D").ignore_tags();
    /// ```
    pub fn ignore_tags(mut self) -> Self {
        self.tags = Tags::Ignore;
        self
    }

    /// The API root (default `https://cloudfront.amazonaws.com`); tests point it at a
    /// contract server.
    ///
    /// ```
    /// let _ = cache_runtime::edge::CloudFrontPurger::builder("D").api_base("http://127.0.0.1:9");
    /// ```
    pub fn api_base(mut self, url: impl Into<String>) -> Self {
        self.api = url.into().trim_end_matches('/').to_string();
        self
    }

    /// Paths per invalidation (default and maximum 3000).
    ///
    /// ```
    /// let _ = cache_runtime::edge::CloudFrontPurger::builder("D").max_paths(1000);
    /// ```
    pub fn max_paths(mut self, paths: usize) -> Self {
        self.max_paths = paths.clamp(1, DEFAULT_MAX_PATHS);
        self
    }

    /// The wait after `TooManyInvalidationsInProgress` or throttling when the answer has no
    /// `Retry-After` (default 30 s: invalidations take minutes to complete).
    ///
    /// ```
    /// use std::time::Duration;
    /// let _ = cache_runtime::edge::CloudFrontPurger::builder("D").in_progress_wait(Duration::from_secs(60));
    /// ```
    pub fn in_progress_wait(mut self, wait: Duration) -> Self {
        self.in_progress_wait = wait;
        self
    }

    /// Deadline of one request (default 10 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// let _ = cache_runtime::edge::CloudFrontPurger::builder("D").timeout(Duration::from_secs(5));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The name in logs and metrics (default `cloudfront <distribution id>`).
    ///
    /// ```
    /// use cache_runtime::edge::{CloudFrontPurger, Purger};
    /// let p = CloudFrontPurger::builder("D").credentials("A", "S", None).name("cdn").build().unwrap();
    /// assert_eq!(p.name(), "cdn");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Checks the settings and builds the purger.
    ///
    /// ```
    /// use cache_runtime::edge::CloudFrontPurger;
    /// assert!(CloudFrontPurger::builder("D").build().is_err()); // no credentials
    /// ```
    pub fn build(self) -> Result<CloudFrontPurger, EdgeError> {
        let credentials = self
            .credentials
            .ok_or_else(|| EdgeError::Config("cloudfront: credentials are needed".into()))?;
        if self.distribution.trim().is_empty() {
            return Err(EdgeError::Config(
                "cloudfront: a distribution id is needed".into(),
            ));
        }
        check_url(&self.api)?;
        Ok(CloudFrontPurger {
            url: format!(
                "{}/2020-05-31/distribution/{}/invalidation",
                self.api, self.distribution
            ),
            name: self
                .name
                .unwrap_or_else(|| format!("cloudfront {}", self.distribution)),
            distribution: self.distribution,
            credentials,
            tags: self.tags,
            max_paths: self.max_paths,
            in_progress_wait: self.in_progress_wait,
            timeout: self.timeout,
            client: client(self.timeout),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_split_by_count_and_wildcards() {
        let paths: Vec<String> = (0..40).map(|i| format!("/a/{i}*")).collect();
        let sizes: Vec<usize> = requests(paths, 3000).iter().map(Vec::len).collect();
        assert_eq!(sizes, [15, 15, 10]);
        let paths: Vec<String> = (0..7).map(|i| format!("/p/{i}")).collect();
        let sizes: Vec<usize> = requests(paths, 3).iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 1]);
    }

    #[test]
    fn the_body_is_an_invalidation_batch() {
        let b = invalidation_batch("ref-1", &["/a&b".into(), "/c*".into()]);
        assert!(b.contains("<CallerReference>ref-1</CallerReference>"));
        assert!(b.contains("<Quantity>2</Quantity>"));
        assert!(b.contains("<Path>/a&amp;b</Path><Path>/c*</Path>"));
        assert_eq!(
            xml_field("<E><Code>X</Code></E>", "Code").as_deref(),
            Some("X")
        );
        assert_ne!(caller_reference(), caller_reference());
    }
}
