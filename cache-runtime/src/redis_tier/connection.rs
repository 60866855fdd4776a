//! The connection state machine (`Idle { retry_at } → Connecting → Ready`), reconnects with
//! backoff in the background, TLS clients, and how a failed operation is classified.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisError;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::CacheError;
use crate::log_limit::LogLimiter;

pub(super) enum ConnState {
    Idle {
        retry_at: Instant,
        failures: u32,
        last_error: String,
    },
    Connecting(watch::Receiver<bool>),
    Ready(ConnectionManager),
}

/// What the Redis thread and every caller share: the client, the timeouts, the connection
/// state and the connection's log limiter.
pub(super) struct Shared {
    pub(super) client: redis::Client,
    pub(super) connect_timeout: Duration,
    pub(super) op_timeout: Duration,
    pub(super) state: Mutex<ConnState>,
    pub(super) log: LogLimiter,
}

impl Shared {
    pub(super) fn new(client: redis::Client, config: &Config) -> Self {
        Shared {
            client,
            connect_timeout: config.connect_timeout,
            op_timeout: config.redis_timeout,
            state: Mutex::new(ConnState::Idle {
                retry_at: Instant::now(),
                failures: 0,
                last_error: String::new(),
            }),
            log: LogLimiter::default(),
        }
    }

    /// The connection if it is up (no waiting).
    pub(super) fn ready(&self) -> Option<ConnectionManager> {
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            ConnState::Ready(c) => Some(c.clone()),
            _ => None,
        }
    }

    /// Classifies a failed operation; a lost connection makes later operations fail fast
    /// (instead of each waiting for the manager's own reconnect attempts) while it reconnects
    /// in the background.
    pub(super) fn failed_op(&self, e: RedisError) -> CacheError {
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
    pub(super) async fn connection(self: &Arc<Self>) -> Result<ConnectionManager, CacheError> {
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

/// Without the `tls` feature: `rediss://` and a custom root certificate are refused with a
/// message naming the feature.
#[cfg(not(feature = "tls"))]
pub(super) fn open_client(
    url: &str,
    root_pem: Option<Vec<u8>>,
) -> redis::RedisResult<redis::Client> {
    if url.starts_with("rediss://") || root_pem.is_some() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "rediss:// (TLS) needs cache-runtime's `tls` feature (features = [\"tls\"])",
        )));
    }
    redis::Client::open(url)
}

/// A client for `url`; `rediss://` uses rustls (ring), with `root_pem` as the only trusted CA
/// when given, the system's roots otherwise.
#[cfg(feature = "tls")]
pub(super) fn open_client(
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
pub(super) fn redact(s: &str) -> String {
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
