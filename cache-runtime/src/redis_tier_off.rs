//! Stand-in for `redis_tier` when the `redis` feature is off: the same names, no Redis.
//!
//! [`RedisTier`] cannot be built (`new` reports the missing feature and the struct holds an
//! [`Infallible`]), so the runtime's `Option<RedisTier>` is always `None` and every Redis
//! branch of the cache is dead code the compiler removes. Keep the signatures in step with
//! `redis_tier/mod.rs`: only the names the rest of the crate uses are here.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::breaker::BreakerState;
use crate::config::Config;
use crate::error::{CacheError, InitError};
use crate::pending::{Added, Pending, PendingOp};

/// Never constructed: holds an [`Infallible`].
pub(crate) struct RedisTier {
    pub(crate) pending: Pending,
    never: Infallible,
}

/// The stand-in for the connection target handed to the (absent) bus subscriber.
pub(crate) struct RedisTarget(Infallible);

pub(crate) use crate::redis_request::{
    EntryKeys, Fetched, PlainRead, PlainStore, ReadKeys, ReadRequest, Stamps, StoreKeys,
    WriteRequest,
};

/// The bus subscriber (`bus::run` re-exports this without the feature): never called.
pub(crate) async fn run(
    target: Arc<RedisTarget>,
    _prefix: String,
    _timeout: Duration,
    _lost: crate::bus::SubscriptionLost,
) {
    match target.0 {}
}

/// Process-wide counts of the connection layer: always zero without Redis.
pub(crate) mod counters {
    pub(crate) fn unconfirmed_writes() -> u64 {
        0
    }
    pub(crate) fn pipelined_reads() -> (u64, u64) {
        (0, 0)
    }
}

#[allow(clippy::unused_async, dead_code)] // same signatures as the real tier
impl RedisTier {
    pub(crate) fn new(_config: &Config) -> Result<Self, InitError> {
        Err(InitError::InvalidUrl(
            "a Redis URL or Sentinel is configured, but cache-runtime was built without its \
             `redis` feature (enable it: features = [\"redis\"])"
                .into(),
        ))
    }
    pub(crate) async fn drain(&'static self, _timeout: Duration) -> bool {
        match self.never {}
    }
    pub(crate) async fn read(&self, _req: ReadRequest) -> Result<Fetched, CacheError> {
        match self.never {}
    }
    pub(crate) async fn read_plain(&self, _req: PlainRead<'_>) -> Result<Fetched, CacheError> {
        match self.never {}
    }
    pub(crate) async fn claim_tokens(
        &self,
        _ticket: Option<String>,
        _px: u64,
        _scopes: Vec<(String, bool)>,
        _new: u64,
    ) -> Result<(Option<u64>, Vec<u64>), CacheError> {
        match self.never {}
    }
    pub(crate) async fn write_if(&self, _req: WriteRequest) -> Result<bool, CacheError> {
        match self.never {}
    }
    pub(crate) async fn store_plain(&self, _req: PlainStore<'_>) -> Result<bool, CacheError> {
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
        _ticket_key: String,
        _fresh: (u64, u64),
        _channel: String,
        _message: String,
    ) -> Result<(), CacheError> {
        match self.never {}
    }
    pub(crate) async fn replace_ticket(
        &self,
        _keys: &EntryKeys,
        _ticket: u64,
        _ticket_px: u64,
        _channel: String,
        _message: String,
    ) -> Result<Stamps, CacheError> {
        match self.never {}
    }
    pub(crate) fn scope_keys(&self, _prefix: &str, _scope_key: &str) -> Vec<String> {
        match self.never {}
    }
    pub(crate) async fn invalidate_scope(
        &self,
        _keys: Vec<String>,
        _fresh: (u64, Option<u64>),
        _channel: String,
        _message: String,
    ) -> Result<(), CacheError> {
        match self.never {}
    }
    pub(crate) fn defer(&'static self, _op: PendingOp) -> Added {
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
    pub(crate) fn target(&self) -> Arc<RedisTarget> {
        match self.never {}
    }
    pub(crate) fn subscription_lost_hook(&self) -> crate::bus::SubscriptionLost {
        match self.never {}
    }
    pub(crate) async fn health_check(
        &self,
        _prefix: &str,
        _channel: &str,
    ) -> Result<(), CacheError> {
        match self.never {}
    }
}
