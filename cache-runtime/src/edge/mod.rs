//! CDN / edge purge (layer 4): when a cached value changes, the pages built from it are purged
//! at every configured edge cache: Varnish, Cloudflare, Fastly, CloudFront, or any [`Purger`].
//!
//! The generated `invalidate_*`, `populate_*` and `refresh_*` functions of a
//! `#[cached(..., purge = ["/users/<id>"])]` function call [`enqueue_paths`], and
//! [`invalidate_tag`](crate::invalidate_tag) calls [`enqueue_tags`]. Both only put the items in
//! a bounded in-memory queue and return: the purges are sent by a background worker (its own
//! thread and one-thread Tokio runtime, so callers need no runtime), in deduplicated batches,
//! by every configured [`Purger`], with bounded retries, exponential backoff, and waits for a
//! rate limit's `Retry-After`. A full queue never blocks a caller and never drops a purge: it
//! folds the waiting items into one purge of everything ([`PurgeBatch::everything`], counted
//! in [`EdgeStats::folded`]). Failures are counted, logged and reported per purger by
//! [`health`] (refused credentials included), never returned to the caller.
//!
//! Every item is purged a second time, [`repurge_after`](EdgeBuilder::repurge_after) (1 s by
//! default) after its first purge: a fetch by the edge that started before the write can
//! deliver the old response after the first purge, and the edge would keep it for its whole
//! `s-maxage`. [`EdgeStats`] counts the second purges (`repurged`) and reports how long purges
//! take from enqueue to acknowledgement (`latency_p50`, `latency_p99`, `latency_max`).
//!
//! Configure the edge once at start-up with [`install`], or from the environment (with the
//! `edge` cargo feature): `CACHE_EDGE` names the edges (`varnish`, `cloudflare`, `fastly`,
//! `cloudfront`, several at once), each with its variables, e.g. `CACHE_EDGE_PURGE_URL` for
//! Varnish (a comma-separated list of base URLs; each gets an `HttpPurger` and a
//! `SurrogateKeyPurger::xkey`, what `deploy/varnish/cache-toolkit.vcl` understands), or
//! `CACHE_EDGE_CLOUDFLARE_ZONE` / `CACHE_EDGE_CLOUDFLARE_TOKEN` / `CACHE_EDGE_SITE_URL`.
//! Without `CACHE_EDGE`, a set `CACHE_EDGE_PURGE_URL` means Varnish. `CACHE_EDGE_REPURGE_MS`
//! sets the delay of the second purge (1000 by default; 0 turns it off). The variables are
//! read once, on the first enqueue, if nothing was installed before; secrets are never logged.
//! With no edge, every function here is a no-op. `docs/EDGE.md` lists every variable and each
//! CDN's limits.
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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Once, OnceLock};
use std::time::Duration;

mod batch;
mod builder;
mod encode;
mod env;
mod worker;

#[cfg(feature = "edge")]
mod client;
#[cfg(feature = "edge")]
mod cloudflare;
#[cfg(feature = "edge")]
mod cloudfront;
#[cfg(feature = "edge")]
mod fastly;
#[cfg(feature = "edge")]
mod http;

pub use batch::{PurgeBatch, PurgeError};
pub use builder::EdgeBuilder;
pub(crate) use builder::Settings;
pub use encode::{encode_path, encode_surrogate_key};

#[cfg(feature = "edge")]
pub use cloudflare::{CloudflarePurger, CloudflarePurgerBuilder};
#[cfg(feature = "edge")]
pub use cloudfront::{CloudFrontPurger, CloudFrontPurgerBuilder};
#[cfg(feature = "edge")]
pub use fastly::{FastlyPurger, FastlyPurgerBuilder};
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
    /// A CDN purger lacks a setting it needs (a zone, a token, a service or distribution
    /// id, credentials), or `CACHE_EDGE` names an unknown CDN.
    #[error("edge configuration: {0}")]
    Config(String),
}

/// Counters of an [`Edge`], in items (one path or one tag).
///
/// Every accepted item is counted in `enqueued`, and ends up in exactly one of `coalesced` (it
/// was already waiting in the queue), `sent` (every purger purged it), `failed` (some purger
/// gave up on it) or, meanwhile, `pending`: `enqueued == coalesced + sent + failed + pending`.
/// When the queue is full, the waiting items and the new ones are *folded* into one purge of
/// everything ([`PurgeBatch::everything`]) rather than dropped: they are counted in `folded`
/// and `coalesced`, the purge of everything in `enqueued`, so the equation holds and no write
/// is left stale at the edge.
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
    /// Items refused because the queue was full. Full queues fold instead (see `folded`), so
    /// this stays 0; kept for dashboards that read it.
    pub dropped: u64,
    /// Items folded into a purge of everything because the queue (or the delay queue of
    /// second purges) was full.
    pub folded: u64,
    /// Purges of everything sent (one per fold that reached the edge).
    pub purged_everything: u64,
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
        EdgeBuilder::new()
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

    /// Each purger's state: its last error and whether the edge refused its credentials, so
    /// that a health check can report a purger that fails (e.g. a revoked API token) instead
    /// of counters slowly growing.
    ///
    /// ```
    /// use cache_runtime::edge::{Edge, FnPurger, PurgeBatch, PurgeError};
    /// use std::time::Duration;
    /// let edge = Edge::builder()
    ///     .purger(FnPurger::new("cdn", |_: &PurgeBatch| {
    ///         Err::<(), _>(PurgeError::unauthorized("401 Unauthorized: invalid token"))
    ///     }))
    ///     .repurge_after(Duration::ZERO)
    ///     .build();
    /// edge.enqueue_paths(["/a"]);
    /// assert!(edge.flush_blocking(Duration::from_secs(5)));
    /// let h = &edge.health()[0];
    /// assert_eq!(h.name, "cdn");
    /// assert!(h.unauthorized && !h.healthy());
    /// assert!(h.last_error.as_deref().unwrap().contains("invalid token"));
    /// ```
    pub fn health(&self) -> Vec<PurgerHealth> {
        self.worker.health()
    }
}

/// One purger's state, from [`Edge::health`] / [`health`].
///
/// ```
/// let h = cache_runtime::edge::PurgerHealth::default();
/// assert!(h.healthy());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgerHealth {
    /// The purger's [name](Purger::name).
    pub name: String,
    /// Whether its last attempt failed because the edge refused the credentials
    /// ([`PurgeError::unauthorized`]); cleared by the next success.
    pub unauthorized: bool,
    /// Attempts that failed since its last success.
    pub consecutive_failures: u64,
    /// Its last error message (never the credentials), cleared by the next success.
    pub last_error: Option<String>,
}

impl PurgerHealth {
    /// No failure since the last success.
    ///
    /// ```
    /// assert!(cache_runtime::edge::PurgerHealth::default().healthy());
    /// ```
    pub fn healthy(&self) -> bool {
        self.consecutive_failures == 0
    }
}

/// The installed edge's purgers' state ([`Edge::health`]); empty when no edge is installed.
///
/// ```
/// assert!(cache_runtime::edge::health().iter().all(|h| !h.name.is_empty()));
/// ```
pub fn health() -> Vec<PurgerHealth> {
    INSTALLED.get().map(Edge::health).unwrap_or_default()
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
        if let Some(edge) = env::from_env() {
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

/// Purges of these URL paths, enqueued (as [`enqueue_paths`]) when this is dropped. A
/// generated `invalidate_*`, `populate_*` or `refresh_*` with `purge = [...]` holds one across
/// its cache write and drops it after: the purge follows the write, and a caller cancelled
/// during the write (a client disconnect, a `timeout` around the call; the write itself is
/// then kept and retried) still purges the edge instead of losing the purge with its future.
///
/// ```
/// let purge = cache_runtime::edge::PurgeOnDrop::new(vec!["/users/1".to_string()]);
/// // ... the cache write ...
/// drop(purge); // enqueued here, or wherever the future holding it is dropped
/// ```
#[derive(Debug)]
#[must_use = "the purge is enqueued when this is dropped"]
pub struct PurgeOnDrop(Vec<String>);

impl PurgeOnDrop {
    /// Purges of `paths`, enqueued on drop.
    pub fn new(paths: Vec<String>) -> Self {
        Self(paths)
    }
}

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        enqueue_paths(std::mem::take(&mut self.0));
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

#[cfg(test)]
mod tests;
