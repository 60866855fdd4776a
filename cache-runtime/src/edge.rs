//! CDN / edge purge (layer 4): when a cached value changes, the pages built from it are purged
//! at every configured edge cache (Varnish, Fastly, Cloudflare, ...).
//!
//! The generated `invalidate_*`, `populate_*` and `refresh_*` functions of a
//! `#[cached(..., purge = ["/users/<id>"])]` function call [`enqueue_paths`], and
//! [`invalidate_tag`](crate::invalidate_tag) calls [`enqueue_tags`]. Both only put the items in
//! a bounded in-memory queue and return: the purges are sent by a background worker (its own
//! thread and one-thread Tokio runtime, so callers need no runtime), in deduplicated batches,
//! by every configured [`Purger`], with bounded retries and exponential backoff. A full queue
//! drops the new items (counted in [`EdgeStats::dropped`], with a rate-limited warning) rather
//! than block a caller; failures are counted and logged, never returned to the caller.
//!
//! Every item is purged a second time, [`repurge_after`](EdgeBuilder::repurge_after) (1 s by
//! default) after its first purge: a fetch by the edge that started before the write can
//! deliver the old response after the first purge, and the edge would keep it for its whole
//! `s-maxage`. [`EdgeStats`] counts the second purges (`repurged`) and reports how long purges
//! take from enqueue to acknowledgement (`latency_p50`, `latency_p99`, `latency_max`).
//!
//! Configure the edge once at start-up with [`install`], or set `CACHE_EDGE_PURGE_URL` (with the
//! `edge` cargo feature): a comma-separated list of base URLs of edge caches, e.g.
//! `http://127.0.0.1:6081`. Each URL gets an `HttpPurger` (one `PURGE <path>` per path)
//! and a `SurrogateKeyPurger::xkey` (one `PURGE /` with an `xkey-purge: tag1 tag2` header per
//! batch of tags), which is what the VCL shipped in `deploy/varnish/cache-toolkit.vcl`
//! understands. `CACHE_EDGE_PURGE_HOST` optionally sets the `Host` header of those requests
//! (the site's name, when it differs from the edge's address), and `CACHE_EDGE_REPURGE_MS`
//! the delay of the second purge (1000 by default; 0 turns it off). The variables are read
//! once, on the first enqueue, if nothing was installed before. With neither, every function
//! here is a no-op.
//!
//! ```
//! use cache_runtime::edge::{self, Edge, FnPurger, PurgeBatch, PurgeError};
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//!
//! // Any purger: here one that records what it is asked to purge.
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = seen.clone();
//! let edge = Edge::builder()
//!     .purger(FnPurger::new("recorder", move |batch: &PurgeBatch| {
//!         log.lock().unwrap().extend(batch.paths().iter().cloned());
//!         Ok::<(), PurgeError>(())
//!     }))
//!     .repurge_after(Duration::from_millis(50)) // the second purge (default: 1 s)
//!     .build();
//! edge::install(edge).unwrap();
//!
//! edge::enqueue_paths(vec!["/users/42".into(), "/users/42/card".into()]);
//! assert!(edge::flush_blocking(Duration::from_secs(5))); // the first purges
//! assert_eq!(seen.lock().unwrap()[..2], ["/users/42", "/users/42/card"]);
//! assert!(edge::flush_all_blocking(Duration::from_secs(5))); // and the second ones
//! assert_eq!(seen.lock().unwrap().len(), 4);
//! let s = edge::stats();
//! assert_eq!((s.sent, s.repurged), (4, 2));
//! assert!(s.latency_max >= s.latency_p50);
//! ```
//!
//! # Encoding
//!
//! Paths are sent as given, except that bytes that may not appear in an HTTP request target
//! are percent-encoded ([`encode_path`]); `%` itself is kept, so an already encoded path is
//! sent unchanged. Surrogate keys are separated by spaces (and, for Varnish's xkey, commas) in
//! headers, so [`encode_surrogate_key`] percent-encodes `%`, space, comma, control characters
//! and non-ASCII bytes; the HTTP layer emits `Surrogate-Key` / `xkey` response headers with the
//! same function, so the key an edge stored is the key that is purged.
//!
//! See `docs/EDGE.md` for the VCL, the queue, and pointing the purgers at a CDN's API.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Once, OnceLock};
use std::time::Duration;

mod worker;

#[cfg(feature = "edge")]
mod http;

#[cfg(feature = "edge")]
pub use http::{HttpPurger, HttpPurgerBuilder, SurrogateKeyPurger, SurrogateKeyPurgerBuilder};

use worker::Worker;

/// A boxed, `Send` future, as returned by [`Purger::purge`].
///
/// ```
/// use cache_runtime::edge::BoxFuture;
/// let f: BoxFuture<'static, u8> = Box::pin(async { 7 });
/// assert_eq!(pollster::block_on(f), 7);
/// ```
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that purges paths and surrogate keys (tags) at an edge cache.
///
/// Implement it to purge through a CDN's API (Fastly, Cloudflare, ...). A purger receives whole
/// batches (deduplicated paths and tags) and ignores what it does not handle: the built-in
/// `HttpPurger` purges only paths, `SurrogateKeyPurger` only tags (both with the `edge` cargo
/// feature). It is called from the edge worker's Tokio runtime, one batch at a time; each call
/// is bounded by [`EdgeBuilder::timeout`] and retried as [`EdgeBuilder::retries`] says when it
/// returns a [retryable](PurgeError::transient) error.
///
/// ```
/// use cache_runtime::edge::{BoxFuture, PurgeBatch, PurgeError, Purger};
///
/// /// Purges by calling some API, e.g. a CDN's "purge by URL" endpoint.
/// struct MyCdn;
///
/// impl Purger for MyCdn {
///     fn purge<'a>(&'a self, batch: &'a PurgeBatch) -> BoxFuture<'a, Result<(), PurgeError>> {
///         Box::pin(async move {
///             for path in batch.paths() {
///                 // send it; on a 5xx or a timeout:
///                 // return Err(PurgeError::transient("503 from the API"));
///                 let _ = path;
///             }
///             Ok(())
///         })
///     }
///     fn name(&self) -> &str {
///         "my-cdn"
///     }
/// }
///
/// let batch = PurgeBatch::new().with_path("/users/1");
/// assert!(pollster::block_on(MyCdn.purge(&batch)).is_ok());
/// ```
pub trait Purger: Send + Sync + 'static {
    /// Purges the batch's paths and/or tags. `Ok` means every item this purger handles was
    /// purged (or needed no purge).
    fn purge<'a>(&'a self, batch: &'a PurgeBatch) -> BoxFuture<'a, Result<(), PurgeError>>;

    /// A short name for logs and the `purger` label of metrics.
    fn name(&self) -> &str {
        "purger"
    }
}

/// A [`Purger`] from a synchronous closure: for tests, logging, or handing purges to another
/// system. The closure runs on the edge worker's thread, so it must not block for long.
///
/// ```
/// use cache_runtime::edge::{FnPurger, PurgeBatch, PurgeError, Purger};
/// let p = FnPurger::new("stdout", |batch: &PurgeBatch| {
///     println!("purge {:?} {:?}", batch.paths(), batch.tags());
///     Ok::<(), PurgeError>(())
/// });
/// assert_eq!(p.name(), "stdout");
/// ```
pub struct FnPurger<F> {
    name: String,
    f: F,
}

impl<F> FnPurger<F>
where
    F: Fn(&PurgeBatch) -> Result<(), PurgeError> + Send + Sync + 'static,
{
    /// Wraps `f`, named `name` in logs and metrics.
    ///
    /// ```
    /// use cache_runtime::edge::{FnPurger, PurgeBatch, PurgeError};
    /// let _p = FnPurger::new("noop", |_: &PurgeBatch| Ok::<(), PurgeError>(()));
    /// ```
    pub fn new(name: impl Into<String>, f: F) -> Self {
        Self {
            name: name.into(),
            f,
        }
    }
}

impl<F> Purger for FnPurger<F>
where
    F: Fn(&PurgeBatch) -> Result<(), PurgeError> + Send + Sync + 'static,
{
    fn purge<'a>(&'a self, batch: &'a PurgeBatch) -> BoxFuture<'a, Result<(), PurgeError>> {
        let result = (self.f)(batch);
        Box::pin(std::future::ready(result))
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl<F> fmt::Debug for FnPurger<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnPurger")
            .field("name", &self.name)
            .finish()
    }
}

/// Paths and surrogate keys (tags) to purge together, each listed once, in the order first
/// added.
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

    /// The paths, unencoded (see [`encode_path`]).
    ///
    /// ```
    /// assert!(cache_runtime::edge::PurgeBatch::new().paths().is_empty());
    /// ```
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// The tags (surrogate keys), unencoded (see [`encode_surrogate_key`]).
    ///
    /// ```
    /// assert!(cache_runtime::edge::PurgeBatch::new().tags().is_empty());
    /// ```
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// Number of paths plus number of tags.
    ///
    /// ```
    /// let b = cache_runtime::edge::PurgeBatch::new().with_path("/x").with_tag("t");
    /// assert_eq!(b.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.paths.len() + self.tags.len()
    }

    /// Whether there is nothing to purge.
    ///
    /// ```
    /// assert!(cache_runtime::edge::PurgeBatch::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.tags.is_empty()
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
        }
    }

    /// Builds a batch from items known to be distinct.
    pub(crate) fn from_distinct(paths: Vec<String>, tags: Vec<String>) -> Self {
        Self { paths, tags }
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

impl fmt::Display for PurgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PurgeError {}

/// Errors of edge configuration.
///
/// ```
/// use cache_runtime::edge::{self, Edge, EdgeError};
/// let first = edge::install(Edge::builder().build());
/// assert!(first.is_ok());
/// assert_eq!(edge::install(Edge::builder().build()), Err(EdgeError::AlreadyInstalled));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    /// [`install`] was called after an edge was installed (explicitly, or from
    /// `CACHE_EDGE_PURGE_URL` by the first enqueue).
    #[error("an edge is already installed; call edge::install() once, at start-up")]
    AlreadyInstalled,
    /// A purger's URL does not parse or is not `http://` / `https://`.
    #[error("invalid edge url: {0}")]
    InvalidUrl(String),
    /// A header name or value is not valid HTTP.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
}

/// Counters of an [`Edge`], in items (one path or one tag).
///
/// Every accepted item is counted in `enqueued`, and ends up in exactly one of `coalesced` (it
/// was already waiting in the queue), `sent` (every purger purged it), `failed` (some purger
/// gave up on it) or, meanwhile, `pending`: `enqueued == coalesced + sent + failed + pending`.
/// Items refused because the queue was full are counted in `dropped` only.
///
/// Second purges ([`EdgeBuilder::repurge_after`]) are counted in `delayed` while they wait
/// for their time, then enter the queue like any item (counted in `enqueued`, and in
/// `repurged`), so the equation above holds for them too.
///
/// The latencies are the time from an item's enqueue to its acknowledgement by every purger,
/// for first purges that succeeded: p50 and p99 of the most recent 4 096, and the longest
/// since the edge started (all zero before the first purge). The same times are recorded in
/// the `cache_edge_purge_latency_seconds` histogram.
///
/// ```
/// let s = cache_runtime::edge::stats();
/// assert_eq!(s.enqueued, s.coalesced + s.sent + s.failed + s.pending);
/// assert!(s.repurged <= s.enqueued);
/// assert!(s.latency_p50 <= s.latency_p99 && s.latency_p99 <= s.latency_max);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EdgeStats {
    /// Items accepted into the queue.
    pub enqueued: u64,
    /// Accepted items that were already waiting in the queue (purged once for all).
    pub coalesced: u64,
    /// Items every purger purged.
    pub sent: u64,
    /// Items some purger gave up on (a permanent error, or retries exhausted).
    pub failed: u64,
    /// Items refused because the queue was full.
    pub dropped: u64,
    /// Purger calls that were retries.
    pub retried: u64,
    /// Items waiting in the queue or being purged.
    pub pending: u64,
    /// Second purges that entered the queue (also counted in `enqueued`).
    pub repurged: u64,
    /// Second purges scheduled and not yet due (not counted in `pending`).
    pub delayed: u64,
    /// Median time from enqueue to purged, over the most recent first purges.
    pub latency_p50: Duration,
    /// 99th percentile of the same.
    pub latency_p99: Duration,
    /// Longest time from enqueue to purged since the edge started.
    pub latency_max: Duration,
}

/// The defaults of [`EdgeBuilder`].
const DEFAULT_CAPACITY: usize = 10_000;
const DEFAULT_RETRIES: u32 = 3;
const DEFAULT_BACKOFF: Duration = Duration::from_millis(100);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_BATCH: usize = 256;
const DEFAULT_REPURGE_AFTER: Duration = Duration::from_secs(1);

/// Configures an [`Edge`]: its purgers, queue and retries.
///
/// ```
/// use cache_runtime::edge::{Edge, FnPurger, PurgeBatch, PurgeError};
/// use std::time::Duration;
/// let edge = Edge::builder()
///     .purger(FnPurger::new("noop", |_: &PurgeBatch| Ok::<(), PurgeError>(())))
///     .capacity(1_000)
///     .retries(5)
///     .backoff(Duration::from_millis(50), Duration::from_secs(2))
///     .timeout(Duration::from_secs(3))
///     .max_batch(100)
///     .repurge_after(Duration::from_secs(2))
///     .build();
/// assert_eq!(edge.purger_names(), ["noop"]);
/// ```
pub struct EdgeBuilder {
    purgers: Vec<Arc<dyn Purger>>,
    settings: Settings,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub capacity: usize,
    pub retries: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
    pub max_batch: usize,
    pub repurge_after: Option<Duration>,
}

impl EdgeBuilder {
    /// Adds a purger. Every item is sent to every purger (each ignores what it does not
    /// handle); an item counts as sent when all of them succeeded.
    ///
    /// ```
    /// use cache_runtime::edge::{Edge, FnPurger, PurgeBatch, PurgeError};
    /// let ok = |_: &PurgeBatch| Ok::<(), PurgeError>(());
    /// let edge = Edge::builder()
    ///     .purger(FnPurger::new("a", ok))
    ///     .purger(FnPurger::new("b", ok))
    ///     .build();
    /// assert_eq!(edge.purger_names(), ["a", "b"]);
    /// ```
    pub fn purger(mut self, purger: impl Purger) -> Self {
        self.purgers.push(Arc::new(purger));
        self
    }

    /// [`purger`](Self::purger) for a shared purger.
    ///
    /// ```
    /// use cache_runtime::edge::{Edge, FnPurger, PurgeBatch, PurgeError, Purger};
    /// use std::sync::Arc;
    /// let p: Arc<dyn Purger> = Arc::new(FnPurger::new("a", |_: &PurgeBatch| Ok::<(), PurgeError>(())));
    /// let edge = Edge::builder().purger_arc(p).build();
    /// assert_eq!(edge.purger_names(), ["a"]);
    /// ```
    pub fn purger_arc(mut self, purger: Arc<dyn Purger>) -> Self {
        self.purgers.push(purger);
        self
    }

    /// How many distinct items may wait in the queue (default 10 000); more are dropped and
    /// counted. The batch being purged does not count.
    ///
    /// ```
    /// let _ = cache_runtime::edge::Edge::builder().capacity(100);
    /// ```
    pub fn capacity(mut self, items: usize) -> Self {
        self.settings.capacity = items.max(1);
        self
    }

    /// How many times a failed purger call is retried (default 3, so at most 4 calls).
    ///
    /// ```
    /// let _ = cache_runtime::edge::Edge::builder().retries(0); // one try only
    /// ```
    pub fn retries(mut self, retries: u32) -> Self {
        self.settings.retries = retries;
        self
    }

    /// The wait before the first retry (default 100 ms), doubled at each further retry up to
    /// `max` (default 5 s), plus up to 25 % random jitter.
    ///
    /// ```
    /// use std::time::Duration;
    /// let _ = cache_runtime::edge::Edge::builder()
    ///     .backoff(Duration::from_millis(10), Duration::from_secs(1));
    /// ```
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.settings.backoff = first;
        self.settings.max_backoff = max.max(first);
        self
    }

    /// The deadline of one purger call on one batch (default 10 s); a call past it counts as
    /// a transient failure. The built-in HTTP purgers also bound each request (see
    /// `HttpPurgerBuilder::timeout`).
    ///
    /// ```
    /// use std::time::Duration;
    /// let _ = cache_runtime::edge::Edge::builder().timeout(Duration::from_secs(2));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// The most items in one batch (default 256).
    ///
    /// ```
    /// let _ = cache_runtime::edge::Edge::builder().max_batch(32);
    /// ```
    pub fn max_batch(mut self, items: usize) -> Self {
        self.settings.max_batch = items.max(1);
        self
    }

    /// Purges every item a second time, `delay` after its first purge finished (default 1 s);
    /// `Duration::ZERO` turns second purges off.
    ///
    /// Why it is on by default: a fetch by the edge that started before a write (the service
    /// read the old value, then the write and its purge happened, then the edge received the
    /// old response) stores the old page *after* the purge, and the edge serves it for the
    /// whole `s-maxage`, which is what purging is meant to prevent. The race needs no bad luck
    /// beyond concurrent reads and writes of the same page (measured in `docs/LAYERS.md`), and
    /// one more purge per item is cheap for Varnish or Fastly. Every fetch that completes
    /// within `delay` of the write is covered; choose `delay` above the time your service takes
    /// to produce a cacheable response (or send slower responses with `no-store`). Turn it off,
    /// or lengthen it, for a CDN whose purge API is rate-limited.
    ///
    /// Second purges are deduplicated: an item scheduled again (another write) is purged once,
    /// at the later time, which covers both writes. A second purge is not purged again. They
    /// wait in the worker's delay queue (no timer or thread per item), bounded by
    /// [`capacity`](Self::capacity) (more are dropped and counted). [`Edge::flush`] does not
    /// wait for them; [`Edge::flush_all`] does.
    ///
    /// ```
    /// use cache_runtime::edge::{Edge, FnPurger, PurgeBatch, PurgeError};
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// let edge = Edge::builder()
    ///     .purger(FnPurger::new("log", move |b: &PurgeBatch| {
    ///         log.lock().unwrap().extend(b.paths().iter().cloned());
    ///         Ok::<(), PurgeError>(())
    ///     }))
    ///     .repurge_after(Duration::from_millis(20))
    ///     .build();
    /// assert_eq!(edge.repurge_after(), Some(Duration::from_millis(20)));
    /// edge.enqueue_paths(["/users/1"]);
    /// assert!(edge.flush_all_blocking(Duration::from_secs(5)));
    /// assert_eq!(*seen.lock().unwrap(), ["/users/1", "/users/1"]);
    /// assert_eq!(edge.stats().repurged, 1);
    ///
    /// let once = Edge::builder().repurge_after(Duration::ZERO).build();
    /// assert_eq!(once.repurge_after(), None);
    /// ```
    pub fn repurge_after(mut self, delay: Duration) -> Self {
        self.settings.repurge_after = (!delay.is_zero()).then_some(delay);
        self
    }

    /// Starts the edge: its worker thread and runtime. Install it with [`install`], or use it
    /// directly through its methods.
    ///
    /// ```
    /// let edge = cache_runtime::edge::Edge::builder().build();
    /// assert_eq!(edge.stats().enqueued, 0);
    /// ```
    pub fn build(self) -> Edge {
        Edge {
            worker: Worker::start(self.purgers, self.settings),
        }
    }
}

/// A running edge purge queue: purgers, a bounded queue, and the worker that drains it.
///
/// Most applications [`install`] one and use the module's functions; an `Edge` can also be
/// used on its own (e.g. in tests). Dropping it stops its worker after the batch in progress;
/// items still queued or waiting for their second purge are abandoned, so
/// [`flush_all`](Edge::flush_all) first for a graceful shutdown.
///
/// ```
/// use cache_runtime::edge::{Edge, FnPurger, PurgeBatch, PurgeError};
/// use std::time::Duration;
/// let edge = Edge::builder()
///     .purger(FnPurger::new("noop", |_: &PurgeBatch| Ok::<(), PurgeError>(())))
///     .repurge_after(Duration::ZERO) // one purge per item
///     .build();
/// edge.enqueue_tags(["user:1", "user:1", "team:7"]);
/// assert!(edge.flush_blocking(Duration::from_secs(5)));
/// let s = edge.stats();
/// assert_eq!(s.enqueued, 3);
/// assert_eq!(s.sent + s.coalesced, 3);
/// ```
pub struct Edge {
    worker: Worker,
}

impl fmt::Debug for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Edge")
            .field("purgers", &self.purger_names())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Edge {
    /// A builder with the defaults: no purger, capacity 10 000, 3 retries from 100 ms up to
    /// 5 s, 10 s per purger call, batches of up to 256 items, a second purge of every item
    /// 1 s after its first.
    ///
    /// ```
    /// let _edge = cache_runtime::edge::Edge::builder().build();
    /// ```
    pub fn builder() -> EdgeBuilder {
        EdgeBuilder {
            purgers: Vec::new(),
            settings: Settings {
                capacity: DEFAULT_CAPACITY,
                retries: DEFAULT_RETRIES,
                backoff: DEFAULT_BACKOFF,
                max_backoff: DEFAULT_MAX_BACKOFF,
                timeout: DEFAULT_TIMEOUT,
                max_batch: DEFAULT_MAX_BATCH,
                repurge_after: Some(DEFAULT_REPURGE_AFTER),
            },
        }
    }

    /// Queues purges of these URL paths. Never blocks (beyond a short lock), never fails;
    /// empty strings are ignored.
    ///
    /// ```
    /// let edge = cache_runtime::edge::Edge::builder().build();
    /// edge.enqueue_paths(["/users/1", "/users/1/card"]);
    /// assert_eq!(edge.stats().enqueued, 2);
    /// ```
    pub fn enqueue_paths<I, S>(&self, paths: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.worker
            .enqueue(paths.into_iter().map(|p| worker::Item::Path(p.into())));
    }

    /// Queues purges of these surrogate keys (tags). Never blocks, never fails; empty strings
    /// are ignored.
    ///
    /// ```
    /// let edge = cache_runtime::edge::Edge::builder().build();
    /// edge.enqueue_tags(["user:1"]);
    /// assert_eq!(edge.stats().enqueued, 1);
    /// ```
    pub fn enqueue_tags<I, S>(&self, tags: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.worker
            .enqueue(tags.into_iter().map(|t| worker::Item::Tag(t.into())));
    }

    /// A snapshot of the counters.
    ///
    /// ```
    /// let edge = cache_runtime::edge::Edge::builder().build();
    /// assert_eq!(edge.stats(), Default::default());
    /// ```
    pub fn stats(&self) -> EdgeStats {
        self.worker.stats()
    }

    /// Waits until every item enqueued before the call was sent or given up on, for at most
    /// `timeout`; returns whether it was. Works from any async runtime. Second purges that
    /// are not yet due are not waited for (see [`flush_all`](Self::flush_all)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// let edge = cache_runtime::edge::Edge::builder().build();
    /// edge.enqueue_paths(["/a"]);
    /// assert!(edge.flush(Duration::from_secs(5)).await);
    /// # }
    /// ```
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.worker.flush(timeout).await
    }

    /// Blocking [`flush`](Self::flush), for sync code and shutdown hooks. Do not call it on an
    /// async runtime's thread.
    ///
    /// ```
    /// use std::time::Duration;
    /// let edge = cache_runtime::edge::Edge::builder().build();
    /// assert!(edge.flush_blocking(Duration::from_secs(1)));
    /// ```
    pub fn flush_blocking(&self, timeout: Duration) -> bool {
        pollster::block_on(self.worker.flush(timeout))
    }

    /// Waits until the edge is idle: nothing waiting, being purged, or scheduled for a second
    /// purge (which takes at least [`repurge_after`](EdgeBuilder::repurge_after)), for at
    /// most `timeout`; returns whether it became idle. Items enqueued meanwhile are waited for
    /// too, so call it once enqueues have stopped: at shutdown, or in tests.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// let edge = cache_runtime::edge::Edge::builder()
    ///     .repurge_after(Duration::from_millis(10))
    ///     .build();
    /// edge.enqueue_paths(["/a"]);
    /// assert!(edge.flush_all(Duration::from_secs(5)).await);
    /// let s = edge.stats();
    /// assert_eq!((s.sent, s.repurged, s.delayed, s.pending), (2, 1, 0, 0));
    /// # }
    /// ```
    pub async fn flush_all(&self, timeout: Duration) -> bool {
        self.worker.flush_all(timeout).await
    }

    /// Blocking [`flush_all`](Self::flush_all). Do not call it on an async runtime's thread.
    ///
    /// ```
    /// use std::time::Duration;
    /// let edge = cache_runtime::edge::Edge::builder().build();
    /// assert!(edge.flush_all_blocking(Duration::from_secs(1)));
    /// ```
    pub fn flush_all_blocking(&self, timeout: Duration) -> bool {
        pollster::block_on(self.worker.flush_all(timeout))
    }

    /// The delay of second purges, `None` when they are off.
    ///
    /// ```
    /// use std::time::Duration;
    /// let edge = cache_runtime::edge::Edge::builder().build();
    /// assert_eq!(edge.repurge_after(), Some(Duration::from_secs(1)));
    /// ```
    pub fn repurge_after(&self) -> Option<Duration> {
        self.worker.repurge_after()
    }

    /// The purgers' names, in the order they were added.
    ///
    /// ```
    /// assert!(cache_runtime::edge::Edge::builder().build().purger_names().is_empty());
    /// ```
    pub fn purger_names(&self) -> Vec<String> {
        self.worker.purger_names()
    }
}

static INSTALLED: OnceLock<Edge> = OnceLock::new();
static FROM_ENV: Once = Once::new();

/// The installed edge, configuring it from the environment on first use if nothing was
/// installed.
fn global() -> Option<&'static Edge> {
    if let Some(edge) = INSTALLED.get() {
        return Some(edge);
    }
    FROM_ENV.call_once(|| {
        if let Some(edge) = from_env() {
            let _ = INSTALLED.set(edge);
        }
    });
    INSTALLED.get()
}

/// Installs the process's edge: the target of [`enqueue_paths`], [`enqueue_tags`], and so of
/// the generated `invalidate_*` / `populate_*` functions and of
/// [`invalidate_tag`](crate::invalidate_tag). Call it once, at start-up.
///
/// ```
/// use cache_runtime::edge::{self, Edge, FnPurger, PurgeBatch, PurgeError};
/// # fn main() -> Result<(), cache_runtime::edge::EdgeError> {
/// // With the `edge` feature, typically:
/// //     .purger(HttpPurger::builder("http://127.0.0.1:6081").host("www.example.com").build()?)
/// //     .purger(SurrogateKeyPurger::xkey("http://127.0.0.1:6081").build()?)
/// edge::install(
///     Edge::builder()
///         .purger(FnPurger::new("log", |b: &PurgeBatch| {
///             println!("purge {:?} {:?}", b.paths(), b.tags());
///             Ok::<(), PurgeError>(())
///         }))
///         .build(),
/// )?;
/// assert!(edge::configured());
/// # Ok(()) }
/// ```
pub fn install(edge: Edge) -> Result<(), EdgeError> {
    INSTALLED.set(edge).map_err(|_| EdgeError::AlreadyInstalled)
}

/// Whether an edge is installed (or configured from `CACHE_EDGE_PURGE_URL`, which this reads
/// if nothing was installed): whether purges go anywhere.
///
/// ```
/// // Without `install` and without CACHE_EDGE_PURGE_URL:
/// if std::env::var_os("CACHE_EDGE_PURGE_URL").is_none() {
///     assert!(!cache_runtime::edge::configured());
/// }
/// ```
pub fn configured() -> bool {
    global().is_some()
}

/// Enqueues purges of these URL paths at every configured edge. Never blocks, never fails;
/// a no-op when no edge is configured.
///
/// ```
/// cache_runtime::edge::enqueue_paths(vec!["/users/1".to_string()]);
/// ```
pub fn enqueue_paths(paths: Vec<String>) {
    if let Some(edge) = global() {
        edge.enqueue_paths(paths);
    }
}

/// Enqueues purges of these surrogate keys (tags) at every configured edge. Never blocks,
/// never fails; a no-op when no edge is configured.
///
/// ```
/// cache_runtime::edge::enqueue_tags(vec!["user:1".to_string()]);
/// ```
pub fn enqueue_tags(tags: Vec<String>) {
    if let Some(edge) = global() {
        edge.enqueue_tags(tags);
    }
}

/// The installed edge's counters (all zero when none is).
///
/// ```
/// let s = cache_runtime::edge::stats();
/// assert!(s.sent <= s.enqueued);
/// ```
pub fn stats() -> EdgeStats {
    INSTALLED.get().map(Edge::stats).unwrap_or_default()
}

/// Waits until every purge enqueued before the call was sent or given up on, for at most
/// `timeout`; `true` if so (and when no edge is installed). For tests and graceful shutdown.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert!(cache_runtime::edge::flush(std::time::Duration::from_secs(1)).await);
/// # }
/// ```
pub async fn flush(timeout: Duration) -> bool {
    match INSTALLED.get() {
        Some(edge) => edge.flush(timeout).await,
        None => true,
    }
}

/// Blocking [`flush`]. Do not call it on an async runtime's thread.
///
/// ```
/// assert!(cache_runtime::edge::flush_blocking(std::time::Duration::from_secs(1)));
/// ```
pub fn flush_blocking(timeout: Duration) -> bool {
    match INSTALLED.get() {
        Some(edge) => edge.flush_blocking(timeout),
        None => true,
    }
}

/// Waits until the installed edge is idle, second purges included ([`Edge::flush_all`]), for
/// at most `timeout`; `true` if so (and when no edge is installed). For graceful shutdown,
/// once the service stopped taking writes.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert!(cache_runtime::edge::flush_all(std::time::Duration::from_secs(1)).await);
/// # }
/// ```
pub async fn flush_all(timeout: Duration) -> bool {
    match INSTALLED.get() {
        Some(edge) => edge.flush_all(timeout).await,
        None => true,
    }
}

/// Blocking [`flush_all`]. Do not call it on an async runtime's thread.
///
/// ```
/// assert!(cache_runtime::edge::flush_all_blocking(std::time::Duration::from_secs(1)));
/// ```
pub fn flush_all_blocking(timeout: Duration) -> bool {
    match INSTALLED.get() {
        Some(edge) => edge.flush_all_blocking(timeout),
        None => true,
    }
}

/// The configured edge's delay of second purges ([`EdgeBuilder::repurge_after`]): `None` when
/// no edge is configured (this reads `CACHE_EDGE_PURGE_URL` if nothing was installed) or
/// second purges are off. A service can use it to send `no-store` for responses too slow for
/// the second purge to cover.
///
/// ```
/// if std::env::var_os("CACHE_EDGE_PURGE_URL").is_none() {
///     assert_eq!(cache_runtime::edge::repurge_after(), None);
/// }
/// ```
pub fn repurge_after() -> Option<Duration> {
    global().and_then(Edge::repurge_after)
}

/// Percent-encodes what may not appear in an HTTP request target: control characters, space,
/// non-ASCII bytes (as UTF-8), and `"` `#` `<` `>` `\` `^` `` ` `` `{` `|` `}`. Everything
/// else, `%` included, is kept, so an already encoded path comes back unchanged (borrowed).
///
/// ```
/// use cache_runtime::edge::encode_path;
/// assert_eq!(encode_path("/users/42?x=1"), "/users/42?x=1");
/// assert_eq!(encode_path("/search/a b\n"), "/search/a%20b%0A");
/// assert_eq!(encode_path("/café"), "/caf%C3%A9");
/// assert_eq!(encode_path("/a%20b"), "/a%20b");
/// ```
pub fn encode_path(path: &str) -> Cow<'_, str> {
    percent_encode(path, |b| {
        b.is_ascii_graphic()
            && !matches!(
                b,
                b'"' | b'#' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
            )
    })
}

/// Encodes a surrogate key (tag) for `Surrogate-Key` / `xkey` headers, where keys are
/// separated by spaces (and commas, for Varnish's xkey): percent-encodes `%`, space, comma,
/// control characters and non-ASCII bytes (as UTF-8), so that every key becomes one token of
/// visible ASCII and distinct keys stay distinct. Keys of letters, digits and `:-_./` come
/// back unchanged (borrowed). The HTTP layer and the purgers both use it.
///
/// ```
/// use cache_runtime::edge::encode_surrogate_key;
/// assert_eq!(encode_surrogate_key("user:42"), "user:42");
/// assert_eq!(encode_surrogate_key("team a,b"), "team%20a%2Cb");
/// assert_eq!(encode_surrogate_key("100%"), "100%25");
/// assert_eq!(encode_surrogate_key("é\t"), "%C3%A9%09");
/// ```
pub fn encode_surrogate_key(key: &str) -> Cow<'_, str> {
    percent_encode(key, |b| b.is_ascii_graphic() && b != b'%' && b != b',')
}

fn percent_encode(s: &str, keep: impl Fn(u8) -> bool) -> Cow<'_, str> {
    if s.bytes().all(&keep) {
        return Cow::Borrowed(s);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
    Cow::Owned(out)
}

/// The edge described by `CACHE_EDGE_PURGE_URL` (and `CACHE_EDGE_PURGE_HOST`,
/// `CACHE_EDGE_REPURGE_MS`), if set.
fn from_env() -> Option<Edge> {
    let urls = std::env::var("CACHE_EDGE_PURGE_URL").ok()?;
    let host = std::env::var("CACHE_EDGE_PURGE_HOST").ok();
    let repurge = std::env::var("CACHE_EDGE_REPURGE_MS").ok();
    from_spec(
        &urls,
        host.as_deref().filter(|h| !h.is_empty()),
        repurge_from_env(repurge.as_deref()),
    )
}

/// `CACHE_EDGE_REPURGE_MS`: milliseconds (0: off); unset, empty or invalid: the default.
fn repurge_from_env(value: Option<&str>) -> Duration {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => DEFAULT_REPURGE_AFTER,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms),
            Err(_) => {
                tracing::warn!(
                    "cache_runtime: CACHE_EDGE_REPURGE_MS={v:?} is not a number of \
                     milliseconds; using {DEFAULT_REPURGE_AFTER:?}"
                );
                DEFAULT_REPURGE_AFTER
            }
        },
    }
}

#[cfg(feature = "edge")]
fn from_spec(urls: &str, host: Option<&str>, repurge: Duration) -> Option<Edge> {
    let mut builder = Edge::builder().repurge_after(repurge);
    let mut any = false;
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let mut paths = HttpPurger::builder(url);
        let mut keys = SurrogateKeyPurger::xkey(url);
        if let Some(h) = host {
            paths = paths.host(h);
            keys = keys.host(h);
        }
        match (paths.build(), keys.build()) {
            (Ok(p), Ok(k)) => {
                builder = builder.purger(p).purger(k);
                any = true;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("cache_runtime: CACHE_EDGE_PURGE_URL: skipping {url:?}: {e}");
            }
        }
    }
    any.then(|| builder.build())
}

#[cfg(not(feature = "edge"))]
fn from_spec(urls: &str, _host: Option<&str>, _repurge: Duration) -> Option<Edge> {
    if !urls.trim().is_empty() {
        tracing::warn!(
            "cache_runtime: CACHE_EDGE_PURGE_URL is set, but cache-runtime was built without \
             its `edge` feature: edge purges are disabled"
        );
    }
    None
}

#[cfg(test)]
mod tests;
