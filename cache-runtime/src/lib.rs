//! A two-tier function cache: one attribute, a correct in-process cache (moka), a shared
//! Redis cache, or both, with generated invalidation.
//!
//! ```
//! use cache_runtime::cached;
//!
//! #[cached(ttl = "5m", key = "square:<x>")]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! assert_eq!(square(4), 16); // runs the body
//! assert_eq!(square(4), 16); // served from the local tier
//! assert_eq!(lookup_square(4), Some(16));
//! invalidate_square(4).unwrap();
//! assert_eq!(lookup_square(4), None);
//! assert_eq!(square_cache().stats().body_calls, 1);
//! ```
//!
//! The macro only generates glue: key building, the call into [`Cache`], and the companion
//! functions. Everything else lives here, one module per concept: [`key`] (injective key
//! encoding), [`codec`] (the Redis value envelope), [`shape`] (what is cached for `Result` /
//! `Option`), the local and Redis tiers, single-flight, and [`Stats`].
//!
//! Configure Redis once at start-up with [`init`], or set `REDIS_URL`.

#![warn(missing_docs)]

mod breaker;
mod bus;
mod cache;
pub mod codec;
mod config;
pub mod edge;
mod entry;
mod error;
mod flight;
#[cfg(feature = "http")]
pub mod http;
pub mod key;
mod local;
mod observe;
mod pending;
mod redis_tier;
pub mod shape;
mod stats;

#[doc(hidden)]
pub mod __private;

pub use breaker::BreakerState;
pub use bus::{bus_status, recent_propagation_delays_us, BusStatus};
pub use cache::{
    clear_all, clear_all_blocking, invalidate_tag, invalidate_tag_blocking, Cache, CacheBuilder,
    Key, Tier, DEFAULT_CAPACITY, DEFAULT_LOCAL_TTL_CAP, DEFAULT_LOCK_LEASE,
};
pub use config::{config, init, redis_enabled, Config, ConfigBuilder};
pub use entry::{ETag, Entry, Meta, Source};
pub use error::{CacheError, InitError};
pub use observe::{Mode, ObserveReport, Verdict};
pub use shape::{OkOnly, Plain, Sharing, SomeOnly, SomeOrNone};
pub use stats::{caches, CacheInfo, Stats};

/// Caches a function. See the crate README for every option and generated item.
///
/// ```
/// use cache_runtime::cached;
///
/// #[cached(ttl = 60, key = "user:<id>")]
/// fn user_name(id: u64) -> Option<String> {
///     (id == 1).then(|| "Ada".to_string())
/// }
///
/// assert_eq!(user_name(1).as_deref(), Some("Ada"));
/// assert_eq!(user_name(2), None); // `None` is not cached without `cache_none = true`
/// assert_eq!(lookup_user_name(1).as_deref(), Some("Ada"));
/// ```
pub use cache_macros::cached;

/// The Redis tier's health as this process sees it.
///
/// ```
/// let s = cache_runtime::redis_status();
/// assert!(s.pending_writes == 0 || s.configured);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStatus {
    /// Whether a Redis URL is configured.
    pub configured: bool,
    /// The circuit breaker's state.
    pub breaker: BreakerState,
    /// Invalidations, tag invalidations and clears that Redis has not taken yet (retried in
    /// the background; meanwhile the entries they cover are not read from Redis).
    pub pending_writes: usize,
}

/// See [`RedisStatus`].
pub fn redis_status() -> RedisStatus {
    match &config::runtime().redis {
        Some(r) => RedisStatus {
            configured: true,
            breaker: r.breaker_state(),
            pending_writes: r.pending.len(),
        },
        None => RedisStatus {
            configured: false,
            breaker: BreakerState::Closed,
            pending_writes: 0,
        },
    }
}

/// Checks that Redis answers (a `PING` through the runtime's connection). Call it at boot to
/// fail fast on a wrong URL or password; cached calls themselves never fail on Redis errors.
///
/// ```no_run
/// # async fn boot() {
/// if let Err(e) = cache_runtime::health_check().await {
///     eprintln!("redis cache unavailable, serving from the source: {e}");
/// }
/// # }
/// ```
pub async fn health_check() -> Result<(), CacheError> {
    match &config::runtime().redis {
        Some(r) => r.ping().await,
        None => Err(CacheError::Unavailable(
            "no redis configured (set REDIS_URL or call cache_runtime::init)".into(),
        )),
    }
}
