//! [`EdgeBuilder`]: the purgers, queue bound, retries and second purge of an [`Edge`].

use std::sync::Arc;
use std::time::Duration;

use super::{worker::Worker, Edge, Purger};

/// The defaults of [`EdgeBuilder`].
const DEFAULT_CAPACITY: usize = 10_000;
const DEFAULT_RETRIES: u32 = 3;
const DEFAULT_BACKOFF: Duration = Duration::from_millis(100);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_BATCH: usize = 256;
pub(super) const DEFAULT_REPURGE_AFTER: Duration = Duration::from_secs(1);
const DEFAULT_RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(60);

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
    pub rate_limit_patience: Duration,
}

impl EdgeBuilder {
    pub(super) fn new() -> Self {
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
                rate_limit_patience: DEFAULT_RATE_LIMIT_PATIENCE,
            },
        }
    }

    /// How long one purger may keep a batch waiting on rate limits (default 60 s): a
    /// [rate-limited](super::PurgeError::rate_limited) answer is retried after its `Retry-After`
    /// without using up one of the [`retries`](Self::retries) as long as the waits add up to
    /// less than this. Meanwhile new purges queue up (and fold when the queue is full), so a
    /// rate-limit storm delays purges but loses none.
    ///
    /// ```
    /// use std::time::Duration;
    /// let _ = cache_runtime::edge::Edge::builder().rate_limit_patience(Duration::from_secs(300));
    /// ```
    pub fn rate_limit_patience(mut self, patience: Duration) -> Self {
        self.settings.rate_limit_patience = patience;
        self
    }

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

    /// How many distinct items may wait in the queue (default 10 000). When it is full, the
    /// waiting items and new ones are folded into one purge of everything
    /// ([`PurgeBatch::everything`](super::PurgeBatch::everything), counted in
    /// [`EdgeStats::folded`](super::EdgeStats::folded)): memory stays bounded and no write is
    /// left stale at the edge. The batch being purged does not count.
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
    /// [`capacity`](Self::capacity) (past it, they fold into one purge of everything). [`Edge::flush`] does not
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

    /// Starts the edge: its worker thread and runtime. Install it with
    /// [`install`](super::install), or use it directly through its methods.
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
