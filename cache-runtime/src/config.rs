//! Process-wide configuration: Redis URL, key prefix, timeouts, limits. Plain data; the
//! runtime built from it lives in `runtime`.

use std::time::Duration;

/// Runtime configuration, set once at start-up with [`init`](crate::init). Without `init`, the
/// first cache use configures the runtime from the environment (`REDIS_URL`), see
/// [`Config::from_env`].
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
    pub(crate) sentinel: Option<SentinelConfig>,
    pub(crate) cluster: Option<ClusterConfig>,
    pub(crate) wait_replicas: WaitReplicas,
}

/// Redis Cluster: seed nodes (any reachable node will do; the slot map is asked from them)
/// and whether reads may go to replicas.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ClusterConfig {
    /// `redis://` or `rediss://` URLs of seed nodes; credentials in the URLs apply to every
    /// node.
    pub urls: Vec<String>,
    pub read_from_replicas: bool,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact(u)).collect::<Vec<_>>(),
            )
            .field("read_from_replicas", &self.read_from_replicas)
            .finish()
    }
}

/// Redis behind Sentinel: the sentinels to ask and the name of the master they monitor.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SentinelConfig {
    /// `redis://` or `rediss://` URLs of the sentinels (their credentials, if any, are the
    /// sentinels' own).
    pub urls: Vec<String>,
    pub master: String,
    /// Credentials for the master (and replicas), which the sentinels do not hand out.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelConfig {
    // Passwords stay out of logs, in the URLs too.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConfig")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact(u)).collect::<Vec<_>>(),
            )
            .field("master", &self.master)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Whether writes (invalidate, populate, tag invalidation, clear) wait for replicas to
/// acknowledge them (`WAIT n timeout`) before they return `Ok`.
///
/// Replication is asynchronous: without `WAIT`, a failover can lose an invalidation that
/// already returned `Ok`. A write that is not confirmed in time returns `Err` and is retried
/// in the background, like a write Redis did not take. Hits never wait.
///
/// ```
/// use cache_runtime::{Config, WaitReplicas};
/// let c = Config::builder().wait_replicas(WaitReplicas::Count(2)).build();
/// assert_eq!(c.wait_replicas(), WaitReplicas::Count(2));
/// assert_eq!(Config::builder().build().wait_replicas(), WaitReplicas::Auto);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitReplicas {
    /// `WAIT 1` when the master reports at least one connected replica (`ROLE`, checked on
    /// connect and every 10 s), no `WAIT` otherwise. The default.
    #[default]
    Auto,
    /// Always `WAIT n`: a master with fewer replicas makes every write `Err`.
    Count(u32),
    /// Never wait (a failover may lose writes that returned `Ok`).
    Off,
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
            sentinel: None,
            cluster: None,
            wait_replicas: WaitReplicas::Auto,
        }
    }
}

impl Config {
    /// A builder starting from the defaults: no Redis, prefix `cr`, 100 ms Redis timeout,
    /// 1 s connect timeout, 1 MiB value cap, breaker opening after 5 failures for 1 s.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder(Config::default())
    }

    /// The defaults plus `REDIS_URL` (and `CACHE_KEY_PREFIX`) from the environment, or, with
    /// `REDIS_SENTINEL_URLS` (comma-separated sentinel URLs) and `REDIS_SENTINEL_MASTER`,
    /// Redis behind Sentinel (`REDIS_USERNAME` / `REDIS_PASSWORD`: the master's credentials),
    /// or, with `REDIS_CLUSTER_URLS` (comma-separated seed node URLs), Redis Cluster
    /// (`REDIS_READ_FROM_REPLICAS=1` sends hits to replicas; off by default).
    ///
    /// ```
    /// let c = cache_runtime::Config::from_env();
    /// assert!(!c.key_prefix().is_empty());
    /// ```
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        let mut c = Config {
            redis_url: var("REDIS_URL"),
            ..Config::default()
        };
        if let (Some(urls), Some(master)) =
            (var("REDIS_SENTINEL_URLS"), var("REDIS_SENTINEL_MASTER"))
        {
            c.sentinel = Some(SentinelConfig {
                urls: split_urls(&urls),
                master,
                username: var("REDIS_USERNAME"),
                password: var("REDIS_PASSWORD"),
            });
            c.redis_url = None;
        }
        if let Some(urls) = var("REDIS_CLUSTER_URLS") {
            c.cluster = Some(ClusterConfig {
                urls: split_urls(&urls),
                read_from_replicas: var("REDIS_READ_FROM_REPLICAS")
                    .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
            });
            c.redis_url = None;
            c.sentinel = None;
        }
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

    /// Whether Redis is configured, by URL or through Sentinel.
    pub fn redis_configured(&self) -> bool {
        self.redis_url.is_some() || self.sentinel.is_some() || self.cluster.is_some()
    }

    /// The seed node URLs, when Redis is a cluster.
    pub fn redis_cluster(&self) -> Option<&[String]> {
        self.cluster.as_ref().map(|c| c.urls.as_slice())
    }

    /// Whether hits may be served by cluster replicas (see
    /// [`ConfigBuilder::read_from_replicas`]).
    pub fn read_from_replicas(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.read_from_replicas)
    }

    /// The sentinel URLs and master name, when Redis is found through Sentinel.
    pub fn redis_sentinel(&self) -> Option<(&[String], &str)> {
        self.sentinel
            .as_ref()
            .map(|s| (s.urls.as_slice(), s.master.as_str()))
    }

    /// Whether writes wait for replicas, see [`WaitReplicas`].
    pub fn wait_replicas(&self) -> WaitReplicas {
        self.wait_replicas
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
        self.0.sentinel = None;
        self.0.cluster = None;
        self
    }

    /// Redis Cluster, found through these seed nodes (`redis://` or `rediss://` URLs of any
    /// nodes; username and password in the URLs apply to every node; with `rediss://`,
    /// [`tls_root_certificate`](Self::tls_root_certificate) is the CA trusted for every
    /// node). Uses redis-rs's cluster client: a connection per node, `MOVED` / `ASK`,
    /// slot-map refreshes. Values spread over every master (docs/PROTOCOL.md §2), the bus
    /// uses sharded pub/sub (§5.3).
    ///
    /// ```
    /// let c = cache_runtime::Config::builder()
    ///     .redis_cluster(["redis://:secret@10.0.0.1:7000", "redis://:secret@10.0.0.2:7000"])
    ///     .build();
    /// assert_eq!(c.redis_cluster().map(<[String]>::len), Some(2));
    /// assert!(c.redis_configured());
    /// assert!(!format!("{c:?}").contains("secret"));
    /// ```
    pub fn redis_cluster<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let read_from_replicas = self
            .0
            .cluster
            .as_ref()
            .is_some_and(|c| c.read_from_replicas);
        self.0.cluster = Some(ClusterConfig {
            urls: seeds.into_iter().map(Into::into).collect(),
            read_from_replicas,
        });
        self.0.redis_url = None;
        self.0.sentinel = None;
        self
    }

    /// With [`redis_cluster`](Self::redis_cluster): send hits (`MGET`) to replicas (off by
    /// default). A replica may still hold a ticket its master already deleted, so this adds
    /// the replication lag to the window of invalidations for Redis reads. Call it after
    /// `redis_cluster`.
    ///
    /// ```
    /// let c = cache_runtime::Config::builder()
    ///     .redis_cluster(["redis://10.0.0.1:7000"])
    ///     .read_from_replicas(true)
    ///     .build();
    /// assert!(c.read_from_replicas());
    /// ```
    pub fn read_from_replicas(mut self, on: bool) -> Self {
        if let Some(c) = &mut self.0.cluster {
            c.read_from_replicas = on;
        }
        self
    }

    /// Redis behind Sentinel: the master named `master`, as the `sentinels` (`redis://` or
    /// `rediss://` URLs, with the sentinels' own credentials if they need any) report it. The
    /// runtime verifies the master's role, follows failovers (a lost connection or a
    /// `READONLY` reply asks the sentinels again, never the old address), and the bus follows
    /// the same master. With `rediss://` sentinels the master is reached over TLS too.
    ///
    /// ```
    /// let c = cache_runtime::Config::builder()
    ///     .redis_sentinel(["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"], "cache")
    ///     .redis_credentials(Some("app"), "secret")
    ///     .build();
    /// let (urls, master) = c.redis_sentinel().unwrap();
    /// assert_eq!((urls.len(), master), (2, "cache"));
    /// assert!(!format!("{c:?}").contains("secret"));
    /// ```
    pub fn redis_sentinel<I, S>(mut self, sentinels: I, master: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let (username, password) = match self.0.sentinel.take() {
            Some(s) => (s.username, s.password),
            None => (None, None),
        };
        self.0.sentinel = Some(SentinelConfig {
            urls: sentinels.into_iter().map(Into::into).collect(),
            master: master.into(),
            username,
            password,
        });
        self.0.redis_url = None;
        self.0.cluster = None;
        self
    }

    /// The master's credentials when Redis is found through Sentinel (with a URL, put them
    /// in the URL). Call it after [`redis_sentinel`](Self::redis_sentinel).
    pub fn redis_credentials(mut self, username: Option<&str>, password: &str) -> Self {
        if let Some(s) = &mut self.0.sentinel {
            s.username = username.map(str::to_string);
            s.password = Some(password.to_string());
        }
        self
    }

    /// Whether writes wait for replicas (default [`WaitReplicas::Auto`]).
    pub fn wait_replicas(mut self, wait: WaitReplicas) -> Self {
        self.0.wait_replicas = wait;
        self
    }

    /// No Redis: `local+redis` caches keep their local tier, `redis` caches run the body.
    pub fn without_redis(mut self) -> Self {
        self.0.redis_url = None;
        self.0.sentinel = None;
        self.0.cluster = None;
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

/// Keeps passwords out of logs and errors (`redis://user:secret@host` → `redis://user:***@host`).
pub(crate) fn redact(s: &str) -> String {
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

/// Comma-separated URLs, trimmed, empty ones dropped.
fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect()
}
