//! The edge queue and its worker: a bounded, deduplicating FIFO of items drained in batches by
//! a task on a dedicated thread's one-thread Tokio runtime.
//!
//! Every accepted distinct item gets a sequence number. Batches are taken from the front of the
//! queue and finished one at a time, so "every item up to sequence number `n` is finished" is a
//! single watermark (`done`), which is what `flush` waits for. An item is deduplicated only
//! against items still *waiting*: once a batch is taken, a new request for the same path is
//! queued again, since the purge in flight may have reached the edge before the write that
//! prompted the new request.
//!
//! Second purges ([`Settings::repurge_after`]) wait in a delay queue of the same lock: when a
//! batch is finished, each of its first purges is scheduled once, `repurge_after` later. All
//! delays are equal and batches finish in order, so the delay queue is a FIFO sorted by due
//! time; one entry per item is current (`delayed_due`): scheduling an item that is already
//! scheduled moves it to the later time (the older entry is skipped when it reaches the front),
//! which covers both writes. The worker sleeps until the earliest due time or a wake-up, moves
//! what is due to the back of the main queue (as second purges, which are not purged again)
//! and carries on: no timer or thread per item.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{join_all, FutureExt};
use tokio::sync::{watch, Notify};

use backon::{BackoffBuilder, ExponentialBuilder};

use super::{EdgeStats, PurgeBatch, PurgeError, Purger, PurgerHealth, Settings};
use crate::log_limit::LogLimiter;
use crate::metrics_shim as metrics;

/// One thing to purge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Item {
    Path(String),
    Tag(String),
    /// Everything the edge caches: what a full queue folds into.
    Everything,
}

impl Item {
    fn is_empty(&self) -> bool {
        match self {
            Item::Path(s) | Item::Tag(s) => s.is_empty(),
            Item::Everything => false,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Item::Path(_) => "path",
            Item::Tag(_) => "tag",
            Item::Everything => "everything",
        }
    }
}

/// A waiting item: its sequence number, the item, and when it was enqueued.
struct Waiting {
    seq: u64,
    item: Item,
    since: Instant,
}

#[derive(Default)]
struct Queue {
    /// Waiting items, oldest first.
    items: VecDeque<Waiting>,
    /// The same items, for deduplication, each with whether it is a first purge (purged again
    /// after `repurge_after`, and timed) rather than a second one.
    waiting: HashMap<Item, bool>,
    /// The last sequence number given out.
    last_seq: u64,
    /// Items of the batch being purged.
    in_flight: usize,
    /// Second purges by due time (non-decreasing); entries whose due time is not the item's
    /// current one in `delayed_due` were rescheduled and are skipped.
    delayed: VecDeque<(Instant, Item)>,
    /// The current due time of every scheduled second purge.
    delayed_due: HashMap<Item, Instant>,
}

/// One item of the batch being purged.
struct Taken {
    item: Item,
    since: Instant,
    first: bool,
}

/// How many recent enqueue → purged times the percentiles are computed from.
const LATENCY_SAMPLES: usize = 4096;

/// The most recent enqueue → purged times (µs), in a ring, and the longest since the start.
#[derive(Default)]
struct Latencies {
    ring: Mutex<(Vec<u32>, usize)>,
    max_us: AtomicU64,
}

impl Latencies {
    fn record(&self, samples: &[Duration]) {
        if samples.is_empty() {
            return;
        }
        let mut max = 0;
        {
            let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            let (v, next) = &mut *ring;
            for d in samples {
                let us = d.as_micros().min(u128::from(u32::MAX)) as u32;
                max = max.max(u64::from(us));
                if v.len() < LATENCY_SAMPLES {
                    v.push(us);
                } else {
                    v[*next] = us;
                }
                *next = (*next + 1) % LATENCY_SAMPLES;
            }
        }
        self.max_us.fetch_max(max, Relaxed);
        let h = metrics::histogram!("cache_edge_purge_latency_seconds");
        for d in samples {
            h.record(d.as_secs_f64());
        }
    }

    /// p50, p99 of the ring and the maximum since the start.
    fn summary(&self) -> (Duration, Duration, Duration) {
        let mut v = self
            .ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone();
        if v.is_empty() {
            return Default::default();
        }
        v.sort_unstable();
        let at = |q: f64| {
            Duration::from_micros(u64::from(v[((v.len() - 1) as f64 * q).round() as usize]))
        };
        (
            at(0.50),
            at(0.99),
            Duration::from_micros(self.max_us.load(Relaxed)),
        )
    }
}

#[derive(Default)]
struct Counters {
    enqueued: AtomicU64,
    coalesced: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retried: AtomicU64,
    repurged: AtomicU64,
    folded: AtomicU64,
    purged_everything: AtomicU64,
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
    latencies: Latencies,
    /// One per purger, in the same order.
    health: Vec<Mutex<PurgerHealth>>,
    fold_log: LogLimiter,
    fail_log: LogLimiter,
}

/// The handle an `Edge` owns; dropping it stops the worker.
pub(crate) struct Worker {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
}

impl Worker {
    pub(crate) fn start(purgers: Vec<Arc<dyn Purger>>, settings: Settings) -> Self {
        let health = purgers
            .iter()
            .map(|p| {
                Mutex::new(PurgerHealth {
                    name: p.name().to_string(),
                    ..PurgerHealth::default()
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            health,
            purgers,
            settings,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            done: watch::Sender::new(0),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            latencies: Latencies::default(),
            fold_log: LogLimiter::default(),
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
        let (mut accepted, mut coalesced) = (0u64, 0u64);
        {
            let now = Instant::now();
            let mut q = s.queue.lock().unwrap_or_else(|e| e.into_inner());
            for item in items {
                if item.is_empty() {
                    continue;
                }
                accepted += 1;
                metrics::counter!("cache_edge_purges_enqueued_total", "kind" => item.kind())
                    .increment(1);
                if let Some(first) = q.waiting.get_mut(&Item::Everything) {
                    // A waiting purge of everything covers it (and, like any item written
                    // meanwhile, gets a second purge).
                    *first = true;
                    coalesced += 1;
                    s.counters.folded.fetch_add(1, Relaxed);
                } else if let Some(first) = q.waiting.get_mut(&item) {
                    // A waiting second purge becomes a first one: it is purged again later.
                    *first = true;
                    coalesced += 1;
                } else if q.items.len() >= s.settings.capacity {
                    fold(s, &mut q, now);
                    coalesced += 1;
                    s.counters.folded.fetch_add(1, Relaxed);
                    metrics::counter!("cache_edge_purges_folded_total").increment(1);
                } else {
                    push(&mut q, item, true, now);
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
        if accepted > 0 {
            s.wake.notify_one();
        }
    }

    pub(crate) fn stats(&self) -> EdgeStats {
        let c = &self.shared.counters;
        let (pending, delayed) = {
            let q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            (
                (q.items.len() + q.in_flight) as u64,
                q.delayed_due.len() as u64,
            )
        };
        let (latency_p50, latency_p99, latency_max) = self.shared.latencies.summary();
        EdgeStats {
            enqueued: c.enqueued.load(Relaxed),
            coalesced: c.coalesced.load(Relaxed),
            sent: c.sent.load(Relaxed),
            failed: c.failed.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            retried: c.retried.load(Relaxed),
            pending,
            repurged: c.repurged.load(Relaxed),
            folded: c.folded.load(Relaxed),
            purged_everything: c.purged_everything.load(Relaxed),
            delayed,
            latency_p50,
            latency_p99,
            latency_max,
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

    /// Waits until nothing is waiting, being purged or scheduled for a second purge.
    pub(crate) async fn flush_all(&self, timeout: Duration) -> bool {
        let shared = self.shared.clone();
        if idle(&shared) {
            return true;
        }
        let mut done = self.shared.done.subscribe();
        // Every path to idleness ends with a finished batch, which notifies `done`.
        let wait = self.handle.spawn(async move {
            tokio::time::timeout(timeout, done.wait_for(|_| idle(&shared)))
                .await
                .is_ok_and(|r| r.is_ok())
        });
        wait.await.unwrap_or(false)
    }

    pub(crate) fn repurge_after(&self) -> Option<Duration> {
        self.shared.settings.repurge_after
    }

    pub(crate) fn health(&self) -> Vec<PurgerHealth> {
        self.shared
            .health
            .iter()
            .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
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

fn idle(shared: &Shared) -> bool {
    let q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    q.items.is_empty() && q.in_flight == 0 && q.delayed_due.is_empty()
}

/// Appends a new (not waiting) item to the queue.
fn push(q: &mut Queue, item: Item, first: bool, now: Instant) {
    q.last_seq += 1;
    let seq = q.last_seq;
    q.waiting.insert(item.clone(), first);
    q.items.push_back(Waiting {
        seq,
        item,
        since: now,
    });
}

/// Replaces every waiting item by one purge of everything, which covers them: the queue's
/// memory stays bounded and no purge is lost. The folded items count as coalesced.
fn fold(s: &Shared, q: &mut Queue, now: Instant) {
    let n = q.items.len() as u64;
    let since = q.items.front().map_or(now, |w| w.since);
    q.items.clear();
    q.waiting.clear();
    push(q, Item::Everything, true, since);
    let c = &s.counters;
    c.enqueued.fetch_add(1, Relaxed);
    c.coalesced.fetch_add(n, Relaxed);
    c.folded.fetch_add(n, Relaxed);
    metrics::counter!("cache_edge_purges_enqueued_total", "kind" => "everything").increment(1);
    metrics::counter!("cache_edge_purges_coalesced_total").increment(n);
    metrics::counter!("cache_edge_purges_folded_total").increment(n);
    s.fold_log.warn(
        "edge purge",
        &format!(
            "queue full ({} items): folded the waiting purges into one purge of everything",
            s.settings.capacity
        ),
    );
}

async fn run(shared: Arc<Shared>) {
    while let Some((last_seq, taken, batch)) = next_batch(&shared).await {
        let failed = purge_everywhere(&shared, &batch).await;
        finish_batch(&shared, taken, &failed);
        shared.done.send_modify(|d| *d = (*d).max(last_seq));
    }
}

/// Waits for the next batch (promoting due second purges); `None` once the edge is dropped.
async fn next_batch(shared: &Shared) -> Option<(u64, Vec<Taken>, PurgeBatch)> {
    loop {
        if shared.closed.load(Relaxed) {
            return None;
        }
        let next_due = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            promote_due(shared, &mut q, Instant::now());
            if let Some(b) = take_batch(shared, &mut q) {
                return Some(b);
            }
            q.delayed.front().map(|(due, _)| *due)
        };
        // `notify_one` stores a permit when nobody waits, so a wake-up between the check
        // above and this await is not lost.
        match next_due {
            Some(due) => {
                // Whichever comes first (no `tokio::select!`: tokio's `macros` feature is
                // not in the local-only build).
                let woken = std::pin::pin!(shared.wake.notified());
                let due = std::pin::pin!(tokio::time::sleep_until(due.into()));
                futures_util::future::select(woken, due).await;
            }
            None => shared.wake.notified().await,
        }
    }
}

/// Counts a finished batch, records its latencies and schedules its second purges.
fn finish_batch(shared: &Shared, taken: Vec<Taken>, failed: &HashSet<Item>) {
    let finished = Instant::now();
    let c = &shared.counters;
    let n = taken.len() as u64;
    let failed_n = failed.len() as u64;
    c.sent.fetch_add(n - failed_n, Relaxed);
    c.failed.fetch_add(failed_n, Relaxed);
    metrics::counter!("cache_edge_purges_sent_total").increment(n - failed_n);
    if failed_n > 0 {
        metrics::counter!("cache_edge_purges_failed_total").increment(failed_n);
    }
    if taken.iter().any(|t| t.item == Item::Everything) && !failed.contains(&Item::Everything) {
        c.purged_everything.fetch_add(1, Relaxed);
    }
    // Enqueue → purged everywhere, for first purges (a second purge's wait is by design).
    let latencies: Vec<Duration> = taken
        .iter()
        .filter(|t| t.first && !failed.contains(&t.item))
        .map(|t| finished.saturating_duration_since(t.since))
        .collect();
    shared.latencies.record(&latencies);
    let (pending, delayed) = {
        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.in_flight = 0;
        if let Some(after) = shared.settings.repurge_after {
            let due = finished + after;
            for t in taken.into_iter().filter(|t| t.first) {
                schedule(shared, &mut q, t.item, due);
            }
        }
        (q.items.len(), q.delayed_due.len())
    };
    metrics::gauge!("cache_edge_purges_pending").set(pending as f64);
    metrics::gauge!("cache_edge_purges_delayed").set(delayed as f64);
}

/// Schedules a second purge of `item` at `due` (moving an earlier one there). When the delay
/// queue is full, its second purges fold into one second purge of everything at `due`.
fn schedule(shared: &Shared, q: &mut Queue, item: Item, due: Instant) {
    let capacity = shared.settings.capacity;
    if let Some(everything) = q.delayed_due.get_mut(&Item::Everything) {
        // A later purge of everything covers it (every entry is due no later than `due`).
        *everything = due;
        q.delayed.push_back((due, Item::Everything));
        shared.counters.folded.fetch_add(1, Relaxed);
        return;
    }
    if !q.delayed_due.contains_key(&item) && q.delayed_due.len() >= capacity {
        let n = q.delayed_due.len() as u64 + 1;
        q.delayed.clear();
        q.delayed_due.clear();
        q.delayed_due.insert(Item::Everything, due);
        q.delayed.push_back((due, Item::Everything));
        shared.counters.folded.fetch_add(n, Relaxed);
        metrics::counter!("cache_edge_purges_folded_total").increment(n);
        return;
    }
    q.delayed_due.insert(item.clone(), due);
    q.delayed.push_back((due, item));
    if q.delayed.len() > 2 * capacity + 64 {
        // Many reschedules: drop the superseded entries.
        let current = &q.delayed_due;
        let kept: VecDeque<_> = std::mem::take(&mut q.delayed)
            .into_iter()
            .filter(|(due, item)| current.get(item) == Some(due))
            .collect();
        q.delayed = kept;
    }
}

/// Moves the second purges due by `now` to the back of the queue (folding it when full).
fn promote_due(shared: &Shared, q: &mut Queue, now: Instant) {
    let (mut moved, mut coalesced) = (0u64, 0u64);
    while let Some((due, _)) = q.delayed.front() {
        if *due > now {
            break;
        }
        let (due, item) = q.delayed.pop_front().expect("a front entry");
        if q.delayed_due.get(&item) != Some(&due) {
            continue; // rescheduled later
        }
        q.delayed_due.remove(&item);
        moved += 1;
        if q.waiting.contains_key(&item) || q.waiting.contains_key(&Item::Everything) {
            coalesced += 1;
        } else if q.items.len() >= shared.settings.capacity {
            fold(shared, q, now);
            coalesced += 1;
            shared.counters.folded.fetch_add(1, Relaxed);
        } else {
            push(q, item, false, now);
        }
    }
    if moved == 0 {
        return;
    }
    let c = &shared.counters;
    c.enqueued.fetch_add(moved, Relaxed);
    c.repurged.fetch_add(moved, Relaxed);
    c.coalesced.fetch_add(coalesced, Relaxed);
    metrics::counter!("cache_edge_purges_repurged_total").increment(moved);
    if coalesced > 0 {
        metrics::counter!("cache_edge_purges_coalesced_total").increment(coalesced);
    }
}

/// Takes up to `max_batch` items from the front of the queue.
fn take_batch(shared: &Shared, q: &mut Queue) -> Option<(u64, Vec<Taken>, PurgeBatch)> {
    if q.items.is_empty() {
        return None;
    }
    let (mut paths, mut tags, mut taken, mut last) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut everything = false;
    while taken.len() < shared.settings.max_batch {
        let Some(w) = q.items.pop_front() else {
            break;
        };
        let first = q.waiting.remove(&w.item).unwrap_or(true);
        last = w.seq;
        match &w.item {
            Item::Path(p) => paths.push(p.clone()),
            Item::Tag(t) => tags.push(t.clone()),
            Item::Everything => everything = true,
        }
        taken.push(Taken {
            item: w.item,
            since: w.since,
            first,
        });
    }
    q.in_flight = taken.len();
    Some((
        last,
        taken,
        PurgeBatch::from_distinct(paths, tags, everything),
    ))
}

/// Sends the batch to every purger concurrently; returns the items some purger gave up on.
async fn purge_everywhere(shared: &Shared, batch: &PurgeBatch) -> HashSet<Item> {
    let results = join_all(
        shared
            .purgers
            .iter()
            .zip(&shared.health)
            .map(|(p, h)| purge_with_retries(shared, p.as_ref(), h, batch)),
    )
    .await;
    let mut failed = HashSet::new();
    for left in results.into_iter().flatten() {
        failed.extend(left.paths().iter().cloned().map(Item::Path));
        failed.extend(left.tags().iter().cloned().map(Item::Tag));
        if left.is_everything() {
            failed.insert(Item::Everything);
        }
    }
    failed
}

/// One purger's attempts on one batch; `Some(items)` it gave up on.
///
/// Transient failures are retried after an exponential backoff with jitter (`backon`), at
/// most `retries` times; a rate limit's `Retry-After` is waited for without using up a retry
/// while those waits stay within `rate_limit_patience`.
async fn purge_with_retries(
    shared: &Shared,
    purger: &dyn Purger,
    health: &Mutex<PurgerHealth>,
    batch: &PurgeBatch,
) -> Option<PurgeBatch> {
    let settings = &shared.settings;
    let mut delays = backoff(settings);
    let mut todo = batch.clone();
    let (mut tries, mut rate_limited) = (0u32, Duration::ZERO);
    let error = loop {
        tries += 1;
        let e = match call(purger, &todo, settings.timeout).await {
            Ok(()) => {
                record(health, None);
                return None;
            }
            Err(e) => e,
        };
        record(health, Some(&e));
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
        if !e.is_retryable() {
            break e;
        }
        let wait = match e.retry_after() {
            Some(after) if rate_limited + after <= settings.rate_limit_patience => {
                rate_limited += after;
                after
            }
            after => match delays.next() {
                Some(d) => d.max(after.unwrap_or_default()),
                None => break e,
            },
        };
        tokio::time::sleep(wait).await;
        shared.counters.retried.fetch_add(1, Relaxed);
        metrics::counter!("cache_edge_purge_retries_total", "purger" => purger.name().to_string())
            .increment(1);
    };
    let message = format!("gave up on {} item(s) after {tries} attempt(s)", todo.len());
    shared.fail_log.warn_error(purger.name(), &message, &error);
    Some(todo)
}

/// Updates a purger's health after an attempt.
fn record(health: &Mutex<PurgerHealth>, error: Option<&PurgeError>) {
    let mut h = health.lock().unwrap_or_else(|e| e.into_inner());
    match error {
        None => {
            h.consecutive_failures = 0;
            h.unauthorized = false;
            h.last_error = None;
        }
        Some(e) => {
            h.consecutive_failures += 1;
            h.unauthorized = e.is_unauthorized();
            h.last_error = Some(e.message().to_string());
        }
    }
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

/// The waits before the retries of one batch: `backoff` doubling up to `max_backoff`, each
/// plus a random jitter of up to itself, `retries` of them.
fn backoff(settings: &Settings) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(settings.backoff)
        .with_max_delay(settings.max_backoff)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(settings.retries as usize)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let s = Settings {
            capacity: 1,
            retries: 4,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            timeout: Duration::from_secs(1),
            max_batch: 1,
            repurge_after: None,
            rate_limit_patience: Duration::ZERO,
        };
        let delays: Vec<Duration> = backoff(&s).collect();
        assert_eq!(delays.len(), 4, "{delays:?}");
        let within = |d: Duration, base: u64| {
            d >= Duration::from_millis(base) && d <= Duration::from_millis(2 * base)
        };
        for (d, base) in delays.iter().zip([100, 200, 350, 350]) {
            assert!(within(*d, base), "{delays:?}");
        }
    }
}
