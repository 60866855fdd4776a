//! The edge queue and its worker: a bounded, deduplicating FIFO of items drained in batches by
//! a task on a dedicated thread's one-thread Tokio runtime.
//!
//! Every accepted distinct item gets a sequence number. Batches are taken from the front of the
//! queue and finished one at a time, so "every item up to sequence number `n` is finished" is a
//! single watermark (`done`), which is what `flush` waits for. An item is deduplicated only
//! against items still *waiting*: once a batch is taken, a new request for the same path is
//! queued again, since the purge in flight may have reached the edge before the write that
//! prompted the new request.

use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{join_all, FutureExt};
use tokio::sync::{watch, Notify};

use super::{EdgeStats, PurgeBatch, PurgeError, Purger, Settings};
use crate::redis_tier::LogLimiter;

/// One thing to purge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Item {
    Path(String),
    Tag(String),
}

impl Item {
    fn is_empty(&self) -> bool {
        match self {
            Item::Path(s) | Item::Tag(s) => s.is_empty(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Item::Path(_) => "path",
            Item::Tag(_) => "tag",
        }
    }
}

#[derive(Default)]
struct Queue {
    /// Waiting items with their sequence numbers, oldest first.
    items: VecDeque<(u64, Item)>,
    /// The same items, for deduplication.
    waiting: HashSet<Item>,
    /// The last sequence number given out.
    last_seq: u64,
    /// Items of the batch being purged.
    in_flight: usize,
}

#[derive(Default)]
struct Counters {
    enqueued: AtomicU64,
    coalesced: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retried: AtomicU64,
}

struct Shared {
    purgers: Vec<Arc<dyn Purger>>,
    settings: Settings,
    queue: Mutex<Queue>,
    /// Wakes the worker when items arrive or the edge is dropped.
    wake: Notify,
    /// Every item with a sequence number up to this one is finished.
    done: watch::Sender<u64>,
    closed: AtomicBool,
    counters: Counters,
    drop_log: LogLimiter,
    fail_log: LogLimiter,
}

/// The handle an `Edge` owns; dropping it stops the worker.
pub(crate) struct Worker {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
}

impl Worker {
    pub(crate) fn start(purgers: Vec<Arc<dyn Purger>>, settings: Settings) -> Self {
        let shared = Arc::new(Shared {
            purgers,
            settings,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            done: watch::Sender::new(0),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            drop_log: LogLimiter::default(),
            fail_log: LogLimiter::default(),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let worker_shared = shared.clone();
        std::thread::Builder::new()
            .name("cache-runtime-edge".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cache-runtime: cannot build the edge purge runtime");
                let _ = tx.send(rt.handle().clone());
                rt.block_on(run(worker_shared));
            })
            .expect("cache-runtime: cannot spawn the edge purge thread");
        let handle = rx
            .recv()
            .expect("cache-runtime: the edge purge thread died at start");
        Self { shared, handle }
    }

    pub(crate) fn enqueue(&self, items: impl Iterator<Item = Item>) {
        let s = &self.shared;
        let (mut accepted, mut coalesced, mut dropped) = (0u64, 0u64, 0u64);
        {
            let mut q = s.queue.lock().unwrap_or_else(|e| e.into_inner());
            for item in items {
                if item.is_empty() {
                    continue;
                }
                if q.waiting.contains(&item) {
                    accepted += 1;
                    coalesced += 1;
                    metrics::counter!("cache_edge_purges_enqueued_total", "kind" => item.kind())
                        .increment(1);
                } else if q.items.len() >= s.settings.capacity {
                    dropped += 1;
                } else {
                    accepted += 1;
                    metrics::counter!("cache_edge_purges_enqueued_total", "kind" => item.kind())
                        .increment(1);
                    q.last_seq += 1;
                    let seq = q.last_seq;
                    q.waiting.insert(item.clone());
                    q.items.push_back((seq, item));
                }
            }
            if accepted > coalesced {
                metrics::gauge!("cache_edge_purges_pending")
                    .set((q.items.len() + q.in_flight) as f64);
            }
        }
        s.counters.enqueued.fetch_add(accepted, Relaxed);
        if coalesced > 0 {
            s.counters.coalesced.fetch_add(coalesced, Relaxed);
            metrics::counter!("cache_edge_purges_coalesced_total").increment(coalesced);
        }
        if dropped > 0 {
            s.counters.dropped.fetch_add(dropped, Relaxed);
            metrics::counter!("cache_edge_purges_dropped_total").increment(dropped);
            s.drop_log.warn(
                "edge purge",
                &format!(
                    "queue full ({} items): dropped {dropped} purge(s); the edge may serve \
                     stale pages until they expire",
                    s.settings.capacity
                ),
            );
        }
        if accepted > coalesced {
            s.wake.notify_one();
        }
    }

    pub(crate) fn stats(&self) -> EdgeStats {
        let c = &self.shared.counters;
        let pending = {
            let q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            (q.items.len() + q.in_flight) as u64
        };
        EdgeStats {
            enqueued: c.enqueued.load(Relaxed),
            coalesced: c.coalesced.load(Relaxed),
            sent: c.sent.load(Relaxed),
            failed: c.failed.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            retried: c.retried.load(Relaxed),
            pending,
        }
    }

    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        let target = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_seq;
        let mut done = self.shared.done.subscribe();
        if *done.borrow() >= target {
            return true;
        }
        // The timer runs on the worker's runtime, so any executor can await this.
        let wait = self.handle.spawn(async move {
            tokio::time::timeout(timeout, done.wait_for(|d| *d >= target))
                .await
                .is_ok_and(|r| r.is_ok())
        });
        wait.await.unwrap_or(false)
    }

    pub(crate) fn purger_names(&self) -> Vec<String> {
        self.shared
            .purgers
            .iter()
            .map(|p| p.name().to_string())
            .collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.closed.store(true, Relaxed);
        self.shared.wake.notify_one();
    }
}

async fn run(shared: Arc<Shared>) {
    loop {
        let (last_seq, batch) = loop {
            if shared.closed.load(Relaxed) {
                return;
            }
            if let Some(b) = take_batch(&shared) {
                break b;
            }
            // `notify_one` stores a permit when nobody waits, so a wake-up between the check
            // above and this await is not lost.
            shared.wake.notified().await;
        };
        let failed = purge_everywhere(&shared, &batch).await;
        let n = batch.len() as u64;
        let failed_n = failed.len() as u64;
        shared.counters.sent.fetch_add(n - failed_n, Relaxed);
        shared.counters.failed.fetch_add(failed_n, Relaxed);
        metrics::counter!("cache_edge_purges_sent_total").increment(n - failed_n);
        if failed_n > 0 {
            metrics::counter!("cache_edge_purges_failed_total").increment(failed_n);
        }
        let pending = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.in_flight = 0;
            q.items.len()
        };
        metrics::gauge!("cache_edge_purges_pending").set(pending as f64);
        shared.done.send_modify(|d| *d = (*d).max(last_seq));
    }
}

/// Takes up to `max_batch` items from the front of the queue.
fn take_batch(shared: &Shared) -> Option<(u64, PurgeBatch)> {
    let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    if q.items.is_empty() {
        return None;
    }
    let (mut paths, mut tags, mut last) = (Vec::new(), Vec::new(), 0);
    while paths.len() + tags.len() < shared.settings.max_batch {
        let Some((seq, item)) = q.items.pop_front() else {
            break;
        };
        q.waiting.remove(&item);
        last = seq;
        match item {
            Item::Path(p) => paths.push(p),
            Item::Tag(t) => tags.push(t),
        }
    }
    q.in_flight = paths.len() + tags.len();
    Some((last, PurgeBatch::from_distinct(paths, tags)))
}

/// Sends the batch to every purger concurrently; returns the items some purger gave up on.
async fn purge_everywhere(shared: &Shared, batch: &PurgeBatch) -> HashSet<Item> {
    let results = join_all(
        shared
            .purgers
            .iter()
            .map(|p| purge_with_retries(shared, p.as_ref(), batch)),
    )
    .await;
    let mut failed = HashSet::new();
    for left in results.into_iter().flatten() {
        failed.extend(left.paths().iter().cloned().map(Item::Path));
        failed.extend(left.tags().iter().cloned().map(Item::Tag));
    }
    failed
}

/// One purger's attempts on one batch; `Some(items)` it gave up on.
async fn purge_with_retries(
    shared: &Shared,
    purger: &dyn Purger,
    batch: &PurgeBatch,
) -> Option<PurgeBatch> {
    let settings = &shared.settings;
    let mut todo = batch.clone();
    let mut attempt = 0u32;
    let error = loop {
        let outcome = call(purger, &todo, settings.timeout).await;
        let e = match outcome {
            Ok(()) => return None,
            Err(e) => e,
        };
        metrics::counter!("cache_edge_purge_errors_total", "purger" => purger.name().to_string())
            .increment(1);
        if let Some(items) = e.items() {
            let left = todo.intersect(items);
            if left.is_empty() {
                // The purger blamed none of the items it was given: treat it as a success
                // rather than retrying nothing.
                return None;
            }
            todo = left;
        }
        if !e.is_retryable() || attempt >= settings.retries {
            break e;
        }
        tokio::time::sleep(backoff(settings, attempt)).await;
        attempt += 1;
        shared.counters.retried.fetch_add(1, Relaxed);
        metrics::counter!("cache_edge_purge_retries_total", "purger" => purger.name().to_string())
            .increment(1);
    };
    let tries = attempt + 1;
    shared.fail_log.warn(
        "edge purge",
        &format!(
            "{}: gave up on {} item(s) after {tries} attempt(s): {error}",
            purger.name(),
            todo.len(),
        ),
    );
    Some(todo)
}

/// One purger call, bounded by `timeout`; a panic (in `purge` or in its future) is a
/// permanent error, so a buggy purger cannot take the worker down.
async fn call(
    purger: &dyn Purger,
    batch: &PurgeBatch,
    timeout: Duration,
) -> Result<(), PurgeError> {
    let panicked = |_| PurgeError::permanent(format!("purger {:?} panicked", purger.name()));
    let future =
        std::panic::catch_unwind(AssertUnwindSafe(|| purger.purge(batch))).map_err(panicked)?;
    match tokio::time::timeout(timeout, AssertUnwindSafe(future).catch_unwind()).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(panicked(panic)),
        Err(_) => Err(PurgeError::transient(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

/// `backoff × 2^attempt`, capped, plus up to 25 % jitter.
fn backoff(settings: &Settings, attempt: u32) -> Duration {
    let base = settings
        .backoff
        .saturating_mul(1u32 << attempt.min(20))
        .min(settings.max_backoff);
    let jitter_range = base.as_nanos() as u64 / 4;
    let jitter = if jitter_range == 0 {
        0
    } else {
        pseudo_random() % jitter_range
    };
    base + Duration::from_nanos(jitter)
}

/// Good enough for jitter: the clock's nanoseconds, mixed.
fn pseudo_random() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let n = START.get_or_init(Instant::now).elapsed().as_nanos() as u64;
    let mut x = n ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Settings {
            capacity: 1,
            retries: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            timeout: Duration::from_secs(1),
            max_batch: 1,
        };
        let within = |d: Duration, base: u64| {
            d >= Duration::from_millis(base) && d <= Duration::from_millis(base + base / 4)
        };
        assert!(within(backoff(&s, 0), 100));
        assert!(within(backoff(&s, 1), 200));
        assert!(within(backoff(&s, 2), 350));
        assert!(within(backoff(&s, 30), 350));
    }
}
