//! A two-tier function cache: one attribute, a correct in-process cache (quick_cache), a shared
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
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `redis` | yes | the Redis tier (`tier = "redis"` / `"local+redis"`), the invalidation bus, `REDIS_URL` |
//! | `tls` | no | `rediss://` and [`ConfigBuilder::tls_root_certificate`] (rustls with ring) |
//! | `http` | no | the `http` module: Cache-Control, ETags, conditional requests |
//! | `axum` | no | the axum extractor of the `http` module (implies `http`) |
//! | `edge` | no | the HTTP purgers of [`edge`] (the queue and the `Purger` trait are always there) |
//! | `metrics` | yes | counters, gauges and histograms through the `metrics` facade (without it they compile away; [`Stats`] is always there) |
//!
//! `default-features = false` is a local-only cache: no redis, rustls, hyper or metrics in the
//! build.
//!
//! ---
//!
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod blocking;
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
mod breaker;
// Without Redis, the bus and the deferred writes keep only their local halves.
#[cfg_attr(not(feature = "redis"), allow(dead_code, unused_imports))]
mod bus;
mod cache;
mod clock;
mod coarse_clock;
pub mod codec;
mod config;
pub mod edge;
mod entry;
mod error;
mod flight;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod key;
mod local;
mod log_limit;
mod metrics_shim;
mod observe;
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
mod pending;
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
mod redis_request;
#[cfg(feature = "redis")]
mod redis_tier;
// Same names, no Redis: the runtime's `Option<RedisTier>` is always `None`.
#[cfg(not(feature = "redis"))]
#[allow(dead_code)]
#[path = "redis_tier_off.rs"]
mod redis_tier;
mod runtime;
pub mod shape;
mod stats;
mod tier;

#[doc(hidden)]
pub mod __private;

pub use breaker::BreakerState;
pub use bus::{bus_status, recent_propagation_delays_us, BusStatus, BUS_WINDOW};
pub use cache::{
    clear_all, clear_all_blocking, invalidate_tag, invalidate_tag_blocking, Cache, CacheBuilder,
    DEFAULT_CAPACITY, DEFAULT_LOCAL_TTL_CAP, DEFAULT_LOCK_LEASE,
};
pub use config::{Config, ConfigBuilder, WaitReplicas};
pub use entry::{ETag, Entry, Meta, Source};
pub use error::{CacheError, ErrorSource, InitError};
pub use observe::{Mode, ObserveReport, Verdict};
pub use runtime::{
    config, drain, drain_blocking, health_check, init, redis_enabled, redis_status, RedisStatus,
};
pub use shape::{OkOnly, Plain, Sharing, SomeOnly, SomeOrNone};
pub use stats::{caches, CacheInfo, Stats};
pub use tier::{Key, Tier};

/// Caches a function. Its full reference (every option, generated item, supported signature
/// and forwarded attribute, with examples) is the documentation of
/// [`cache_macros::cached`](macro@cache_macros::cached), shown below.
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
