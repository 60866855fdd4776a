//! The shared tier: one reconnecting, multiplexed Redis connection per process.
//!
//! All Redis I/O runs on a small dedicated Tokio runtime (one thread) owned by the cache
//! runtime. Callers, async ones on any executor and blocking ones alike, submit an operation
//! and await its result, so the connection never depends on the lifetime of a caller's
//! runtime, and a plain `fn` can use Redis without nesting runtimes. Every operation is
//! bounded by `Config::redis_timeout`, connection included; connecting happens in the
//! background with exponential backoff, so a down Redis costs callers at most one timeout
//! (usually nothing: during backoff operations fail immediately).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tokio::sync::watch;

use crate::config::Config;
use crate::{CacheError, InitError};

enum ConnState {
    Idle {
        retry_at: Instant,
        failures: u32,
        last_error: String,
    },
    Connecting(watch::Receiver<bool>),
    Ready(ConnectionManager),
}

struct Shared {
    client: redis::Client,
    connect_timeout: Duration,
    op_timeout: Duration,
    state: Mutex<ConnState>,
    log: LogLimiter,
}

pub(crate) struct RedisTier {
    handle: tokio::runtime::Handle,
    shared: Arc<Shared>,
    get_script: Script,
}

/// What a GET found.
pub(crate) enum Fetched {
    Missing,
    /// Bytes and the key's remaining lifetime (`None`: no expiry set).
    Found(Vec<u8>, Option<Duration>),
    /// The key holds another Redis type (hash, list, ...).
    WrongType,
}

impl RedisTier {
    pub(crate) fn new(url: &str, config: &Config) -> Result<Self, InitError> {
        let client =
            redis::Client::open(url).map_err(|e| InitError::InvalidUrl(redact(&e.to_string())))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("cache-runtime-redis".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cache-runtime: cannot build the Redis I/O runtime");
                let _ = tx.send(rt.handle().clone());
                rt.block_on(std::future::pending::<()>());
            })
            .expect("cache-runtime: cannot spawn the Redis I/O thread");
        let handle = rx
            .recv()
            .expect("cache-runtime: the Redis I/O thread died at start");
        Ok(Self {
            handle,
            shared: Arc::new(Shared {
                client,
                connect_timeout: config.connect_timeout,
                op_timeout: config.redis_timeout,
                state: Mutex::new(ConnState::Idle {
                    retry_at: Instant::now(),
                    failures: 0,
                    last_error: String::new(),
                }),
                log: LogLimiter::default(),
            }),
            get_script: Script::new(
                "local v = redis.call('GET', KEYS[1]) \
                 if not v then return false end \
                 return {v, redis.call('PTTL', KEYS[1])}",
            ),
        })
    }

    /// Runs `op` on the Redis thread with the connection, bounded by the operation timeout.
    async fn exec<T, F, Fut>(&self, op: F) -> Result<T, CacheError>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, RedisError>> + Send,
    {
        let shared = self.shared.clone();
        let timeout = shared.op_timeout;
        let task = self.handle.spawn(async move {
            let res = tokio::time::timeout(timeout, async {
                let conn = Shared::connection(&shared).await?;
                op(conn).await.map_err(|e| {
                    let lost = is_connection_lost(&e);
                    let e = classify(e);
                    if lost {
                        // Fail fast from now on instead of every caller waiting for the
                        // manager's own reconnect attempts; reconnect in the background.
                        shared.connection_lost(&e);
                    }
                    e
                })
            })
            .await
            .unwrap_or(Err(CacheError::Timeout(timeout)));
            if let Err(e) = &res {
                shared.log.warn(
                    "redis",
                    &format!("redis operation failed, falling back to the source: {e}"),
                );
            }
            res
        });
        task.await
            .unwrap_or_else(|e| Err(CacheError::Unavailable(format!("redis task failed: {e}"))))
    }

    pub(crate) async fn get(&self, key: String) -> Result<Fetched, CacheError> {
        let script = self.get_script.clone();
        let res = self
            .exec(move |mut c| async move {
                let v: Option<(Vec<u8>, i64)> = script.key(&key).invoke_async(&mut c).await?;
                Ok(v)
            })
            .await;
        match res {
            Ok(None) => Ok(Fetched::Missing),
            Ok(Some((bytes, pttl))) => {
                let ttl = (pttl >= 0).then(|| Duration::from_millis(pttl as u64));
                Ok(Fetched::Found(bytes, ttl))
            }
            Err(CacheError::Redis(msg)) if msg.contains("WRONGTYPE") => Ok(Fetched::WrongType),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn set_px(
        &self,
        key: String,
        bytes: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let ms = ttl.as_millis().max(1) as u64;
        self.exec(move |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(bytes)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    pub(crate) async fn del(&self, key: String) -> Result<bool, CacheError> {
        self.exec(move |mut c| async move {
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<i64>(&mut c)
                .await
                .map(|n| n > 0)
        })
        .await
    }

    pub(crate) async fn ping(&self) -> Result<(), CacheError> {
        self.exec(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(drop)
    }
}

impl Shared {
    /// The connection, connecting in the background first if needed. Fails fast while a
    /// previous connection attempt's backoff runs.
    async fn connection(self: &Arc<Self>) -> Result<ConnectionManager, CacheError> {
        loop {
            let mut rx = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                match &*state {
                    ConnState::Ready(c) => return Ok(c.clone()),
                    ConnState::Connecting(rx) => rx.clone(),
                    ConnState::Idle {
                        retry_at,
                        last_error,
                        ..
                    } if *retry_at > Instant::now() => {
                        return Err(CacheError::Unavailable(last_error.clone()));
                    }
                    ConnState::Idle { failures, .. } => {
                        let failures = *failures;
                        let (tx, rx) = watch::channel(false);
                        *state = ConnState::Connecting(rx.clone());
                        tokio::spawn(self.clone().connect(tx, failures));
                        rx
                    }
                }
            };
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    async fn connect(self: Arc<Self>, done: watch::Sender<bool>, failures: u32) {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.op_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let attempt = tokio::time::timeout(
            self.connect_timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        let next = match attempt {
            Ok(Ok(conn)) => {
                if failures > 0 {
                    tracing::info!("cache_runtime: connected to redis");
                }
                ConnState::Ready(conn)
            }
            Ok(Err(e)) => self.failed(failures, redact(&e.to_string())),
            Err(_) => self.failed(
                failures,
                format!("connect timed out after {:?}", self.connect_timeout),
            ),
        };
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = next;
        let _ = done.send(true);
    }

    fn connection_lost(&self, error: &CacheError) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*state, ConnState::Ready(_)) {
            *state = self.failed(0, error.to_string());
        }
    }

    fn failed(&self, failures: u32, error: String) -> ConnState {
        let backoff = Duration::from_millis(100 << failures.min(4)).min(Duration::from_secs(1));
        self.log
            .warn("redis", &format!("cannot connect to redis: {error}"));
        ConnState::Idle {
            retry_at: Instant::now() + backoff,
            failures: failures.saturating_add(1),
            last_error: error,
        }
    }
}

fn is_connection_lost(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

fn classify(e: RedisError) -> CacheError {
    if e.is_timeout() {
        CacheError::Unavailable(format!("timeout: {e}"))
    } else if is_connection_lost(&e) {
        CacheError::Unavailable(redact(&e.to_string()))
    } else {
        CacheError::Redis(redact(&e.to_string()))
    }
}

/// Keeps passwords out of logs and errors (`redis://user:secret@host` → `redis://user:***@host`).
fn redact(s: &str) -> String {
    match (s.find("://"), s.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &s[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!("{}:***{}", &s[..scheme + 3 + colon], &s[at..]),
                None => s.to_string(),
            }
        }
        _ => s.to_string(),
    }
}

/// At most one warning per interval; the rest are counted and reported with the next one.
#[derive(Default)]
pub(crate) struct LogLimiter {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

const LOG_INTERVAL_MS: u64 = 10_000;

impl LogLimiter {
    /// Logs `message` about `subject` unless a line was logged in the last interval.
    pub(crate) fn warn(&self, subject: &str, message: &str) {
        let now = crate::codec::unix_millis(std::time::SystemTime::now());
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_INTERVAL_MS
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(suppressed, "cache_runtime: {subject}: {message}");
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://u:secret@h:1/0"),
            "redis://u:***@h:1/0".to_string()
        );
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
