//! The invalidation bus: Redis pub/sub messages that evict local copies in every process.
//!
//! Writes (`invalidate`, `populate`, `refresh`, tag invalidations, clears) publish in the
//! same pipeline or Lua script that changes Redis, after the change, in the same round trip.
//! Reads that fill the cache publish nothing.
//!
//! A message is one line of fields separated by `0x1F`:
//!
//! ```text
//! C1 ␟ sender instance (hex) ␟ action ␟ sent at (Unix µs) ␟ target ␟ counter
//! ```
//!
//! `action` is `I` (key invalidated), `U` (key written), `T` (tag invalidated), `C` (cache
//! cleared, target = cache name) or `A` (all cleared). `counter` is the key's generation or the
//! version after the write; it is appended by the script. Values never travel on the bus.
//!
//! The subscriber runs on the Redis thread (over RESP3 its connection's driver applies each
//! message as it parses it; over RESP2, where `HELLO 3` is refused, a task reads the
//! `aio::PubSub` stream), reconnects with backoff, and clears the local tier of every
//! `local+redis` cache whenever it loses or (re)establishes its subscription,
//! since messages may have been lost meanwhile (Redis loses pub/sub messages only together
//! with the connection).
//!
//! **Trust** (docs/PROTOCOL.md §5.4). The subscriber probes its own subscription with `PING`
//! every [`BUS_WINDOW`]` / 4`. Replies come in order with the messages, so when the reply to
//! a probe sent at `p` arrives, every message published before `p` has been received. The
//! bus is trusted until `p + BUS_WINDOW` for the latest answered probe: while trusted, a
//! message not yet received was published less than [`BUS_WINDOW`] ago. While not trusted
//! (disconnected, resubscribing, a hung server, a subscriber far behind), `local+redis`
//! caches do not serve their local copies: calls go on to Redis, whose tickets and scope
//! tokens are always current. So a lost subscriber costs round trips, never stale values
//! beyond the window. Readers check the deadline against the clock themselves, so trust
//! lapses on time even while the subscriber task waits for a CPU.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;

use crate::clock;
use crate::coarse_clock::{AtomicSurelyBefore, SurelyBefore};
use crate::metrics_shim as metrics;

/// Version of the message format; part of the channel name.
pub const BUS_VERSION: u32 = 1;

/// How stale another process's write may leave this process's local copies: the bus is
/// trusted for this long after the last answered probe (docs/PROTOCOL.md §5.4).
///
/// ```
/// // Another process's Ok invalidation stops this process's local copies within this bound.
/// assert_eq!(cache_runtime::BUS_WINDOW, std::time::Duration::from_millis(250));
/// ```
pub const BUS_WINDOW: Duration = Duration::from_millis(250);

/// Until when this process's local copies may be served (docs/PROTOCOL.md §5.4).
static TRUST: Trust = Trust::new();

/// A trust deadline that readers check against the monotonic clock themselves, so that trust
/// lapses on time even when the subscriber task is not scheduled (a starved Redis thread, a
/// stalled process): a flag set and cleared by that task would stay `true` past its deadline
/// for as long as the task waits for a CPU, and with it local copies another process has
/// invalidated.
///
/// Readers check the deadline on the coarse clock first ([`coarse_clock`](crate::coarse_clock)):
/// while it is more than `MAX_LAG` away, a local hit reads no precise clock for it. The one
/// writer (the subscriber task) clears the coarse check before it moves `until_us`, and sets
/// it after: a coarse check that holds was computed from the deadline in force.
struct Trust {
    /// µs on [`clock::mono_us`]; 0: not trusted.
    until_us: AtomicU64,
    /// `until_us` on the coarse clock.
    surely: AtomicSurelyBefore,
}

impl Trust {
    const fn new() -> Self {
        Trust {
            until_us: AtomicU64::new(0),
            surely: AtomicSurelyBefore::new(),
        }
    }

    /// Trusted now.
    #[inline]
    fn trusted(&self) -> bool {
        self.surely.load().holds() || self.trusted_at(Instant::now())
    }

    fn trusted_at(&self, now: Instant) -> bool {
        let until = self.until_us.load(Ordering::Acquire);
        until != 0 && (clock::mono_us(now) as u64) < until
    }

    /// Trusted until `deadline`. Returns `(was trusted, lapsed unnoticed)`.
    fn extend(&self, deadline: Instant, now: Instant) -> (bool, bool) {
        let until = (clock::mono_us(deadline) as u64).max(1);
        self.surely.store(SurelyBefore::NEVER);
        let old = self.until_us.swap(until, Ordering::AcqRel);
        self.surely.store(SurelyBefore::new(deadline));
        let was = old != 0 && (clock::mono_us(now) as u64) < old;
        (was, old != 0 && !was)
    }

    /// Not trusted from now on. Returns whether it was trusted (or lapsed unnoticed).
    fn revoke(&self) -> bool {
        self.surely.store(SurelyBefore::NEVER);
        self.until_us.swap(0, Ordering::AcqRel) != 0
    }
}

/// Whether local copies of `local+redis` caches may be served now: the subscription is up
/// and a probe sent less than [`BUS_WINDOW`] ago was answered.
#[inline]
pub(crate) fn trusted() -> bool {
    TRUST.trusted()
}

/// Trusted until `deadline` (the send of an answered probe + [`BUS_WINDOW`]).
fn trust_until(deadline: Instant) {
    let now = Instant::now();
    let (was, lapsed) = TRUST.extend(deadline, now);
    if lapsed {
        counters().distrusted.fetch_add(1, Ordering::Relaxed);
    }
    let is = TRUST.trusted_at(now);
    if is != was {
        metrics::gauge!("cache_bus_trusted").set(if is { 1.0 } else { 0.0 });
    }
}

/// The deadline passed without a newer answer: not trusted any more (reported once; readers
/// stopped trusting at the deadline already).
fn distrust_if_lapsed() {
    if !trusted() {
        distrust();
    }
}

/// Not trusted (a lost subscription, or the deadline passed without a newer answer).
fn distrust() {
    if TRUST.revoke() {
        metrics::gauge!("cache_bus_trusted").set(0.0);
        counters().distrusted.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a message asks the receivers to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Invalidated,
    Updated,
    Tag,
    ClearCache,
    ClearAll,
}

impl Action {
    fn code(self) -> char {
        match self {
            Action::Invalidated => 'I',
            Action::Updated => 'U',
            Action::Tag => 'T',
            Action::ClearCache => 'C',
            Action::ClearAll => 'A',
        }
    }

    fn from_code(s: &str) -> Option<Self> {
        Some(match s {
            "I" => Action::Invalidated,
            "U" => Action::Updated,
            "T" => Action::Tag,
            "C" => Action::ClearCache,
            "A" => Action::ClearAll,
            _ => return None,
        })
    }
}

const SEP: char = '\u{1f}';

/// This process's id on the bus (random per process).
pub(crate) fn instance_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    // Not from `fastrand`, whose seed is the monotonic clock: OS-seeded, so two hosts or
    // processes never share an id (a process ignores messages carrying its own).
    *ID.get_or_init(|| {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new()
            .hash_one((std::process::id(), clock::now_unix_us()))
    })
}

/// The message without its counter, which the publishing script appends:
/// `C<version> <origin> <action> <sent µs> <target> ` (separated by `SEP`). Written piece by
/// piece into one sized buffer (one is built per invalidation).
pub(crate) fn message_prefix(action: Action, target: &str) -> String {
    let mut m = String::with_capacity(target.len() + 56);
    let mut digits = itoa::Buffer::new();
    m.push('C');
    m.push_str(digits.format(BUS_VERSION));
    m.push(SEP);
    // The origin is 16 ASCII hex digits.
    m.push_str(std::str::from_utf8(own_origin()).unwrap_or_default());
    m.push(SEP);
    m.push(action.code());
    m.push(SEP);
    m.push_str(digits.format(clock::now_unix_us()));
    m.push(SEP);
    m.push_str(target);
    m.push(SEP);
    m
}

/// A complete key message (`I`/`U`): receivers evict unconditionally, so its counter is 0.
pub(crate) fn message(action: Action, target: &str) -> String {
    let mut m = message_prefix(action, target);
    m.push('0');
    m
}

#[derive(Debug, PartialEq)]
pub(crate) struct Message<'a> {
    pub sender: u64,
    pub action: Action,
    pub sent_us: u64,
    pub target: &'a str,
    pub counter: u64,
}

pub(crate) fn parse(payload: &str) -> Option<Message<'_>> {
    let mut head = payload.splitn(5, SEP);
    if head.next()? != format!("C{BUS_VERSION}") {
        return None;
    }
    let sender = u64::from_str_radix(head.next()?, 16).ok()?;
    let action = Action::from_code(head.next()?)?;
    let sent_us = head.next()?.parse().ok()?;
    let (target, counter) = head.next()?.rsplit_once(SEP)?;
    Some(Message {
        sender,
        action,
        sent_us,
        target,
        counter: counter.parse().ok()?,
    })
}

/// The channel of a key prefix.
pub(crate) fn channel(prefix: &str) -> String {
    format!("{prefix}:bus:{BUS_VERSION}")
}

/// Cluster: the shard channel of a bucket, `{prefix:b}:bus:1`, in the bucket's slot (so a
/// write publishes with `SPUBLISH` on the master it writes to, in the same round trip).
pub(crate) fn shard_channel(prefix: &str, bucket: u32) -> String {
    format!("{{{prefix}:{bucket}}}:bus:{BUS_VERSION}")
}

/// The shard channel of a key's bucket: the key's hash tag + `:bus:1`.
pub(crate) fn shard_channel_of(key: &str) -> String {
    let tag_end = key.find('}').map_or(key.len(), |i| i + 1);
    format!("{}:bus:{BUS_VERSION}", &key[..tag_end])
}

/// A local tier that the bus can evict.
pub(crate) trait Target: Send + Sync {
    /// What a cache-clear message (`C`) names: the cache's clear scope.
    fn clear_scope(&self) -> &str;
    /// Whether it fronts Redis (`local+redis` with Redis configured): such tiers are
    /// cleared whenever the bus may have lost messages.
    fn shared(&self) -> bool;
    /// Evict `key`, whatever the local copy (no counter comparison: a flush that resets
    /// counters cannot make a receiver keep an old copy). `generation` is informative.
    fn evict(&self, key: &str, generation: u64);
    fn evict_tag(&self, tag: &str);
    fn clear(&self);
}

static TARGETS: Mutex<Vec<Weak<dyn Target>>> = Mutex::new(Vec::new());

pub(crate) fn register(target: Weak<dyn Target>) {
    let mut targets = TARGETS.lock().unwrap_or_else(|p| p.into_inner());
    targets.retain(|t| t.strong_count() > 0);
    targets.push(target);
}

fn each_target(mut f: impl FnMut(&dyn Target)) {
    let targets: Vec<Arc<dyn Target>> = TARGETS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for t in targets {
        f(t.as_ref());
    }
}

fn clear_shared() {
    each_target(|t| {
        if t.shared() {
            t.clear()
        }
    });
}

/// Applies an action to this process's local tiers (for messages from others, and for this
/// process's own writes, which do not wait for their echo).
pub(crate) fn apply_locally(action: Action, target: &str, counter: u64) {
    match action {
        Action::Invalidated | Action::Updated => each_target(|t| t.evict(target, counter)),
        Action::Tag => each_target(|t| t.evict_tag(target)),
        Action::ClearCache => each_target(|t| {
            if t.clear_scope() == target {
                t.clear()
            }
        }),
        Action::ClearAll => each_target(|t| t.clear()),
    }
}

/// State of this process's subscription.
///
/// ```
/// let s = cache_runtime::bus_status();
/// assert!(s.received >= s.applied);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStatus {
    /// Whether this process subscribes (docs/PROTOCOL.md §5.2): since its first cache with a
    /// local tier was built, or where only the subscription notices a restart (Sentinel, a
    /// cluster, a server or ACL that refuses client tracking). A process whose caches are all
    /// Redis-only does not: it publishes its writes for the others, and hears nothing.
    pub wanted: bool,
    /// Whether the subscription is up now.
    pub connected: bool,
    /// Times the subscription was (re)established.
    pub subscriptions: u64,
    /// Messages received from other processes (this process's own are dropped unread).
    pub received: u64,
    /// Messages from other processes that were applied.
    pub applied: u64,
    /// Messages that did not parse (other versions, foreign publishers).
    pub rejected: u64,
    /// Whether the bus is trusted now (local copies of `local+redis` caches are served).
    pub trusted: bool,
    /// Times the bus stopped being trusted (a lost subscription, a probe unanswered for
    /// [`BUS_WINDOW`]).
    pub distrusted: u64,
}

#[derive(Default)]
struct Counters {
    connected: AtomicBool,
    subscriptions: AtomicU64,
    received: AtomicU64,
    applied: AtomicU64,
    rejected: AtomicU64,
    distrusted: AtomicU64,
}

static COUNTERS: OnceLock<Counters> = OnceLock::new();
static DELAYS: Mutex<VecDeque<u64>> = Mutex::new(VecDeque::new());
const DELAY_SAMPLES: usize = 4096;

fn counters() -> &'static Counters {
    COUNTERS.get_or_init(Counters::default)
}

/// The subscription's state and counters.
pub fn bus_status() -> BusStatus {
    let c = counters();
    BusStatus {
        wanted: STARTED.load(Ordering::Relaxed),
        connected: c.connected.load(Ordering::Relaxed),
        subscriptions: c.subscriptions.load(Ordering::Relaxed),
        received: c.received.load(Ordering::Relaxed),
        applied: c.applied.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        trusted: trusted(),
        distrusted: c.distrusted.load(Ordering::Relaxed),
    }
}

/// Delays (µs, sender's clock at publish → this process applying the eviction) of the most
/// recent messages from other processes on this host, oldest first. For measuring
/// propagation; across hosts it includes clock skew.
pub fn recent_propagation_delays_us() -> Vec<u64> {
    DELAYS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .copied()
        .collect()
}

/// This process's origin as it appears in its messages (bytes 3..19).
fn own_origin() -> &'static [u8; 16] {
    static HEX: OnceLock<[u8; 16]> = OnceLock::new();
    HEX.get_or_init(|| {
        let mut out = [0u8; 16];
        out.copy_from_slice(format!("{:016x}", instance_id()).as_bytes());
        out
    })
}

fn handle(payload: &[u8]) {
    // Own messages are dropped before any parsing or counting (PROTOCOL §5.2): the writer
    // applied its write locally before returning.
    if payload.get(3..19) == Some(own_origin().as_slice()) {
        return;
    }
    let c = counters();
    c.received.fetch_add(1, Ordering::Relaxed);
    let Some(msg) = std::str::from_utf8(payload).ok().and_then(parse) else {
        c.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cache_bus_messages_total", "result" => "rejected").increment(1);
        return;
    };
    if msg.sender == instance_id() {
        return;
    }
    apply_locally(msg.action, msg.target, msg.counter);
    c.applied.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("cache_bus_messages_total", "result" => "applied").increment(1);
    let delay = clock::now_unix_us().saturating_sub(msg.sent_us);
    let mut d = DELAYS.lock().unwrap_or_else(|p| p.into_inner());
    if d.len() == DELAY_SAMPLES {
        d.pop_front();
    }
    d.push_back(delay);
}

/// Without the `redis` feature: a stand-in that is never called.
#[cfg(not(feature = "redis"))]
pub(crate) use crate::redis_tier::run;

/// How long a subscription must stay up for the reconnect backoff to start over.
const HEALTHY: Duration = Duration::from_secs(10);

/// A subscription (single node or every shard) took effect: counted, and every shared local
/// copy dropped, since messages sent before it are lost. Trust comes back with the first
/// probe answered after this.
#[cfg(feature = "redis")]
fn subscribed() {
    let c = counters();
    c.subscriptions.fetch_add(1, Ordering::Relaxed);
    c.connected.store(true, Ordering::Relaxed);
    metrics::gauge!("cache_bus_connected").set(1.0);
    clear_shared();
}

/// Called by [`run`] when a subscription it had is lost.
pub(crate) type SubscriptionLost = Box<dyn Fn() + Send + Sync>;

/// How to start the subscription (spawn [`run`]), until it is started.
type Start = Box<dyn FnOnce() + Send>;

static START: Mutex<Option<Start>> = Mutex::new(None);
static WANTED: AtomicBool = AtomicBool::new(false);
/// The subscriber was started (with a Redis tier configured, and wanted).
static STARTED: AtomicBool = AtomicBool::new(false);

/// The subscription is needed from now on: started now if the Redis tier is built, else as
/// soon as it is ([`start_on_demand`]). What needs it (docs/PROTOCOL.md §5.2): a cache with
/// a local tier (its copies are served only while the bus is trusted, and other processes'
/// writes evict them), and restarts that only the subscription notices (§8.2: a reader
/// without client tracking, Sentinel, a cluster). A process whose caches are all Redis-only
/// on a single node with tracking has no subscriber: its writes publish for others, and no
/// message, echo of its own writes included, wakes it.
pub(crate) fn want() {
    if WANTED.load(Ordering::Acquire) {
        return;
    }
    WANTED.store(true, Ordering::SeqCst);
    start_if_wanted();
}

/// Whether this process subscribes (the subscriber was started): its own messages then echo
/// back to it, which is what the invalidation lane's reply order is for (docs/PROTOCOL.md
/// §7.4); a process that does not is sent plain pipelines.
pub(crate) fn subscribes() -> bool {
    STARTED.load(Ordering::Relaxed)
}

/// Hands the bus how to start its subscription; `now`: start it at once (wanted whatever
/// the caches, [`want`]).
pub(crate) fn start_on_demand(start: Start, now: bool) {
    *START.lock().unwrap_or_else(|p| p.into_inner()) = Some(start);
    if now {
        WANTED.store(true, Ordering::SeqCst);
    }
    start_if_wanted();
}

/// Both sides set their half (`WANTED`, `START`) before they look at the other's, so the
/// later of the two starts it, once.
fn start_if_wanted() {
    if !WANTED.load(Ordering::SeqCst) {
        return;
    }
    let start = START.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(start) = start {
        STARTED.store(true, Ordering::Relaxed);
        start();
    }
}

/// Runs forever on the Redis thread: subscribe, apply, reconnect.
#[cfg(feature = "redis")]
pub(crate) async fn run(
    client: Arc<crate::redis_tier::RedisTarget>,
    prefix: String,
    timeout: Duration,
    lost: SubscriptionLost,
) {
    let channel = channel(&prefix);
    // After a failure 100 ms, doubling up to 1.6 s; after a clean end 50 ms (the first
    // delay of a fresh backoff, skipped before the first failure).
    let backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(1600))
        .without_max_times();
    let mut delays = backoff.build();
    delays.next();
    let mut failures: u32 = 0;
    loop {
        let started = tokio::time::Instant::now();
        let res = match &*client {
            crate::redis_tier::RedisTarget::Cluster(c) => {
                cluster::subscribe_and_listen(c, &prefix, timeout).await
            }
            _ => subscribe_and_listen(&client, &channel, timeout).await,
        };
        if counters().connected.load(Ordering::Relaxed) && started.elapsed() >= HEALTHY {
            // A subscription that stayed up this long was healthy: the next loss starts a
            // fresh backoff (the old loop only reset on `Ok`, which never came: fault 4).
            failures = 0;
            delays = backoff.build();
            delays.next();
        }
        match res {
            Ok(()) => {
                failures = 0;
                delays = backoff.build();
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures % 50 == 0 {
                    tracing::warn!(error = %e, failures, "invalidation bus unavailable");
                }
            }
        }
        distrust();
        if counters().connected.load(Ordering::Relaxed) {
            // A server may have died (and may come back restarted from its snapshot): the
            // connections check its incarnation before the next read (§8.2). Told before the
            // bus reports itself disconnected.
            lost();
        }
        let was_connected = counters().connected.swap(false, Ordering::Relaxed);
        metrics::gauge!("cache_bus_connected").set(0.0);
        if was_connected {
            // Messages may be lost while we are away: drop every local copy now, and again
            // on resubscribing. Until then local copies live at most `local_ttl`.
            clear_shared();
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_millis(1600))).await;
    }
}

/// A single node's (or Sentinel's master's) subscription, until it is lost.
///
/// Over RESP3 (Redis 6 and later) messages are applied by the connection's driver itself, in
/// its push callback, in order with the replies: no channel and no task switch per message
/// (the publisher's own echo included, which `handle` drops at once). Where the server
/// refuses `HELLO 3` (a proxy that speaks RESP2, a renamed command), the RESP2 pub/sub
/// connection carries them.
#[cfg(feature = "redis")]
async fn subscribe_and_listen(
    client: &crate::redis_tier::RedisTarget,
    channel: &str,
    timeout: Duration,
) -> Result<(), String> {
    // A probe that takes longer than this ends the subscription (a hung or lost server).
    let give_up = timeout.max(Duration::from_secs(1));
    let epoch = client.epoch();
    let redis_client = tokio::time::timeout(give_up, client.client())
        .await
        .map_err(|_| "subscribe timed out".to_string())?
        .map_err(|e| e.to_string())?;
    match resp3::subscribe(&redis_client, channel, give_up).await {
        Ok((closed, probe)) => {
            subscribed();
            tracing::debug!(channel, "invalidation bus subscribed (RESP3)");
            listen(client, epoch, closed, probe, give_up).await
        }
        Err(e) if resp3::refused(&e) => {
            tracing::debug!(error = %e, "RESP3 refused: the bus subscribes over RESP2");
            let (sink, stream) = tokio::time::timeout(give_up, async {
                let (mut sink, stream) = redis_client.get_async_pubsub().await?.split();
                sink.subscribe(channel).await?;
                Ok::<_, redis::RedisError>((sink, stream))
            })
            .await
            .map_err(|_| "subscribe timed out".to_string())?
            .map_err(|e| e.to_string())?;
            subscribed();
            tracing::debug!(channel, "invalidation bus subscribed (RESP2)");
            let messages = stream.map(|msg| handle(msg.get_payload_bytes()));
            let probe = move || -> Probe {
                let mut sink = sink.clone();
                Box::pin(async move { sink.ping::<redis::Value>().await })
            };
            listen(client, epoch, messages, probe, give_up).await
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A `PING` on the subscription connection, answered after every message before it.
#[cfg(feature = "redis")]
type Probe =
    std::pin::Pin<Box<dyn std::future::Future<Output = redis::RedisResult<redis::Value>> + Send>>;

/// The single-node subscription over RESP3.
#[cfg(feature = "redis")]
mod resp3 {
    use std::sync::Mutex;
    use std::time::Duration;

    use futures_util::{Stream, StreamExt};
    use redis::{ErrorKind, PushInfo, PushKind, Value};

    use super::{handle, Probe};

    /// The server (or a proxy before it) does not take `HELLO 3`, or `SUBSCRIBE` on RESP3:
    /// subscribe over RESP2 instead. A transport failure is not a refusal.
    pub(super) fn refused(e: &redis::RedisError) -> bool {
        matches!(
            e.kind(),
            ErrorKind::Server(_) | ErrorKind::RESP3NotSupported
        )
    }

    /// Connects, subscribes, and returns a stream that ends when the connection is lost (it
    /// yields nothing: messages are applied in the push callback) and the probe.
    pub(super) async fn subscribe(
        client: &redis::Client,
        channel: &str,
        give_up: Duration,
    ) -> redis::RedisResult<(impl Stream<Item = ()> + Unpin, impl Fn() -> Probe)> {
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
        let lost_tx = Mutex::new(Some(lost_tx));
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(give_up))
            .set_response_timeout(Some(give_up))
            .set_push_sender(move |info: PushInfo| {
                match info.kind {
                    // Called by the driver before it delivers any later reply, so a probe's
                    // reply comes after every message published before the probe executed.
                    PushKind::Message => {
                        if let Some(Value::BulkString(payload)) = info.data.get(1) {
                            handle(payload);
                        }
                    }
                    PushKind::Disconnection => {
                        let tx = lost_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
                        if let Some(tx) = tx {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                }
                Ok::<(), std::convert::Infallible>(())
            });
        let conn = tokio::time::timeout(give_up, async {
            let mut conn = crate::redis_tier::resp3_client(client)?
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            conn.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(conn)
        })
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
        // Ends when the driver reports the loss or is gone (its callback, and the sender in
        // it, dropped).
        let closed = futures_util::stream::once(lost_rx).filter_map(|_| async { None::<()> });
        // `probe` owns the connection: it lives as long as the subscription is listened to.
        let probe = move || -> Probe {
            let mut conn = conn.clone();
            Box::pin(async move { redis::cmd("PING").query_async::<Value>(&mut conn).await })
        };
        Ok((Box::pin(closed), probe))
    }
}

/// Applies messages (as `messages` is polled) and probes the subscription every
/// `BUS_WINDOW / 4`, until it is lost, a probe fails or times out, or (Sentinel) the data
/// connection resolves another master.
#[cfg(feature = "redis")]
async fn listen(
    client: &crate::redis_tier::RedisTarget,
    epoch: u64,
    mut messages: impl futures_util::Stream<Item = ()> + Unpin,
    probe: impl Fn() -> Probe,
    give_up: Duration,
) -> Result<(), String> {
    use tokio::time::Instant;

    let mut in_flight: Option<(Instant, Probe)> = None;
    let mut probes = tokio::time::interval(BUS_WINDOW / 4);
    probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Messages first: the RESP2 driver queues a message before it resolves the reply
            // of a probe sent after it, so trust is never renewed past an unapplied message.
            // (Over RESP3 the driver has applied them before it resolves the reply.)
            biased;
            msg = messages.next() => match msg {
                Some(()) => {}
                None => return Err("subscription closed".into()),
            },
            res = async {
                match &mut in_flight {
                    Some((_, probe)) => probe.await,
                    None => std::future::pending().await,
                }
            } => {
                let (sent, _) = in_flight.take().expect("a probe was in flight");
                res.map_err(|e| format!("probe failed: {e}"))?;
                // Every message published before `sent` has been received (same
                // connection, in order): trusted until `sent + BUS_WINDOW`.
                trust_until((sent + BUS_WINDOW).into_std());
            }
            _ = probes.tick() => {
                let now = Instant::now();
                distrust_if_lapsed();
                if client.epoch() != epoch {
                    // The data connection found a new master (Sentinel failover): this
                    // subscription is on the old one, which no longer gets the messages.
                    return Err("the master changed".into());
                }
                match &in_flight {
                    None => in_flight = Some((now, probe())),
                    Some((sent, _)) if now.duration_since(*sent) > give_up => {
                        return Err("probe timed out".into());
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// The bus on Redis Cluster (docs/PROTOCOL.md §5.3–5.4): sharded pub/sub.
///
/// Every process `SSUBSCRIBE`s to the 1024 bucket channels `{p:b}:bus:1` on one cluster
/// connection (RESP3, a connection per master; each channel lives on its slot's master).
/// Writers `SPUBLISH` in the same pipeline or script as the write, on the key's master.
///
/// **Trust, per shard.** Each probe round publishes, on each master, a message to a channel
/// only this process subscribes to (`{p:b}:bus:1:p:<origin>`, for one bucket `b` of that
/// master); it arrives on the same node connection, after every message that master
/// published before it (and through the same in-order forwarding in redis-rs). When the
/// round sent at `p` has come back from every master, the bus is trusted until `p + W`: the
/// single-node argument, per shard, with trust = every shard trusted. A node connection lost
/// (`Disconnection` push) or a shard channel taken away (`sunsubscribe`: the slot moved) is a
/// gap: the subscription is rebuilt from scratch (new connection, every channel subscribed
/// again on the slots' current masters) and local copies are cleared, as on a single node.
#[cfg(feature = "redis")]
mod cluster {
    use std::collections::HashSet;
    use std::time::Duration;

    use futures_util::StreamExt;
    use redis::cluster_async::ClusterConnection;
    use redis::{PushKind, Value};
    use tokio::time::Instant;

    use super::{
        distrust_if_lapsed, handle, shard_channel, subscribed, trust_until, BUS_VERSION, BUS_WINDOW,
    };
    use crate::key::REDIS_BUCKETS;
    use crate::redis_tier::{key_slot, master_slot_ranges, ClusterTarget};

    /// How often the masters are asked again which buckets they hold (for the probes).
    const TOPOLOGY_REFRESH: Duration = Duration::from_secs(1);

    fn probe_channel(prefix: &str, bucket: u32) -> String {
        format!(
            "{{{prefix}:{bucket}}}:bus:{BUS_VERSION}:p:{:016x}",
            super::instance_id()
        )
    }

    /// One bucket per master (`CLUSTER SLOTS`): the buckets whose probes cover every shard.
    async fn representatives(
        conn: &mut ClusterConnection,
        prefix: &str,
    ) -> Result<Vec<u32>, String> {
        let masters = master_slot_ranges(conn)
            .await
            .map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
        let slot_of = |b: u32| key_slot(format!("{{{prefix}:{b}}}").as_bytes());
        let reps: Vec<u32> = masters
            .iter()
            .filter_map(|(_, ranges)| {
                (0..REDIS_BUCKETS).find(|&b| {
                    let s = slot_of(b);
                    ranges.iter().any(|&(lo, hi)| lo <= s && s <= hi)
                })
            })
            .collect();
        if reps.is_empty() {
            return Err("no master holds a bucket".into());
        }
        Ok(reps)
    }

    async fn subscribe_all(
        conn: &ClusterConnection,
        channels: Vec<String>,
    ) -> redis::RedisResult<()> {
        let mut results = futures_util::stream::iter(channels.into_iter().map(|ch| {
            let mut conn = conn.clone();
            async move { conn.ssubscribe(&ch).await }
        }))
        .buffer_unordered(64);
        while let Some(res) = results.next().await {
            res?;
        }
        Ok(())
    }

    pub(super) async fn subscribe_and_listen(
        target: &ClusterTarget,
        prefix: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let give_up = timeout.max(Duration::from_secs(1));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<redis::PushInfo>();
        let connect = tokio::time::timeout(give_up * 4, async {
            let client = target
                .builder()?
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .build()?;
            let conn = client.get_async_connection().await?;
            let channels = (0..REDIS_BUCKETS)
                .map(|b| shard_channel(prefix, b))
                .collect::<Vec<_>>();
            subscribe_all(&conn, channels).await?;
            Ok::<_, redis::RedisError>(conn)
        })
        .await
        .map_err(|_| "subscribe timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let mut conn = connect;
        subscribed();
        tracing::debug!(prefix, "invalidation bus subscribed (cluster, sharded)");
        let probe_suffix = format!(":p:{:016x}", super::instance_id());
        let mut reps: Vec<u32> = Vec::new();
        let mut probe_subscribed: HashSet<u32> = HashSet::new();
        let mut topology_at: Option<Instant> = None;
        // (sent at, round, buckets whose probe has not come back)
        let mut in_flight: Option<(Instant, u64, HashSet<u32>)> = None;
        let mut round: u64 = 0;
        let mut probes = tokio::time::interval(BUS_WINDOW / 4);
        probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                push = rx.recv() => {
                    let Some(push) = push else {
                        return Err("subscription closed".into());
                    };
                    match push.kind {
                        PushKind::SMessage | PushKind::Message => {
                            let (Some(Value::BulkString(ch)), Some(Value::BulkString(payload))) =
                                (push.data.first(), push.data.get(1))
                            else {
                                continue;
                            };
                            if ch.ends_with(probe_suffix.as_bytes()) {
                                let Some((_, sent_round, left)) = &mut in_flight else {
                                    continue;
                                };
                                let answered = std::str::from_utf8(payload)
                                    .ok()
                                    .and_then(|p| p.split_once(':'))
                                    .and_then(|(r, b)| Some((r.parse::<u64>().ok()?, b.parse::<u32>().ok()?)));
                                if let Some((r, b)) = answered {
                                    if r == *sent_round {
                                        left.remove(&b);
                                    }
                                }
                                if left.is_empty() {
                                    let (sent, _, _) = in_flight.take().expect("in flight");
                                    // Every shard delivered what it published before `sent`.
                                    trust_until((sent + BUS_WINDOW).into_std());
                                }
                            } else {
                                handle(payload);
                            }
                        }
                        PushKind::Disconnection => {
                            return Err("a node's subscription connection was lost".into());
                        }
                        PushKind::SUnsubscribe => {
                            // Never asked for: the slot moved (resharding, failover).
                            return Err("a shard channel was unsubscribed (slot moved)".into());
                        }
                        _ => {}
                    }
                }
                _ = probes.tick() => {
                    let now = Instant::now();
                    distrust_if_lapsed();
                    match &in_flight {
                        Some((sent, _, _)) if now.duration_since(*sent) > give_up => {
                            return Err("probe timed out".into());
                        }
                        Some(_) => continue,
                        None => {}
                    }
                    if topology_at.is_none_or(|t| now.duration_since(t) >= TOPOLOGY_REFRESH) {
                        reps = representatives(&mut conn, prefix).await?;
                        let new: Vec<String> = reps
                            .iter()
                            .filter(|b| !probe_subscribed.contains(b))
                            .map(|&b| probe_channel(prefix, b))
                            .collect();
                        subscribe_all(&conn, new).await.map_err(|e| format!("probe subscribe: {e}"))?;
                        probe_subscribed.extend(reps.iter().copied());
                        topology_at = Some(Instant::now());
                    }
                    round += 1;
                    let sent = Instant::now();
                    in_flight = Some((sent, round, reps.iter().copied().collect()));
                    for &b in &reps {
                        let mut conn = conn.clone();
                        let channel = probe_channel(prefix, b);
                        let payload = format!("{round}:{b}");
                        tokio::spawn(async move {
                            let _ = redis::cmd("SPUBLISH")
                                .arg(&channel)
                                .arg(&payload)
                                .query_async::<()>(&mut conn)
                                .await;
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_lapses_at_its_deadline_without_the_subscriber_running() {
        let t = Trust::new();
        let now = Instant::now();
        assert!(!t.trusted_at(now), "not trusted before a probe");
        assert_eq!(t.extend(now + BUS_WINDOW, now), (false, false));
        assert!(t.trusted_at(now));
        // Nobody revokes it (the subscriber is starved): it lapses by itself.
        assert!(t.trusted_at(now + BUS_WINDOW - Duration::from_millis(1)));
        assert!(!t.trusted_at(now + BUS_WINDOW));
        // A later answer renews it; the lapse before it is reported.
        let later = now + BUS_WINDOW * 2;
        assert_eq!(t.extend(later + BUS_WINDOW, later), (false, true));
        assert!(t.trusted_at(later));
        assert!(t.revoke());
        assert!(!t.trusted_at(later));
        assert!(!t.revoke(), "revoked once");
    }

    /// The readers' check (coarse clock first): trusted while the deadline is ahead, never
    /// once the precise clock has reached it, and not a moment after a revoke.
    #[test]
    fn the_coarse_check_never_outlives_the_deadline_or_a_revoke() {
        let t = Trust::new();
        assert!(!t.trusted());
        let now = Instant::now();
        t.extend(now + Duration::from_secs(60), now);
        assert!(t.trusted());
        assert!(t.revoke());
        assert!(
            !t.trusted(),
            "a revoke ends trust at once, whatever the coarse clock says"
        );
        let lag = crate::coarse_clock::MAX_LAG;
        let start = Instant::now();
        let deadline = start + lag * 2;
        t.extend(deadline, start);
        let mut trusted = 0;
        while Instant::now() < deadline + lag {
            let read_at = Instant::now();
            let is = t.trusted();
            if read_at >= deadline {
                assert!(!is, "trusted {:?} past the deadline", read_at - deadline);
            } else if is {
                trusted += 1;
            }
            std::thread::yield_now();
        }
        assert!(trusted > 0);
    }

    #[test]
    fn messages_round_trip_with_any_target() {
        for target in ["user:1", "", "a\u{1f}b", "x|y"] {
            let line = format!("{}42", message_prefix(Action::Invalidated, target));
            let m = parse(&line).expect("parses");
            assert_eq!(m.sender, instance_id());
            assert_eq!(m.action, Action::Invalidated);
            assert_eq!(m.target, target);
            assert_eq!(m.counter, 42);
        }
        assert!(parse("C2\u{1f}00\u{1f}I\u{1f}1\u{1f}k\u{1f}1").is_none());
        assert!(parse("garbage").is_none());
    }

    #[test]
    fn own_messages_are_dropped_unread_and_others_counted() {
        let before = bus_status().received;
        handle(message(Action::Invalidated, "own:1").as_bytes());
        assert_eq!(bus_status().received, before, "own echo not counted");
        let other = format!(
            "C{BUS_VERSION}{SEP}{:016x}{SEP}I{SEP}1{SEP}other:1{SEP}0",
            instance_id() ^ 1
        );
        handle(other.as_bytes());
        assert_eq!(bus_status().received, before + 1);
    }
}
