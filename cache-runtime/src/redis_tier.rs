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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tokio::sync::watch;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::breaker::{Breaker, BreakerState};
use crate::bus;
use crate::config::Config;
use crate::error::{CacheError, InitError};
// `pub(crate)` only for `edge/worker.rs`, which still imports the limiter from here: its home
// is `log_limit`; make this private once that import points there.
pub(crate) use crate::log_limit::LogLimiter;
use crate::pending::{Pending, PendingOp};

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
    scripts: Arc<Scripts>,
    breaker: Arc<Breaker>,
    pub(crate) pending: Pending,
    retrying: AtomicBool,
}

/// What a read found. `stamps` are the current counters of the request's stamp keys
/// (missing keys read as 0), read atomically with the value.
pub(crate) enum Fetched {
    Missing {
        stamps: Vec<u64>,
        locked: bool,
    },
    /// Bytes and the key's remaining lifetime (`None`: no expiry set).
    Found {
        bytes: Vec<u8>,
        pttl: Option<Duration>,
        stamps: Vec<u64>,
    },
    /// The key holds another Redis type (hash, list, ...).
    WrongType {
        stamps: Vec<u64>,
    },
}

/// The Redis keys of one entry: its value, its lock, and the counters it is stamped with
/// (generation, cache clear, global clear, tags), built by the cache's key scheme.
pub(crate) struct EntryKeys {
    pub value: String,
    pub lock: String,
    pub stamps: Vec<String>,
}

/// One read; the lock is tried (`SET NX PX lease`) only with `try_lock` (token, lease ms).
pub(crate) struct ReadRequest {
    pub keys: EntryKeys,
    pub try_lock: Option<(String, u64)>,
}

/// One conditional write: `bytes` for `ttl`, if the stamps still hold `seen`; releases the
/// lock if `token` still owns it.
pub(crate) struct WriteRequest {
    pub keys: EntryKeys,
    pub bytes: Vec<u8>,
    pub ttl: Duration,
    pub seen: Vec<u64>,
    pub token: Option<String>,
}

/// Scripts keep each operation to one round trip and make it atomic.
struct Scripts {
    read: Script,
    write_if: Script,
    release: Script,
    invalidate: Script,
    bump_gen: Script,
    bump_version: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            // KEYS: value, lock, stamps...; ARGV: try-lock flag, token, lease ms.
            read: Script::new(
                r"
local stamps = redis.call('MGET', unpack(KEYS, 3))
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' and v.err then return {2, false, -2, stamps, 0} end
if v then return {1, v, redis.call('PTTL', KEYS[1]), stamps, 0} end
local locked = 0
if ARGV[1] == '1' and redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  locked = 1
end
return {0, false, -2, stamps, locked}",
            ),
            // KEYS: value, lock, stamps...; ARGV: bytes, px, token or '', seen stamps...
            write_if: Script::new(
                r"
local cur = redis.call('MGET', unpack(KEYS, 3))
local ok = 1
for i = 1, #cur do
  if (tonumber(cur[i]) or 0) ~= tonumber(ARGV[i + 3]) then ok = 0 break end
end
if ok == 1 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return ok",
            ),
            // KEYS: lock; ARGV: token.
            release: Script::new(
                r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
            ),
            // KEYS: value, generation; ARGV: retention ms, channel, message prefix.
            invalidate: Script::new(
                r"
local g = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. g)
return g",
            ),
            // KEYS: generation, other stamps...; ARGV: retention ms, channel, message prefix.
            bump_gen: Script::new(
                r"
local g = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. g)
local stamps = redis.call('MGET', unpack(KEYS))
stamps[1] = g
return stamps",
            ),
            // KEYS: version; ARGV: channel, message prefix.
            bump_version: Script::new(
                r"
local v = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. v)
return v",
            ),
        }
    }
}

fn parse_stamps(raw: Vec<Option<String>>) -> Vec<u64> {
    raw.into_iter()
        .map(|s| s.and_then(|s| s.parse().ok()).unwrap_or(0))
        .collect()
}

impl RedisTier {
    pub(crate) fn new(url: &str, config: &Config) -> Result<Self, InitError> {
        let client = open_client(url, config.tls_root_pem.clone())
            .map_err(|e| InitError::InvalidUrl(redact(&e.to_string())))?;
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
            scripts: Arc::new(Scripts::new()),
            breaker: Arc::new(Breaker::new(
                config.breaker_threshold,
                config.breaker_cooldown,
            )),
            pending: Pending::default(),
            retrying: AtomicBool::new(false),
        })
    }

    /// Runs `op` on the Redis thread with the connection, bounded by the operation timeout.
    async fn exec<T, F, Fut>(&self, op: F) -> Result<T, CacheError>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, RedisError>> + Send,
    {
        if !self.breaker.allow() {
            return Err(CacheError::CircuitOpen);
        }
        // Fast path: an async caller on a Tokio runtime, with the connection up, talks to the
        // multiplexed connection directly: no hop through the Redis thread, no extra timer
        // (the connection's response timeout is the operation timeout). The connection's
        // driver and reconnects stay on the Redis thread, whatever runtime the caller uses.
        if tokio::runtime::Handle::try_current().is_ok() {
            if let Some(conn) = self.shared.ready() {
                let shared = &self.shared;
                let res = op(conn).await.map_err(|e| shared.failed_op(e));
                self.settle(&res);
                return res;
            }
        }
        // Otherwise (a blocking caller, or the connection still coming up): on the Redis
        // thread, bounded by the operation timeout, connecting included.
        let shared = self.shared.clone();
        let timeout = shared.op_timeout;
        let span = tracing::trace_span!("cache.redis");
        let task = self.handle.spawn(tracing::Instrument::instrument(
            async move {
                tokio::time::timeout(timeout, async {
                    let conn = Shared::connection(&shared).await?;
                    op(conn).await.map_err(|e| shared.failed_op(e))
                })
                .await
                .unwrap_or(Err(CacheError::Timeout(timeout)))
            },
            span,
        ));
        let res = task
            .await
            .unwrap_or_else(|e| Err(CacheError::Unavailable(format!("redis task failed: {e}"))));
        self.settle(&res);
        res
    }

    pub(crate) async fn read(&self, req: ReadRequest) -> Result<Fetched, CacheError> {
        if req.try_lock.is_none() {
            return self.read_plain(req).await;
        }
        let scripts = self.scripts.clone();
        type Reply = (i64, Option<Vec<u8>>, i64, Vec<Option<String>>, i64);
        let res = self
            .exec(move |mut c| async move {
                let mut inv = scripts.read.prepare_invoke();
                inv.key(&req.keys.value).key(&req.keys.lock);
                for k in &req.keys.stamps {
                    inv.key(k);
                }
                match &req.try_lock {
                    Some((token, lease_ms)) => inv.arg("1").arg(token).arg(*lease_ms),
                    None => inv.arg("0").arg("").arg(0),
                };
                inv.invoke_async::<Reply>(&mut c).await
            })
            .await;
        match res {
            Ok((1, Some(bytes), pttl, stamps, _)) => Ok(Fetched::Found {
                bytes,
                pttl: (pttl >= 0).then(|| Duration::from_millis(pttl as u64)),
                stamps: parse_stamps(stamps),
            }),
            Ok((2, _, _, stamps, _)) => Ok(Fetched::WrongType {
                stamps: parse_stamps(stamps),
            }),
            Ok((_, _, _, stamps, locked)) => Ok(Fetched::Missing {
                stamps: parse_stamps(stamps),
                locked: locked == 1,
            }),
            Err(e) => Err(e),
        }
    }

    /// A read without a lock attempt: `MGET value stamps…` and `PTTL value`, pipelined (one
    /// round trip, and about a tenth of a script's server time). `MGET` answers nil for a key
    /// of another type, which `PTTL` (≥ -1: the key exists) tells apart from a missing key.
    async fn read_plain(&self, req: ReadRequest) -> Result<Fetched, CacheError> {
        let (mut values, pttl) = self
            .exec(move |mut c| async move {
                let mut p = redis::pipe();
                p.cmd("MGET").arg(&req.keys.value);
                for k in &req.keys.stamps {
                    p.arg(k);
                }
                p.cmd("PTTL").arg(&req.keys.value);
                p.query_async::<(Vec<Option<Vec<u8>>>, i64)>(&mut c).await
            })
            .await?;
        let value = if values.is_empty() {
            None
        } else {
            values.remove(0)
        };
        let stamps = values
            .into_iter()
            .map(|v| {
                v.and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        Ok(match value {
            Some(bytes) => Fetched::Found {
                bytes,
                pttl: (pttl >= 0).then(|| Duration::from_millis(pttl as u64)),
                stamps,
            },
            None if pttl != -2 => Fetched::WrongType { stamps },
            None => Fetched::Missing {
                stamps,
                locked: false,
            },
        })
    }

    /// `SET value PX` if every stamp key still holds `seen`; releases the lock if `token`
    /// still owns it. `Ok(false)`: a write happened since `seen` was read; nothing stored.
    pub(crate) async fn write_if(&self, req: WriteRequest) -> Result<bool, CacheError> {
        let ms = req.ttl.as_millis().max(1) as u64;
        let scripts = self.scripts.clone();
        self.exec(move |mut c| async move {
            let WriteRequest {
                keys,
                bytes,
                seen,
                token,
                ..
            } = req;
            let mut inv = scripts.write_if.prepare_invoke();
            inv.key(&keys.value).key(&keys.lock);
            for k in &keys.stamps {
                inv.key(k);
            }
            inv.arg(bytes).arg(ms).arg(token.as_deref().unwrap_or(""));
            for s in &seen {
                inv.arg(*s);
            }
            inv.invoke_async::<i64>(&mut c).await.map(|ok| ok == 1)
        })
        .await
    }

    /// `SET lock token NX PX lease`: whether this call took the lock.
    pub(crate) async fn try_lock(
        &self,
        lock_key: String,
        token: String,
        lease_ms: u64,
    ) -> Result<bool, CacheError> {
        self.exec(move |mut c| async move {
            redis::cmd("SET")
                .arg(&lock_key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(lease_ms)
                .query_async::<Option<String>>(&mut c)
                .await
                .map(|r| r.is_some())
        })
        .await
    }

    pub(crate) async fn release_lock(
        &self,
        lock_key: String,
        token: String,
    ) -> Result<(), CacheError> {
        let scripts = self.scripts.clone();
        self.exec(move |mut c| async move {
            scripts
                .release
                .key(&lock_key)
                .arg(&token)
                .invoke_async::<i64>(&mut c)
                .await
                .map(drop)
        })
        .await
    }

    /// Bumps the key's generation (kept `retention`), deletes the value, and publishes
    /// `message_prefix` + the new generation on `channel`: one round trip.
    pub(crate) async fn invalidate(
        &self,
        value_key: String,
        gen_key: String,
        retention: Duration,
        channel: String,
        message_prefix: String,
    ) -> Result<u64, CacheError> {
        let scripts = self.scripts.clone();
        self.exec(move |mut c| async move {
            scripts
                .invalidate
                .key(&value_key)
                .key(&gen_key)
                .arg(retention.as_millis() as u64)
                .arg(&channel)
                .arg(&message_prefix)
                .invoke_async::<u64>(&mut c)
                .await
        })
        .await
    }

    /// Bumps the generation (first stamp key) and returns every stamp after the bump.
    pub(crate) async fn bump_generation(
        &self,
        stamp_keys: Vec<String>,
        retention: Duration,
        channel: String,
        message_prefix: String,
    ) -> Result<Vec<u64>, CacheError> {
        let scripts = self.scripts.clone();
        self.exec(move |mut c| async move {
            let mut inv = scripts.bump_gen.prepare_invoke();
            for k in &stamp_keys {
                inv.key(k);
            }
            inv.arg(retention.as_millis() as u64)
                .arg(&channel)
                .arg(&message_prefix);
            // The first element is an integer (the new generation), the rest MGET strings.
            let raw: Vec<redis::Value> = inv.invoke_async(&mut c).await?;
            Ok(raw
                .into_iter()
                .map(|v| match v {
                    redis::Value::Int(i) => i.max(0) as u64,
                    redis::Value::BulkString(b) => std::str::from_utf8(&b)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    _ => 0,
                })
                .collect())
        })
        .await
    }

    /// Bumps a version counter (tag or clear; never expires) and publishes.
    pub(crate) async fn bump_version(
        &self,
        key: String,
        channel: String,
        message_prefix: String,
    ) -> Result<u64, CacheError> {
        let scripts = self.scripts.clone();
        self.exec(move |mut c| async move {
            scripts
                .bump_version
                .key(&key)
                .arg(&channel)
                .arg(&message_prefix)
                .invoke_async::<u64>(&mut c)
                .await
        })
        .await
    }

    /// Keeps a write that Redis did not take, and makes sure the retry loop runs.
    pub(crate) fn defer(&'static self, op: PendingOp) {
        self.pending.add(op);
        if !self.retrying.swap(true, Ordering::AcqRel) {
            self.handle.spawn(self.retry_loop());
        }
    }

    async fn retry_loop(&'static self) {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for op in self.pending.snapshot() {
                let res = match &op {
                    PendingOp::Invalidate {
                        value_key,
                        gen_key,
                        retention,
                        channel,
                        logical,
                    } => self
                        .invalidate(
                            value_key.clone(),
                            gen_key.clone(),
                            *retention,
                            channel.clone(),
                            bus::message_prefix(bus::Action::Invalidated, logical),
                        )
                        .await
                        .map(|g| bus::apply_locally(bus::Action::Invalidated, logical, g)),
                    PendingOp::Bump {
                        key,
                        channel,
                        action,
                        target,
                    } => self
                        .bump_version(
                            key.clone(),
                            channel.clone(),
                            bus::message_prefix(*action, target),
                        )
                        .await
                        .map(|_| bus::apply_locally(*action, target, 0)),
                };
                match res {
                    Ok(()) => {
                        tracing::info!(write = %op.id(), "a deferred redis write went through");
                        self.pending.done(&op.id());
                    }
                    // Still down: try the rest next round.
                    Err(_) => break,
                }
            }
        }
    }

    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Sleeps on the Redis thread: usable from any executor, `pollster` included.
    pub(crate) async fn sleep(&self, d: Duration) {
        let _ = self.handle.spawn(tokio::time::sleep(d)).await;
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.shared.client
    }

    pub(crate) async fn ping(&self) -> Result<(), CacheError> {
        self.exec(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(drop)
    }
}

impl RedisTier {
    /// Breaker bookkeeping and rate-limited logging of one operation's result.
    fn settle<T>(&self, res: &Result<T, CacheError>) {
        match res {
            // A server error (NOPERM, ...) still means Redis is there and answering.
            Ok(_) | Err(CacheError::Redis(_)) => self.breaker.success(),
            Err(_) => self.breaker.failure(),
        }
        if let Err(e) = res {
            self.shared.log.warn_error(
                "redis",
                "redis operation failed, falling back to the source",
                e,
            );
        }
    }
}

impl Shared {
    /// The connection if it is up (no waiting).
    fn ready(&self) -> Option<ConnectionManager> {
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            ConnState::Ready(c) => Some(c.clone()),
            _ => None,
        }
    }

    /// Classifies a failed operation; a lost connection makes later operations fail fast
    /// (instead of each waiting for the manager's own reconnect attempts) while it reconnects
    /// in the background.
    fn failed_op(&self, e: RedisError) -> CacheError {
        let lost = is_connection_lost(&e);
        let e = if e.is_timeout() {
            CacheError::Timeout(self.op_timeout)
        } else {
            classify(e)
        };
        if lost {
            self.connection_lost(&e);
        }
        e
    }

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
                    tracing::info!("connected to redis");
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
        self.log
            .warn_error("redis", "cannot connect to redis", &error);
        ConnState::Idle {
            retry_at: Instant::now() + reconnect_delay(failures),
            failures: failures.saturating_add(1),
            last_error: error,
        }
    }
}

/// The wait before reconnect attempt `failures + 1`: 100 ms, doubling up to 1 s.
fn reconnect_delay(failures: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(1);
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX)
        .without_max_times()
        .build()
        .nth(failures.min(8) as usize)
        .unwrap_or(MAX)
}

/// A client for `url`; `rediss://` uses rustls (ring), with `root_pem` as the only trusted CA
/// when given, the system's roots otherwise.
pub(crate) fn open_client(
    url: &str,
    root_pem: Option<Vec<u8>>,
) -> redis::RedisResult<redis::Client> {
    if url.starts_with("rediss://") {
        // A no-op if the application installed a provider already.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match root_pem {
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            },
        ),
        None => redis::Client::open(url),
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

#[cfg(test)]
mod tests {
    use super::{reconnect_delay, redact};
    use std::time::Duration;

    #[test]
    fn reconnects_back_off_exponentially_up_to_a_second() {
        let ms: Vec<u128> = (0..7).map(|f| reconnect_delay(f).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(reconnect_delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://u:secret@h:1/0"),
            "redis://u:***@h:1/0".to_string()
        );
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
