//! Stand-in for `redis_tier` when the `redis` feature is off: the same names, no Redis.
//!
//! [`RedisTier`] cannot be built (`new` reports the missing feature and the struct holds an
//! [`Infallible`]), so the runtime's `Option<RedisTier>` is always `None` and every Redis
//! branch of the cache is dead code the compiler removes. Keep the signatures in step with
//! `redis_tier/mod.rs`: only the names the rest of the crate uses are here.

use std::convert::Infallible;
use std::time::Duration;

use crate::breaker::BreakerState;
use crate::config::Config;
use crate::error::{CacheError, InitError};
pub(crate) use crate::log_limit::LogLimiter;
use crate::pending::{Pending, PendingOp};

/// Never constructed: holds an [`Infallible`].
pub(crate) struct RedisTier {
    pub(crate) pending: Pending,
    never: Infallible,
}

/// The stand-in for `redis::Client` handed to the (absent) bus subscriber.
#[derive(Clone)]
pub(crate) struct Client(Infallible);

#[allow(dead_code)] // the variants are matched by `cache/redis_side.rs`, never built
pub(crate) enum Fetched {
    Missing {
        stamps: Vec<u64>,
        locked: bool,
    },
    Found {
        bytes: Vec<u8>,
        pttl: Option<Duration>,
        stamps: Vec<u64>,
    },
    WrongType {
        stamps: Vec<u64>,
    },
}

pub(crate) struct EntryKeys {
    pub value: String,
    pub lock: String,
    pub stamps: Vec<String>,
}

pub(crate) struct ReadRequest {
    pub keys: EntryKeys,
    pub try_lock: Option<(String, u64)>,
}

pub(crate) struct WriteRequest {
    pub keys: EntryKeys,
    pub bytes: Vec<u8>,
    pub ttl: Duration,
    pub seen: Vec<u64>,
    pub token: Option<String>,
}

/// The bus subscriber (`bus::run` re-exports this without the feature): never called.
pub(crate) async fn run(client: Client, _channel: String, _timeout: Duration) {
    match client.0 {}
}

#[allow(clippy::unused_async)] // same signatures as the real tier
impl RedisTier {
    pub(crate) fn new(url: &str, _config: &Config) -> Result<Self, InitError> {
        let scheme = url.split("://").next().unwrap_or("redis");
        Err(InitError::InvalidUrl(format!(
            "{scheme}:// given, but cache-runtime was built without its `redis` feature \
             (enable it: features = [\"redis\"])"
        )))
    }
    pub(crate) async fn read(&self, _req: ReadRequest) -> Result<Fetched, CacheError> {
        match self.never {}
    }
    pub(crate) async fn write_if(&self, _req: WriteRequest) -> Result<bool, CacheError> {
        match self.never {}
    }
    pub(crate) async fn try_lock(
        &self,
        _lock_key: String,
        _token: String,
        _lease_ms: u64,
    ) -> Result<bool, CacheError> {
        match self.never {}
    }
    pub(crate) async fn release_lock(
        &self,
        _lock_key: String,
        _token: String,
    ) -> Result<(), CacheError> {
        match self.never {}
    }
    pub(crate) async fn invalidate(
        &self,
        _value_key: String,
        _gen_key: String,
        _retention: Duration,
        _channel: String,
        _message_prefix: String,
    ) -> Result<u64, CacheError> {
        match self.never {}
    }
    pub(crate) async fn bump_generation(
        &self,
        _stamp_keys: Vec<String>,
        _retention: Duration,
        _channel: String,
        _message_prefix: String,
    ) -> Result<Vec<u64>, CacheError> {
        match self.never {}
    }
    pub(crate) async fn bump_version(
        &self,
        _key: String,
        _channel: String,
        _message_prefix: String,
    ) -> Result<u64, CacheError> {
        match self.never {}
    }
    pub(crate) fn defer(&'static self, _op: PendingOp) {
        match self.never {}
    }
    pub(crate) fn breaker_state(&self) -> BreakerState {
        match self.never {}
    }
    pub(crate) async fn sleep(&self, _d: Duration) {
        match self.never {}
    }
    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        match self.never {}
    }
    pub(crate) fn client(&self) -> &Client {
        match self.never {}
    }
    pub(crate) async fn ping(&self) -> Result<(), CacheError> {
        match self.never {}
    }
}
