//! Process-wide configuration: Redis URL, key prefix, timeouts, limits. Plain data; the
//! runtime built from it lives in `runtime`.

use std::time::Duration;

/// Runtime configuration, set once at start-up with [`init`]. Without `init`, the first cache
/// use configures the runtime from the environment (`REDIS_URL`), see [`Config::from_env`].
///
/// ```
/// use cache_runtime::Config;
/// use std::time::Duration;
/// let config = Config::builder()
///     .redis_url("redis://127.0.0.1:6379/0")
///     .key_prefix("myapp")
///     .redis_timeout(Duration::from_millis(50))
///     .build();
/// assert_eq!(config.key_prefix(), "myapp");
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) redis_url: Option<String>,
    pub(crate) key_prefix: String,
    pub(crate) redis_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_value_bytes: usize,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) tls_root_pem: Option<Vec<u8>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: "cr".to_string(),
            redis_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            max_value_bytes: 1 << 20,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
            tls_root_pem: None,
        }
    }
}

impl Config {
    /// A builder starting from the defaults: no Redis, prefix `cr`, 100 ms Redis timeout,
    /// 1 s connect timeout, 1 MiB value cap, breaker opening after 5 failures for 1 s.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder(Config::default())
    }

    /// The defaults plus `REDIS_URL` (and `CACHE_KEY_PREFIX`) from the environment.
    pub fn from_env() -> Self {
        let mut c = Config {
            redis_url: std::env::var("REDIS_URL").ok().filter(|s| !s.is_empty()),
            ..Config::default()
        };
        if let Ok(p) = std::env::var("CACHE_KEY_PREFIX") {
            if !p.is_empty() {
                c.key_prefix = p;
            }
        }
        c
    }

    /// The Redis URL, if any.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis_url.as_deref()
    }

    /// The global key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// Timeout of each Redis operation.
    pub fn redis_timeout(&self) -> Duration {
        self.redis_timeout
    }

    /// Largest encoded value written to Redis.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }
}

/// Builds a [`Config`].
///
/// ```
/// let c = cache_runtime::Config::builder().max_value_bytes(4096).build();
/// assert_eq!(c.max_value_bytes(), 4096);
/// ```
#[derive(Debug, Clone)]
pub struct ConfigBuilder(Config);

impl ConfigBuilder {
    /// Redis to use for `redis` and `local+redis` caches (`redis://`, `rediss://`, `unix://`).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.0.redis_url = Some(url.into());
        self
    }

    /// No Redis: `local+redis` caches keep their local tier, `redis` caches run the body.
    pub fn without_redis(mut self) -> Self {
        self.0.redis_url = None;
        self
    }

    /// First segment of every Redis key (default `cr`). Use one per application.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.0.key_prefix = prefix.into();
        self
    }

    /// Timeout of each Redis operation, connection included (default 100 ms). On timeout a
    /// lookup is a miss and a write is skipped.
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.0.redis_timeout = timeout;
        self
    }

    /// Timeout of one (re)connection attempt in the background (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.0.connect_timeout = timeout;
        self
    }

    /// Largest encoded value written to or decoded from Redis (default 1 MiB). Larger values
    /// stay in the local tier only, and are counted in `Stats::oversize`.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.0.max_value_bytes = bytes;
        self
    }

    /// Consecutive Redis failures (timeouts, lost connections) that open the circuit breaker
    /// (default 5). While open, Redis is skipped without waiting.
    pub fn breaker_threshold(mut self, failures: u32) -> Self {
        self.0.breaker_threshold = failures;
        self
    }

    /// How long the breaker stays open before one probe (default 1 s).
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.0.breaker_cooldown = cooldown;
        self
    }

    /// For `rediss://` URLs: trust this CA certificate (PEM) instead of the system's roots,
    /// e.g. a private CA of your Redis deployment.
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.0.tls_root_pem = Some(pem.into());
        self
    }

    /// The configuration.
    pub fn build(self) -> Config {
        self.0
    }
}
