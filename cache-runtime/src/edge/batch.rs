//! What to purge ([`PurgeBatch`]) and why a purge failed ([`PurgeError`]).

use std::fmt;
use std::time::Duration;

/// Paths and surrogate keys (tags) to purge together, each listed once, in the order first
/// added; or [everything](PurgeBatch::everything) the edge holds.
///
/// ```
/// use cache_runtime::edge::PurgeBatch;
/// let mut b = PurgeBatch::new().with_path("/a").with_tag("user:1");
/// assert!(!b.add_path("/a")); // already there
/// assert!(b.add_path("/b"));
/// assert_eq!(b.paths(), ["/a", "/b"]);
/// assert_eq!(b.tags(), ["user:1"]);
/// assert_eq!(b.len(), 3);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeBatch {
    paths: Vec<String>,
    tags: Vec<String>,
    everything: bool,
}

impl PurgeBatch {
    /// An empty batch.
    ///
    /// ```
    /// assert!(cache_runtime::edge::PurgeBatch::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a path unless it is already in the batch; returns whether it was added.
    ///
    /// ```
    /// let mut b = cache_runtime::edge::PurgeBatch::new();
    /// assert!(b.add_path("/x"));
    /// assert!(!b.add_path("/x"));
    /// ```
    pub fn add_path(&mut self, path: impl Into<String>) -> bool {
        push_unique(&mut self.paths, path.into())
    }

    /// Adds a tag unless it is already in the batch; returns whether it was added.
    ///
    /// ```
    /// let mut b = cache_runtime::edge::PurgeBatch::new();
    /// assert!(b.add_tag("t"));
    /// assert!(!b.add_tag("t"));
    /// ```
    pub fn add_tag(&mut self, tag: impl Into<String>) -> bool {
        push_unique(&mut self.tags, tag.into())
    }

    /// [`add_path`](Self::add_path), by value.
    ///
    /// ```
    /// let b = cache_runtime::edge::PurgeBatch::new().with_path("/x");
    /// assert_eq!(b.paths(), ["/x"]);
    /// ```
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.add_path(path);
        self
    }

    /// [`add_tag`](Self::add_tag), by value.
    ///
    /// ```
    /// let b = cache_runtime::edge::PurgeBatch::new().with_tag("t");
    /// assert_eq!(b.tags(), ["t"]);
    /// ```
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.add_tag(tag);
        self
    }

    /// The paths, unencoded (see [`encode_path`](super::encode_path)).
    ///
    /// ```
    /// assert!(cache_runtime::edge::PurgeBatch::new().paths().is_empty());
    /// ```
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// The tags (surrogate keys), unencoded (see
    /// [`encode_surrogate_key`](super::encode_surrogate_key)).
    ///
    /// ```
    /// assert!(cache_runtime::edge::PurgeBatch::new().tags().is_empty());
    /// ```
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// A batch that purges everything the edge caches for this site (Cloudflare's
    /// `purge_everything`, Fastly's `purge_all`, CloudFront's `/*`, a Varnish ban). The queue
    /// sends one when it had to [fold](crate::edge::EdgeStats::folded) more waiting purges
    /// than its capacity: a purger must purge everything it caches, or fail.
    ///
    /// ```
    /// let b = cache_runtime::edge::PurgeBatch::everything();
    /// assert!(b.is_everything() && !b.is_empty() && b.paths().is_empty());
    /// ```
    pub fn everything() -> Self {
        Self {
            everything: true,
            ..Self::default()
        }
    }

    /// Whether this batch asks to purge everything (see [`everything`](Self::everything));
    /// its paths and tags are then covered by it.
    ///
    /// ```
    /// assert!(!cache_runtime::edge::PurgeBatch::new().is_everything());
    /// ```
    pub fn is_everything(&self) -> bool {
        self.everything
    }

    /// Number of paths plus number of tags (plus one for [everything](Self::everything)).
    ///
    /// ```
    /// let b = cache_runtime::edge::PurgeBatch::new().with_path("/x").with_tag("t");
    /// assert_eq!(b.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.paths.len() + self.tags.len() + usize::from(self.everything)
    }

    /// Whether there is nothing to purge.
    ///
    /// ```
    /// assert!(cache_runtime::edge::PurgeBatch::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.tags.is_empty() && !self.everything
    }

    /// The items of `self` that are also in `other`.
    pub(crate) fn intersect(&self, other: &PurgeBatch) -> PurgeBatch {
        PurgeBatch {
            paths: self
                .paths
                .iter()
                .filter(|p| other.paths.contains(p))
                .cloned()
                .collect(),
            tags: self
                .tags
                .iter()
                .filter(|t| other.tags.contains(t))
                .cloned()
                .collect(),
            everything: self.everything && other.everything,
        }
    }

    /// Builds a batch from items known to be distinct.
    pub(crate) fn from_distinct(paths: Vec<String>, tags: Vec<String>, everything: bool) -> Self {
        Self {
            paths,
            tags,
            everything,
        }
    }
}

fn push_unique(v: &mut Vec<String>, s: String) -> bool {
    if v.contains(&s) {
        false
    } else {
        v.push(s);
        true
    }
}

/// Why a purge did not go through: a message, whether trying again may help, and optionally
/// which items of the batch were not purged (by default, all of them).
///
/// ```
/// use cache_runtime::edge::{PurgeBatch, PurgeError};
/// let e = PurgeError::transient("503 Service Unavailable")
///     .with_items(PurgeBatch::new().with_path("/b"));
/// assert!(e.is_retryable());
/// assert_eq!(e.items().unwrap().paths(), ["/b"]);
/// assert_eq!(e.to_string(), "503 Service Unavailable");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeError {
    message: String,
    retryable: bool,
    unauthorized: bool,
    retry_after: Option<Duration>,
    items: Option<PurgeBatch>,
}

impl PurgeError {
    /// A failure that may go away (timeout, connection refused, 5xx, 429): retried.
    ///
    /// ```
    /// assert!(cache_runtime::edge::PurgeError::transient("timeout").is_retryable());
    /// ```
    pub fn transient(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            retryable: true,
            unauthorized: false,
            retry_after: None,
            items: None,
        }
    }

    /// A failure that will not go away by retrying (403, 405, a malformed URL): not retried.
    ///
    /// ```
    /// assert!(!cache_runtime::edge::PurgeError::permanent("403 Forbidden").is_retryable());
    /// ```
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self {
            retryable: false,
            ..Self::transient(message)
        }
    }

    /// Credentials refused (401, 403, a bad signature): permanent, and reported as such in
    /// [`Edge::health`](crate::edge::Edge::health) until a purge succeeds again.
    ///
    /// ```
    /// let e = cache_runtime::edge::PurgeError::unauthorized("401: invalid token");
    /// assert!(e.is_unauthorized() && !e.is_retryable());
    /// ```
    pub fn unauthorized(message: impl fmt::Display) -> Self {
        Self {
            unauthorized: true,
            ..Self::permanent(message)
        }
    }

    /// A rate limit (429, a throttling error) that asks to wait `delay` (its `Retry-After`):
    /// transient; the retry waits at least `delay`, and does not use up one of the
    /// [`retries`](crate::edge::EdgeBuilder::retries) while the total wait stays within
    /// [`rate_limit_patience`](crate::edge::EdgeBuilder::rate_limit_patience).
    ///
    /// ```
    /// use cache_runtime::edge::PurgeError;
    /// use std::time::Duration;
    /// let e = PurgeError::rate_limited("429", Duration::from_secs(3));
    /// assert!(e.is_retryable());
    /// assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    /// ```
    pub fn rate_limited(message: impl fmt::Display, delay: Duration) -> Self {
        Self {
            retry_after: Some(delay),
            ..Self::transient(message)
        }
    }

    /// Says that only `items` of the batch were not purged; a retry sends only those.
    ///
    /// ```
    /// use cache_runtime::edge::{PurgeBatch, PurgeError};
    /// let e = PurgeError::transient("x").with_items(PurgeBatch::new().with_tag("t"));
    /// assert_eq!(e.items().unwrap().tags(), ["t"]);
    /// ```
    pub fn with_items(mut self, items: PurgeBatch) -> Self {
        self.items = Some(items);
        self
    }

    /// Whether trying again may help.
    ///
    /// ```
    /// assert!(cache_runtime::edge::PurgeError::transient("x").is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Whether the edge refused the credentials.
    ///
    /// ```
    /// assert!(!cache_runtime::edge::PurgeError::transient("x").is_unauthorized());
    /// ```
    pub fn is_unauthorized(&self) -> bool {
        self.unauthorized
    }

    /// How long the edge asked to wait before trying again (a rate limit's `Retry-After`).
    ///
    /// ```
    /// assert_eq!(cache_runtime::edge::PurgeError::transient("x").retry_after(), None);
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The items that were not purged, if the purger said (`None`: the whole batch).
    ///
    /// ```
    /// assert!(cache_runtime::edge::PurgeError::transient("x").items().is_none());
    /// ```
    pub fn items(&self) -> Option<&PurgeBatch> {
        self.items.as_ref()
    }

    /// The message.
    ///
    /// ```
    /// assert_eq!(cache_runtime::edge::PurgeError::transient("x").message(), "x");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl PurgeError {
    /// The same error, its message prefixed with `context: `.
    #[cfg_attr(not(feature = "edge"), allow(dead_code))]
    pub(crate) fn prefixed(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for PurgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PurgeError {}
