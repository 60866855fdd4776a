//! Errors reported by operations that must say whether Redis took part.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
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
/// `Unavailable`, `Redis` and `Encode` carry an [`ErrorSource`]: the message (credentials
/// redacted) and, when there is one, the underlying error, which stays in the
/// [`source()`](std::error::Error::source) chain:
///
/// ```
/// use std::error::Error as _;
/// use cache_runtime::{CacheError, ErrorSource};
///
/// let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
/// let e = CacheError::Unavailable(ErrorSource::new(refused));
/// assert_eq!(e.to_string(), "redis is unavailable: refused");
///
/// let source = e.source().unwrap().downcast_ref::<ErrorSource>().unwrap();
/// let io = source.downcast_ref::<std::io::Error>().unwrap();
/// assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
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
    Unavailable(#[source] ErrorSource),
    /// The circuit breaker is open after repeated failures: Redis was not tried.
    #[error("redis skipped: circuit breaker open after repeated failures")]
    CircuitOpen,
    /// Redis answered with an error (for example `NOPERM`).
    #[error("redis error: {0}")]
    Redis(#[source] ErrorSource),
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
    Encode(#[source] ErrorSource),
}

/// What a [`CacheError`] wraps: a message and, when there is one, the underlying error (a
/// `redis::RedisError`, a join error, ...).
///
/// It displays as the message, which has credentials redacted (the underlying error's own
/// text may not). In a [`source()`](std::error::Error::source) chain it stands for the
/// underlying error: [`downcast_ref`](Self::downcast_ref) gives that error, and
/// `source()` continues with that error's own source (an `io::Error`, ...). Cheap to clone
/// (an `Arc`); equal when the messages are. It dereferences to the message, as the `String`
/// these variants used to hold did.
///
/// ```
/// use std::error::Error;
/// use cache_runtime::{CacheError, ErrorSource};
///
/// // An underlying error with a cause of its own.
/// #[derive(Debug)]
/// struct Handshake(std::io::Error);
/// impl std::fmt::Display for Handshake {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("handshake with redis://user:secret@db:6379 failed")
///     }
/// }
/// impl Error for Handshake {
///     fn source(&self) -> Option<&(dyn Error + 'static)> {
///         Some(&self.0)
///     }
/// }
///
/// let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
/// let source = ErrorSource::with_message("handshake with redis://user:***@db:6379 failed", Handshake(reset));
/// let e = CacheError::Unavailable(source);
/// assert_eq!(e.to_string(), "redis is unavailable: handshake with redis://user:***@db:6379 failed");
///
/// // The chain: the ErrorSource (the redacted message, standing for `Handshake`), then
/// // `Handshake`'s own source.
/// let first = e.source().unwrap();
/// assert!(!first.to_string().contains("secret"));
/// assert!(first.downcast_ref::<ErrorSource>().unwrap().downcast_ref::<Handshake>().is_some());
/// let io = first.source().unwrap().downcast_ref::<std::io::Error>().unwrap();
/// assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
///
/// // A message alone (no underlying error), as the variants' `String`s were.
/// let e = CacheError::Redis("NOPERM".into());
/// assert!(matches!(&e, CacheError::Redis(m) if m.contains("NOPERM")));
/// assert!(e.source().unwrap().source().is_none());
/// ```
#[derive(Clone)]
pub struct ErrorSource {
    message: Arc<str>,
    error: Option<Arc<dyn Error + Send + Sync + 'static>>,
}

impl ErrorSource {
    /// Wraps `error`; the message is its `Display` text.
    ///
    /// ```
    /// let e = cache_runtime::ErrorSource::new(std::fmt::Error);
    /// assert_eq!(e.message(), std::fmt::Error.to_string());
    /// ```
    pub fn new<E: Error + Send + Sync + 'static>(error: E) -> Self {
        Self {
            message: error.to_string().into(),
            error: Some(Arc::new(error)),
        }
    }

    /// Wraps `error` with another message (e.g. with credentials redacted, or with context).
    ///
    /// ```
    /// let e = cache_runtime::ErrorSource::with_message("PING failed", std::fmt::Error);
    /// assert_eq!(e.to_string(), "PING failed");
    /// assert!(e.downcast_ref::<std::fmt::Error>().is_some());
    /// ```
    pub fn with_message<E: Error + Send + Sync + 'static>(
        message: impl Into<String>,
        error: E,
    ) -> Self {
        Self {
            message: message.into().into(),
            error: Some(Arc::new(error)),
        }
    }

    /// The same underlying error with the message rewritten by `f` (context added, ...).
    ///
    /// ```
    /// let e = cache_runtime::ErrorSource::new(std::fmt::Error);
    /// let e = e.map_message(|m| format!("SET: {m}"));
    /// assert!(e.message().starts_with("SET: "));
    /// assert!(e.downcast_ref::<std::fmt::Error>().is_some());
    /// ```
    pub fn map_message(self, f: impl FnOnce(&str) -> String) -> Self {
        Self {
            message: f(&self.message).into(),
            error: self.error,
        }
    }

    /// The message (credentials redacted).
    ///
    /// ```
    /// assert_eq!(cache_runtime::ErrorSource::from("down").message(), "down");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The underlying error, if there is one.
    ///
    /// ```
    /// assert!(cache_runtime::ErrorSource::from("down").get_ref().is_none());
    /// assert!(cache_runtime::ErrorSource::new(std::fmt::Error).get_ref().is_some());
    /// ```
    pub fn get_ref(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        self.error.as_deref()
    }

    /// The underlying error as `E`, if it is one.
    ///
    /// ```
    /// let e = cache_runtime::ErrorSource::new(std::fmt::Error);
    /// assert!(e.downcast_ref::<std::fmt::Error>().is_some());
    /// assert!(e.downcast_ref::<std::io::Error>().is_none());
    /// ```
    pub fn downcast_ref<E: Error + 'static>(&self) -> Option<&E> {
        self.error.as_deref()?.downcast_ref()
    }
}

impl fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for ErrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            None => fmt::Debug::fmt(&*self.message, f),
            Some(e) => f
                .debug_struct("ErrorSource")
                .field("message", &&*self.message)
                .field("error", e)
                .finish(),
        }
    }
}

impl Error for ErrorSource {
    /// The underlying error's source: this value stands for the underlying error itself (see
    /// [`ErrorSource::downcast_ref`]), so a chain shows its (redacted) message once.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.error.as_deref()?.source()
    }
}

/// By message: two errors that read the same are the same to a caller.
impl PartialEq for ErrorSource {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for ErrorSource {}

impl std::ops::Deref for ErrorSource {
    type Target = str;

    fn deref(&self) -> &str {
        &self.message
    }
}

/// A message without an underlying error.
impl From<String> for ErrorSource {
    fn from(message: String) -> Self {
        Self {
            message: message.into(),
            error: None,
        }
    }
}

/// A message without an underlying error.
impl From<&str> for ErrorSource {
    fn from(message: &str) -> Self {
        Self {
            message: message.into(),
            error: None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Root;

    impl fmt::Display for Root {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("root cause")
        }
    }

    impl Error for Root {}

    /// An underlying error with a source (`io::Error` delegates `source()` to its inner
    /// error, so it cannot play this part).
    #[derive(Debug)]
    struct Wrapped(Root);

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    /// The chain of a wrapped error: `CacheError` → the `ErrorSource` (the underlying error,
    /// by `downcast_ref`) → the underlying error's own source.
    #[test]
    fn the_source_chain_reaches_the_underlying_error() {
        for e in [
            CacheError::Unavailable(ErrorSource::with_message(
                "redis://***@h reset",
                Wrapped(Root),
            )),
            CacheError::Redis(ErrorSource::new(Wrapped(Root))),
            CacheError::Encode(ErrorSource::new(Wrapped(Root))),
        ] {
            let first = e.source().expect("a wrapped error has a source");
            let wrapped = first.downcast_ref::<ErrorSource>().unwrap();
            assert!(wrapped.downcast_ref::<Wrapped>().is_some(), "{e:?}");
            let mut chain = Vec::new();
            let mut next = Some(first);
            while let Some(s) = next {
                chain.push(s.to_string());
                next = s.source();
            }
            assert!(first.source().unwrap().is::<Root>(), "{chain:?}");
            assert_eq!(chain.last().map(String::as_str), Some("root cause"));
            assert_eq!(chain.len(), 2, "{chain:?}");
        }
        // The Display texts are unchanged; redacted messages stay redacted.
        let e = CacheError::Unavailable(ErrorSource::with_message(
            "redis://***@h reset",
            std::io::Error::other("redis://u:secret@h reset"),
        ));
        assert_eq!(e.to_string(), "redis is unavailable: redis://***@h reset");
        assert!(!format!("{}", e.source().unwrap()).contains("secret"));
    }

    #[test]
    fn messages_alone_compare_and_deref_as_before() {
        let a = CacheError::Redis("NOPERM this user has no permissions".into());
        let b = CacheError::Redis(ErrorSource::with_message(
            "NOPERM this user has no permissions",
            Root,
        ));
        assert_eq!(a, b.clone());
        assert_eq!(
            a.to_string(),
            "redis error: NOPERM this user has no permissions"
        );
        let CacheError::Redis(msg) = &a else {
            unreachable!()
        };
        assert!(msg.to_uppercase().contains("NOPERM"));
        assert!(a.source().unwrap().source().is_none());
        assert_eq!(
            format!("{msg:?}"),
            "\"NOPERM this user has no permissions\""
        );
    }
}
