//! What runs beside or after the caller: the fail-safe (a stale fallback for a failing,
//! panicking or slow body), the soft timeout (the body finishes in a task), refresh ahead
//! (a task refreshes an entry late in its TTL), and where such tasks and timers run.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::FutureExt;

use crate::entry::{Meta, Source};
use crate::flight::Joined;
use crate::key::IntoKey;
use crate::runtime::runtime;
use crate::shape::{Shape, Sharing};
use crate::tier::Key;

use super::redis_side::Read;
use super::Cache;

/// `stale = ...`: expired values kept as a fallback for failing bodies.
pub(super) struct FailSafe {
    pub(super) stale: Duration,
    pub(super) timeout: Option<Duration>,
    /// Keys whose body failed recently: served stale without retrying until this expires.
    pub(super) failed: moka::sync::Cache<String, ()>,
}

impl FailSafe {
    pub(super) fn new(stale: Duration, retry: Duration, timeout: Option<Duration>) -> Self {
        Self {
            stale,
            timeout,
            failed: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(retry.max(Duration::from_millis(1)))
                .build(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Cache<V> {
    /// How long past its TTL a value is kept as a fallback (zero without `stale`).
    pub(super) fn stale_window(&self) -> Duration {
        self.fail_safe.as_ref().map_or(Duration::ZERO, |f| f.stale)
    }

    /// Runs the body; under the fail-safe, with a fallback at hand (`fallback`, Redis's, or
    /// a stale local copy: see [`local_stale`](Self::local_stale), `outage` saying whether
    /// Redis failed to answer this call's read), a failure (`Err`, panic, timeout) gives the
    /// fallback back as `Err`, and the key's body is not retried before `stale_retry`.
    pub(super) async fn run_body<R, S>(
        &self,
        key: &Key,
        body: impl Future<Output = R>,
        fallback: Option<(V, Meta)>,
        outage: bool,
    ) -> Result<R, (V, Meta)>
    where
        S: Shape<R, Value = V>,
    {
        let Some(fs) = &self.fail_safe else {
            return Ok(self.timed(body).await);
        };
        let fallback = fallback.or_else(|| self.local_stale(&key.logical, outage));
        let Some(fallback) = fallback else {
            return Ok(self.timed(body).await);
        };
        match self.guarded(key, body, fs).await {
            Some(r) if !S::is_failure(&r) => Ok(r),
            failed => {
                drop(failed);
                fs.failed.insert(key.logical.clone(), ());
                self.counters.stale_served.add(1);
                Err(fallback)
            }
        }
    }

    /// Runs the body for the fail-safe: `None` if it panicked or ran past the timeout. A key
    /// that failed within `stale_retry` is not run at all (`None`).
    async fn guarded<R>(
        &self,
        key: &Key,
        body: impl Future<Output = R>,
        fs: &FailSafe,
    ) -> Option<R> {
        if fs.failed.contains_key(&key.logical) {
            return None;
        }
        let run = std::panic::AssertUnwindSafe(self.timed(body)).catch_unwind();
        let outcome = match fs.timeout {
            None => run.await,
            Some(t) => {
                let timer = std::pin::pin!(sleep_anywhere(t));
                let run = std::pin::pin!(run);
                match select(run, timer).await {
                    Either::Left((r, _)) => r,
                    Either::Right(_) => {
                        tracing::debug!(cache = %self.name, "body timed out; serving stale");
                        return None;
                    }
                }
            }
        };
        match outcome {
            Ok(r) => Some(r),
            Err(panic) => {
                let panic = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::warn!(cache = %self.name, panic, "body panicked; serving stale");
                None
            }
        }
    }

    /// The detached waterfall: a local hit (starting a refresh ahead if due), the miss path
    /// under the soft timeout, or the plain waterfall (refreshing ahead a value found late).
    /// The body's future is made only where it is needed, and the miss paths are boxed, so
    /// that this future (and its caller's) holds neither.
    pub(super) async fn load_detached<R, S, F, B>(
        &'static self,
        key: impl IntoKey,
        make_body: F,
        sharing: Sharing<R>,
    ) -> (R, Meta, Source)
    where
        S: Shape<R, Value = V> + 'static,
        R: 'static,
        F: FnOnce() -> B + Send + 'static,
        B: Future<Output = R> + Send + 'static,
    {
        let normal = self.mode.load(Ordering::Relaxed) == 0;
        if normal {
            // The hit is handled here (one local lookup), so a miss can go to `load_soft`.
            // It reads the key where the caller wrote it; only a refresh owns it.
            if let Some(hit) = self.local_hit_fresh(key.logical()) {
                let (r, meta) = (S::rebuild(hit.value().clone()), hit.meta());
                drop(hit);
                if self.refresh_due(&meta) {
                    self.refresh_in_background::<R, S, B>(key.into_key(), make_body(), sharing);
                }
                return (r, meta, Source::Local);
            }
        }
        let key = key.into_key();
        if normal {
            if let Some(soft) = self.soft_timeout {
                let body = Some(make_body());
                return Box::pin(self.load_soft::<R, S, B>(key, body, sharing, soft)).await;
            }
        }
        let (out, body) = Box::pin(async {
            let mut body = Some(make_body());
            (self.load::<R, S, B>(&key, &mut body, &sharing).await, body)
        })
        .await;
        if let (Some(body), true, Source::Local | Source::Redis) = (body, normal, out.2) {
            if self.refresh_due(&out.1) {
                self.refresh_in_background::<R, S, B>(key, body, sharing);
            }
        }
        out
    }

    /// The miss path raced against `soft`: past it, a stale value (local, or Redis's) is
    /// returned and the load is handed to a task, which completes the body and stores its
    /// result. The load runs on the caller's task until then, so the body's result never
    /// crosses threads and needs no `Send`: the task only ever stores it (a result that is not
    /// cached, an `Err`, is dropped there, as nobody waits for it any more).
    async fn load_soft<R, S, B>(
        &'static self,
        key: Key,
        body: Option<B>,
        sharing: Sharing<R>,
        soft: Duration,
    ) -> (R, Meta, Source)
    where
        S: Shape<R, Value = V> + 'static,
        R: 'static,
        B: Future<Output = R> + Send + 'static,
    {
        let load_key = key.clone();
        let mut load = Box::pin(async move {
            let mut body = body;
            self.load::<R, S, B>(&load_key, &mut body, &sharing).await
        });
        if tokio::runtime::Handle::try_current().is_err() && runtime().redis.is_none() {
            // No runtime to finish a body in after the caller left: wait for it here.
            return load.await;
        }
        let timer = std::pin::pin!(sleep_anywhere(soft));
        if let Either::Left((done, _)) = select(&mut load, timer).await {
            return done;
        }
        // Past the soft timeout: the load goes on while the fallback is looked up, and wins
        // if it finishes first (a fresh value beats a stale one).
        let fallback = std::pin::pin!(self.stale_fallback(&key));
        let stale = match select(&mut load, fallback).await {
            Either::Left((done, _)) => return done,
            Either::Right((stale, _)) => stale,
        };
        let Some((v, meta)) = stale else {
            return load.await;
        };
        // (Checked above: there is a runtime to finish the body in. Were there none, it
        // finishes here, before the stale value is returned.)
        if let Err(finish) = spawn_task(async move {
            drop(load.await);
        }) {
            finish.await;
        }
        self.counters.soft_timeouts.add(1);
        self.counters.stale_served.add(1);
        tracing::debug!(cache = %self.name, "body past soft_timeout; serving stale");
        (S::rebuild(v), meta, Source::Stale)
    }

    /// A fallback for a soft timeout: a local copy (fresh if a write landed meanwhile, else
    /// stale; a `local+redis` cache's only while the bus is trusted: the body is only slow,
    /// and a copy invalidated unheard is never a fallback), or a stale one still in Redis,
    /// which the read checks against its ticket and tokens.
    async fn stale_fallback(&self, key: &Key) -> Option<(V, Meta)> {
        if self.local.is_some() {
            let copy = self.local_stale(&key.logical, false);
            if copy.is_some() || self.redis.is_none() {
                return copy;
            }
        }
        let seen = self.local_generation(&key.logical);
        match self.redis_read(key, seen, None, false).await {
            Read::Found(v, meta)
            | Read::Stale {
                value: (v, meta), ..
            } => Some((v, meta)),
            _ => None,
        }
    }

    /// Starts one background refresh of `key` unless one (or any load) is already running:
    /// the flight is joined here, so concurrent readers do not start a second one.
    fn refresh_in_background<R, S, B>(&'static self, key: Key, body: B, sharing: Sharing<R>)
    where
        S: Shape<R, Value = V> + 'static,
        R: 'static,
        B: Future<Output = R> + Send + 'static,
    {
        let Joined::Leader(leader) = self
            .flights
            .join(&key.logical, &key.tags, self.first_join())
        else {
            return;
        };
        let task = async move {
            let mut body = Some(body);
            self.lead::<R, S, B>(&key, leader, &mut body, &sharing, false, true)
                .await;
        };
        // Without a runtime the leader is dropped here, which releases the flight.
        if spawn_task(task).is_ok() {
            self.counters.refreshes_ahead.add(1);
        }
    }
}

/// Sleeps on the caller's Tokio runtime, or on the Redis thread, or (outside both) never
/// wakes, which disables the timeout rather than panicking.
async fn sleep_anywhere(d: Duration) {
    // A blocking call's thread is its runtime's: that runtime's timer does not run meanwhile.
    if !crate::blocking::in_blocking_call() && tokio::runtime::Handle::try_current().is_ok() {
        tokio::time::sleep(d).await;
    } else if let Some(r) = &runtime().redis {
        r.sleep(d).await;
    } else {
        std::future::pending::<()>().await;
    }
}

/// Spawns on the caller's Tokio runtime, or the runtime's Redis thread; gives the task back
/// if there is neither.
fn spawn_task<F>(task: F) -> Result<tokio::task::JoinHandle<F::Output>, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        return Ok(handle.spawn(task));
    }
    match &runtime().redis {
        Some(r) => Ok(r.handle().spawn(task)),
        None => Err(task),
    }
}
