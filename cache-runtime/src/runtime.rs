//! The process-wide runtime: the configuration in force and the Redis tier built from it
//! (connection thread, bus subscriber), created by [`init`] or lazily from the environment.

use std::sync::OnceLock;

use crate::breaker::BreakerState;
use crate::bus;
use crate::config::Config;
use crate::error::{CacheError, InitError};
use crate::redis_tier::RedisTier;

pub(crate) struct Runtime {
    pub config: Config,
    pub redis: Option<RedisTier>,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// A runtime, and how to start its bus subscription: handed to the bus only once the runtime
/// is the one installed (two racing `init` calls both build one; the loser's, dropped, must
/// not be the one whose subscriber starts).
fn make_runtime(config: Config) -> Result<(Runtime, Option<BusStart>), InitError> {
    let (redis, start) = match config.redis_configured() {
        true => {
            let tier = RedisTier::new(&config)?;
            let (handle, target) = (tier.handle().clone(), tier.target());
            let (prefix, timeout) = (config.key_prefix.clone(), config.connect_timeout);
            let lost = tier.subscription_lost_hook();
            let start = move || drop(handle.spawn(bus::run(target, prefix, timeout, lost)));
            // Restarts on Sentinel and a cluster are noticed by the subscription (§8.2); on a
            // single node the first cache with a local tier, or tracking refused, starts it.
            let now = config.sentinel.is_some() || config.cluster.is_some();
            (Some(tier), Some(BusStart(Box::new(start), now)))
        }
        false => (None, None),
    };
    Ok((Runtime { config, redis }, start))
}

/// How to start the bus subscription of a runtime, and whether at once.
struct BusStart(Box<dyn FnOnce() + Send>, bool);

impl BusStart {
    fn hand_over(start: Option<Self>) {
        if let Some(BusStart(start, now)) = start {
            bus::start_on_demand(start, now);
        }
    }
}

/// Configures the runtime. Call it once at start-up, before the first cached call.
///
/// ```no_run
/// use cache_runtime::{init, Config};
/// init(Config::builder().redis_url("redis://127.0.0.1:6379").key_prefix("shop").build())
///     .expect("cache runtime configured twice");
/// ```
pub fn init(config: Config) -> Result<(), InitError> {
    if RUNTIME.get().is_some() {
        return Err(InitError::AlreadyInitialized);
    }
    let (runtime, start) = make_runtime(config)?;
    let mut made = Some(runtime);
    RUNTIME.get_or_init(|| made.take().expect("runtime built once"));
    match made {
        None => {
            BusStart::hand_over(start);
            Ok(())
        }
        Some(_) => Err(InitError::AlreadyInitialized),
    }
}

pub(crate) fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        let config = Config::from_env();
        if !config.redis_configured() {
            tracing::warn!(
                "none of REDIS_URL, REDIS_SENTINEL_URLS, REDIS_CLUSTER_URLS is set and init() was not called; the Redis tier is disabled \
                 (local+redis caches use their local tier only, redis caches run the body on \
                 every call)"
            );
        }
        match make_runtime(config.clone()) {
            Ok((rt, start)) => {
                BusStart::hand_over(start);
                rt
            }
            Err(e) => {
                tracing::error!(error = %e, "the Redis tier is disabled");
                Runtime {
                    config: Config {
                        redis_url: None,
                        sentinel: None,
                        cluster: None,
                        ..config
                    },
                    redis: None,
                }
            }
        }
    })
}

/// The configuration in force (initialising it from the environment if nothing was set).
///
/// ```
/// let prefix = cache_runtime::config().key_prefix().to_string();
/// assert!(!prefix.is_empty());
/// ```
pub fn config() -> &'static Config {
    &runtime().config
}

/// Whether a Redis tier is configured (it may still be unreachable).
///
/// ```
/// let _ = cache_runtime::redis_enabled();
/// ```
pub fn redis_enabled() -> bool {
    runtime().redis.is_some()
}

/// The Redis tier's health as this process sees it.
///
/// ```
/// let s = cache_runtime::redis_status();
/// assert!(s.pending_writes == 0 || s.configured);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStatus {
    /// Whether a Redis URL is configured.
    pub configured: bool,
    /// The circuit breaker's state.
    pub breaker: BreakerState,
    /// Invalidations, tag invalidations and clears that Redis has not taken yet (retried in
    /// the background; meanwhile the entries they cover are not read from Redis).
    pub pending_writes: usize,
    /// Writes the replicas did not confirm in time (`WAIT`, see
    /// [`WaitReplicas`](crate::WaitReplicas)) since start: each returned `Err` and was kept
    /// pending.
    pub unconfirmed_writes: u64,
    /// Hits whose Redis read went in one pipeline with other callers' reads since start
    /// (auto-pipelining: when many reads of one runtime are in flight at once, their `GET`s
    /// share one request; docs/PROTOCOL.md §7.1).
    pub pipelined_reads: u64,
    /// The pipelines those reads went in (`pipelined_reads / read_pipelines` is their mean
    /// size).
    pub read_pipelines: u64,
}

/// See [`RedisStatus`].
pub fn redis_status() -> RedisStatus {
    match &runtime().redis {
        Some(r) => {
            let (pipelined_reads, read_pipelines) = crate::redis_tier::counters::pipelined_reads();
            RedisStatus {
                configured: true,
                breaker: r.breaker_state(),
                pending_writes: r.pending.len(),
                unconfirmed_writes: crate::redis_tier::counters::unconfirmed_writes(),
                pipelined_reads,
                read_pipelines,
            }
        }
        None => RedisStatus {
            configured: false,
            breaker: BreakerState::Closed,
            pending_writes: 0,
            unconfirmed_writes: 0,
            pipelined_reads: 0,
            read_pipelines: 0,
        },
    }
}

/// Waits until the writes Redis has not taken yet went through, and the installed edge
/// purger is idle ([`edge::flush_all`](crate::edge::flush_all)), for at most `timeout` in
/// all; returns whether everything went through.
///
/// An invalidation, tag invalidation or clear that Redis did not take (down, timed out, the
/// caller cancelled before Redis answered) returned `Err` or was dropped with its caller, and
/// is kept pending: retried in the background every 100 ms, and meanwhile the entries it
/// covers are not read from Redis here ([`RedisStatus::pending_writes`] counts them). A
/// process that exits with writes pending loses them: other processes may read the old
/// values from Redis until their TTL. Call `drain` at shutdown, once the service stopped
/// taking requests (writes made meanwhile are waited for too, but one still in flight when
/// `drain` returns is not).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// // On SIGTERM, after the server stopped accepting requests:
/// if !cache_runtime::drain(Duration::from_secs(5)).await {
///     eprintln!(
///         "{} cache writes did not reach Redis",
///         cache_runtime::redis_status().pending_writes
///     );
/// }
/// # }
/// ```
pub async fn drain(timeout: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    let redis = match &runtime().redis {
        Some(r) => r.drain(timeout).await,
        None => true,
    };
    let edge = crate::edge::flush_all(timeout.saturating_sub(start.elapsed())).await;
    redis && edge
}

/// Blocking [`drain`], for sync code and shutdown hooks (on any thread, a runtime's
/// included: the wait runs on the runtime's Redis thread).
///
/// ```
/// assert!(cache_runtime::drain_blocking(std::time::Duration::from_secs(1)));
/// ```
pub fn drain_blocking(timeout: std::time::Duration) -> bool {
    crate::blocking::block_on(drain(timeout))
}

/// Checks that the runtime can really use Redis, as the configured user: it loads every
/// script and runs each operation on probe keys under the key prefix (`{prefix}:health:*`),
/// reads the server `TIME`, confirms with `ROLE` / `WAIT` when writes wait for replicas, and
/// publishes and subscribes on the bus's channel (`{prefix}:bus:*`). The first failure names
/// its step and, for a missing permission, the command to grant (`NOPERM ... 'zadd'` →
/// `grant +zadd`). Call it at boot to fail fast on a wrong URL, password or ACL; cached calls
/// themselves never fail on Redis errors.
///
/// ```no_run
/// # async fn boot() {
/// if let Err(e) = cache_runtime::health_check().await {
///     eprintln!("redis cache unavailable, serving from the source: {e}");
/// }
/// # }
/// ```
pub async fn health_check() -> Result<(), CacheError> {
    let rt = runtime();
    match &rt.redis {
        Some(r) => {
            r.health_check(&rt.config.key_prefix, &bus::channel(&rt.config.key_prefix))
                .await
        }
        None => Err(CacheError::Unavailable(
            "no redis configured (set REDIS_URL, REDIS_SENTINEL_URLS or REDIS_CLUSTER_URLS, or call \
             cache_runtime::init)"
                .into(),
        )),
    }
}
