//! Errors reported by operations that must say whether Redis took part.

use std::time::Duration;

/// Why an explicit cache operation (`invalidate_*`, `populate_*`, [`Cache::invalidate`],
/// [`Cache::populate`]) could not be confirmed by Redis.
///
/// Lookups never return this: a Redis failure on the read path is a miss and the body runs.
/// The local tier is always updated before this error is reported.
///
/// ```
/// use cache_runtime::CacheError;
/// let e = CacheError::Timeout(std::time::Duration::from_millis(100));
/// assert!(e.to_string().contains("100ms"));
/// ```
///
/// [`Cache::invalidate`]: crate::Cache::invalidate
/// [`Cache::populate`]: crate::Cache::populate
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// Redis did not answer within the configured operation timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis could not be reached (connection refused, reconnect backoff in progress, ...).
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    /// The circuit breaker is open after repeated failures: Redis was not tried.
    #[error("redis skipped: circuit breaker open after repeated failures")]
    CircuitOpen,
    /// Redis answered with an error (for example `NOPERM`).
    #[error("redis error: {0}")]
    Redis(String),
    /// The encoded value is larger than `Config::max_value_bytes`; it was kept locally only.
    #[error("encoded value is {size} bytes, above the {limit}-byte cap for redis")]
    TooLarge {
        /// Encoded size of the value.
        size: usize,
        /// The configured cap.
        limit: usize,
    },
    /// The value could not be encoded.
    #[error("value could not be encoded: {0}")]
    Encode(String),
}

/// Returned by [`init`](crate::init) when the runtime was already configured or used.
///
/// ```
/// use cache_runtime::{init, Config, InitError};
/// // The first call wins; a second one reports the conflict instead of silently reconfiguring.
/// let first = init(Config::builder().build());
/// assert!(first.is_ok() || first == Err(InitError::AlreadyInitialized));
/// assert_eq!(init(Config::builder().build()), Err(InitError::AlreadyInitialized));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// `init` was called after the runtime was configured (explicitly, or implicitly from
    /// `REDIS_URL` by the first cache use).
    #[error(
        "cache_runtime is already initialised; call init() once, before the first cached call"
    )]
    AlreadyInitialized,
    /// The Redis URL does not parse.
    #[error("invalid redis url: {0}")]
    InvalidUrl(String),
}
