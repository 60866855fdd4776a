//! The connection state machine (`Idle { retry_at } → Connecting → Ready`), reconnects with
//! backoff in the background, TLS clients, and how a failed operation is classified.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
#[cfg(feature = "tls")]
use redis::TlsMode;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisError};
use tokio::sync::watch;

use crate::clock;
use crate::config::{redact, ClusterConfig, Config, SentinelConfig, WaitReplicas};
use crate::error::CacheError;
use crate::log_limit::LogLimiter;

use super::lane::Lane;
use super::tracking::{self, Tracked};

/// The connections of one master: `data` for reads and writes that do not wait, `write` for
/// writes followed by `WAIT` (which blocks its client on the server, so hits never queue
/// behind it); the same connection when writes never wait.
///
/// `tracked`: on a single node, a RESP3 connection with client tracking whose plain reads
/// check scope tokens kept in the process (`tracking.rs`); `None` on a cluster, or where the
/// server or the ACL refused tracking (reads then carry the tokens).
#[derive(Clone)]
pub(super) struct Conns {
    pub(super) data: Conn,
    pub(super) write: Conn,
    pub(super) tracked: Option<Arc<Tracked>>,
    /// Single node and Sentinel: the invalidation lane (`lane.rs`), connected on first use.
    pub(super) lane: Option<Arc<Lane>>,
}

/// One logical connection: to a single master (URL or Sentinel), or to a cluster (a
/// connection per node inside redis-rs's `ClusterConnection`, which follows `MOVED` / `ASK`
/// and refreshes its slot map). Commands are routed by their first key on a cluster, so every
/// operation of the runtime touches one slot (docs/PROTOCOL.md §2).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A request failed because its connection was closed before the reply (a cluster: or no
/// connection to the node was left to send it on).
fn closed(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
}

/// A cluster connection repairs a closed node connection in the background and fails the
/// requests meanwhile: a request that found it closed is resent after each of these waits
/// (77 ms in all, within the default operation timeout) until one gets through.
const CLUSTER_REPAIR_WAITS: [Duration; 5] = [
    Duration::from_millis(2),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(40),
];

/// The waits before each resend of a request (or a read) that found its connection closed:
/// one resend at once on a single node or Sentinel (redis-rs's connection manager reconnects
/// when it notices), a cluster's while it repairs its node connections.
pub(super) fn resend_waits(cluster: bool) -> &'static [Duration] {
    if cluster {
        &CLUSTER_REPAIR_WAITS
    } else {
        &[Duration::ZERO]
    }
}

/// One of [`resend_waits`] (none at all for a zero wait).
pub(super) async fn resend_pause(wait: Duration) {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// A request that finds its connection closed (by Redis's idle `timeout`, a proxy,
/// `CLIENT KILL`, a restart) is resent ([`resend_waits`]) instead of failing the operation.
/// Every operation of the protocol may run twice (docs/PROTOCOL.md §8.1: writes are
/// idempotent, a read's claim that took answers with our own ticket, a lock attempt knows
/// its own token).
impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(self.request(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(self.request_all(pipeline, offset, count))
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// `cmd`, resent while it finds its connection closed: what `req_packed_command`
    /// boxes, awaited in place by [`direct::query`](super::direct::query).
    pub(super) async fn request(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        let mut reply = self.send_command(cmd).await;
        for &wait in resend_waits(self.is_cluster()) {
            match &reply {
                Err(e) if closed(e) => resend_pause(wait).await,
                _ => break,
            }
            reply = self.send_command(cmd).await;
        }
        reply
    }

    /// `pipeline`'s replies from `offset` (`count` of them), resent as
    /// [`request`](Self::request) resends a command: what `req_packed_commands` boxes. (One
    /// loop for both would take an async closure, whose future rustc cannot yet prove `Send`
    /// for every borrow it is called with.)
    pub(super) async fn request_all(
        &mut self,
        pipeline: &redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        let mut replies = self.send_pipeline(pipeline, offset, count).await;
        for &wait in resend_waits(self.is_cluster()) {
            match &replies {
                Err(e) if closed(e) => resend_pause(wait).await,
                _ => break,
            }
            replies = self.send_pipeline(pipeline, offset, count).await;
        }
        replies
    }

    /// One attempt of `cmd`.
    async fn send_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            Conn::Single(c) => c.send_packed_command(cmd).await,
            Conn::Cluster(c) => redis::aio::ConnectionLike::req_packed_command(c, cmd).await,
        }
    }

    /// One attempt of `pipeline`.
    async fn send_pipeline(
        &mut self,
        pipeline: &redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.send_packed_commands(pipeline, offset, count).await,
            Conn::Cluster(c) => {
                redis::aio::ConnectionLike::req_packed_commands(c, pipeline, offset, count).await
            }
        }
    }

    /// `WAIT n ms` on the connection that carried the write: on a cluster, the master of
    /// `key`'s slot (the same per-node connection, so `WAIT` covers the write), or every
    /// master when `key` is `None` (the smallest count wins). redis-rs would otherwise send
    /// it to every master.
    pub(super) async fn wait(
        &mut self,
        n: u32,
        ms: u64,
        key: Option<&str>,
    ) -> redis::RedisResult<u32> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(n).arg(ms);
        match (self, key) {
            (Conn::Cluster(c), Some(key)) => {
                let route = Route::new(key_slot(key.as_bytes()), SlotAddr::Master);
                let v = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(v)?)
            }
            (Conn::Cluster(c), None) => {
                let v = c
                    .route_command(
                        cmd,
                        RoutingInfo::MultiNode((
                            MultipleNodeRoutingInfo::AllMasters,
                            Some(ResponsePolicy::Aggregate(
                                redis::cluster_routing::AggregateOp::Min,
                            )),
                        )),
                    )
                    .await?;
                Ok(redis::from_redis_value(v)?)
            }
            (c, _) => cmd.query_async::<u32>(c).await,
        }
    }

    /// `DEL` of `keys` spread over every slot (a scope's striped tokens). Single node: one
    /// `DEL`. Cluster: one pipeline of one-key `DEL`s per master (from `CLUSTER SLOTS`), the
    /// masters in parallel; a master's pipeline that fails or meets a redirection (a slot
    /// moving meanwhile) is sent again as one multi-key `DEL`, which redis-rs splits by slot
    /// and routes with `MOVED` / `ASK`. Idempotent, so a retry of the whole call is harmless.
    pub(super) async fn del_everywhere(&mut self, keys: &[String]) -> redis::RedisResult<()> {
        let c = match self {
            Conn::Cluster(c) => c,
            other => return redis::cmd("DEL").arg(keys).query_async(other).await,
        };
        let masters = master_slot_ranges(c).await?;
        let mut groups: Vec<Vec<&String>> = vec![Vec::new(); masters.len() + 1];
        for key in keys {
            let slot = key_slot(key.as_bytes());
            let i = masters
                .iter()
                .position(|(_, ranges)| ranges.iter().any(|&(lo, hi)| lo <= slot && slot <= hi))
                .unwrap_or(masters.len());
            groups[i].push(key);
        }
        let sends = groups.into_iter().filter(|g| !g.is_empty()).map(|group| {
            let mut c = c.clone();
            async move {
                let route = Route::new(key_slot(group[0].as_bytes()), SlotAddr::Master);
                let mut pipe = redis::pipe();
                for key in &group {
                    pipe.cmd("DEL").arg(*key);
                }
                let sent = c
                    .route_pipeline(
                        pipe,
                        0,
                        group.len(),
                        SingleNodeRoutingInfo::SpecificNode(route),
                    )
                    .await;
                let clean = matches!(&sent, Ok(replies)
                    if replies.iter().all(|v| !matches!(v, redis::Value::ServerError(_))));
                if clean {
                    return Ok(());
                }
                // A master that refuses (`CLUSTERDOWN` in its writable delay after a restart,
                // `OOM`, ...) refuses the slot-by-slot resend too, after redis-rs's retries of
                // each (over a second: a connect's check timed out): only a redirection (the
                // slots moved meanwhile) is worth it.
                let refusal = match sent {
                    Ok(replies) => replies.into_iter().find_map(|v| match v {
                        redis::Value::ServerError(e) => Some(RedisError::from(e)),
                        _ => None,
                    }),
                    Err(e) => Some(e),
                };
                if let Some(e) = refusal
                    .filter(|e| error_reply(e) && !matches!(e.code(), Some("MOVED") | Some("ASK")))
                {
                    return Err(e);
                }
                redis::cmd("DEL")
                    .arg(&group)
                    .query_async::<()>(&mut c)
                    .await
            }
        });
        for res in futures_util::future::join_all(sends).await {
            res?;
        }
        Ok(())
    }

    /// A read whose keys are all in `slot`, sent straight to that slot's master (or a
    /// replica, when `replica`); on a single node, as is.
    pub(super) async fn query_in_slot(
        &mut self,
        cmd: redis::Cmd,
        slot: u16,
        replica: bool,
    ) -> redis::RedisResult<redis::Value> {
        match self {
            Conn::Cluster(c) => {
                let addr = if replica {
                    SlotAddr::ReplicaOptional
                } else {
                    SlotAddr::Master
                };
                let route = Route::new(slot, addr);
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await
            }
            c => super::direct::query(c, &cmd).await,
        }
    }

    /// `TIME`: of the master, or on a cluster of the master serving slot 0 (one reference
    /// clock for the process; a failover of that shard is a clock step, docs/PROTOCOL.md §6).
    pub(super) async fn time(&mut self) -> redis::RedisResult<(u64, u64)> {
        match self {
            Conn::Cluster(c) => {
                let route = Route::new(0, SlotAddr::Master);
                let v = c
                    .route_command(
                        redis::cmd("TIME"),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(v)?)
            }
            c => redis::cmd("TIME").query_async(c).await,
        }
    }

    /// `INFO` (its default sections) of the master, or of every master of a cluster (each
    /// must answer: a master's error reply is this call's error).
    pub(super) async fn server_infos(&mut self) -> redis::RedisResult<Vec<String>> {
        // The default sections, `server` and `replication` among them (the `run_id`, the
        // `master_replid`): one command on every version, where `INFO server replication`
        // needs 7.0 (a 6.x server must still be named too old, `incarnation::too_old`).
        let info = || redis::cmd("INFO").clone();
        match self {
            Conn::Cluster(c) => {
                let v = c
                    .route_command(
                        info(),
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await?;
                let redis::Value::Map(per_node) = v else {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "unexpected INFO reply from the masters",
                    )));
                };
                per_node
                    .into_iter()
                    .map(|(_, info)| match info {
                        redis::Value::ServerError(e) => Err(e.into()),
                        info => Ok(redis::from_redis_value(info)?),
                    })
                    .collect()
            }
            c => Ok(vec![info().query_async(c).await?]),
        }
    }

    /// `ROLE` of the master (single), or of every master (cluster): the fewest replicas any
    /// master reports; `None` if no master answered as one.
    pub(super) async fn master_replicas(&mut self) -> Option<u32> {
        match self {
            Conn::Single(c) => match redis::cmd("ROLE").query_async::<redis::Role>(c).await {
                Ok(redis::Role::Primary { replicas, .. }) => Some(replicas.len() as u32),
                _ => None,
            },
            Conn::Cluster(c) => {
                let v = c
                    .route_command(
                        redis::cmd("ROLE"),
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await
                    .ok()?;
                let redis::Value::Map(per_node) = v else {
                    return None;
                };
                per_node
                    .into_iter()
                    .filter_map(
                        |(_, role)| match redis::from_redis_value::<redis::Role>(role) {
                            Ok(redis::Role::Primary { replicas, .. }) => {
                                Some(replicas.len() as u32)
                            }
                            _ => None,
                        },
                    )
                    .min()
            }
        }
    }
}

/// Every master's address and slot ranges (`CLUSTER SLOTS`, asked of a random master).
pub(crate) async fn master_slot_ranges(
    conn: &mut ClusterConnection,
) -> redis::RedisResult<Vec<(String, Vec<(u16, u16)>)>> {
    let reply = conn
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await?;
    let redis::Value::Array(ranges) = reply else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected CLUSTER SLOTS reply",
        )));
    };
    let mut masters: Vec<(String, Vec<(u16, u16)>)> = Vec::new();
    for range in ranges {
        let redis::Value::Array(items) = range else {
            continue;
        };
        let (
            Some(redis::Value::Int(start)),
            Some(redis::Value::Int(end)),
            Some(redis::Value::Array(node)),
        ) = (items.first(), items.get(1), items.get(2))
        else {
            continue;
        };
        let addr = node
            .iter()
            .take(2)
            .map(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                redis::Value::Int(i) => i.to_string(),
                _ => String::new(),
            })
            .collect::<Vec<_>>()
            .join(":");
        let range = (*start as u16, *end as u16);
        match masters.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, r)) => r.push(range),
            None => masters.push((addr, vec![range])),
        }
    }
    Ok(masters)
}

/// Whether the server (or a proxy before it) answered with an error reply, as opposed to a
/// transport failure.
pub(super) fn error_reply(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
    )
}

/// The cluster slot of a key (see [`crate::key::cluster_slot`]).
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    crate::key::slot_of_bytes(key)
}

pub(super) enum ConnState {
    Idle {
        retry_at: Instant,
        failures: u32,
        last_error: String,
    },
    Connecting(watch::Receiver<bool>),
    /// Up, since then.
    Ready(Conns, Instant),
}

/// Where the master is: a fixed URL, or whatever the sentinels report (asked again on every
/// connect, so a failover is followed and the old address is never reused).
pub(crate) enum RedisTarget {
    Url(redis::Client),
    Sentinel(SentinelTarget),
    Cluster(Box<ClusterTarget>),
}

/// A cluster's seed nodes and options; clients are built from them (the bus's own with
/// RESP3 and a push sender).
pub(crate) struct ClusterTarget {
    config: ClusterConfig,
    root_pem: Option<Vec<u8>>,
    connect_timeout: Duration,
    op_timeout: Duration,
    client: ClusterClient,
    write_client: ClusterClient,
}

impl ClusterTarget {
    pub(super) fn new(
        config: &ClusterConfig,
        root_pem: Option<Vec<u8>>,
        connect_timeout: Duration,
        op_timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let client =
            cluster_builder(config, root_pem.as_deref(), connect_timeout, op_timeout)?.build()?;
        // `WAIT` may take the whole operation timeout on the server.
        let write_client =
            cluster_builder(config, root_pem.as_deref(), connect_timeout, op_timeout * 2)?
                .build()?;
        Ok(Self {
            config: config.clone(),
            root_pem,
            connect_timeout,
            op_timeout,
            client,
            write_client,
        })
    }

    /// A builder for this cluster (the bus adds RESP3 and its push sender).
    pub(crate) fn builder(&self) -> redis::RedisResult<ClusterClientBuilder> {
        cluster_builder(
            &self.config,
            self.root_pem.as_deref(),
            self.connect_timeout,
            self.op_timeout,
        )
    }

    /// The clients for data and write connections.
    fn clients(&self) -> (ClusterClient, ClusterClient) {
        (self.client.clone(), self.write_client.clone())
    }
}

/// Seeds, TLS and its CA, timeouts, few quick retries (every operation is bounded by the
/// operation timeout anyway), replicas for reads if asked.
fn cluster_builder(
    config: &ClusterConfig,
    root_pem: Option<&[u8]>,
    connect_timeout: Duration,
    op_timeout: Duration,
) -> redis::RedisResult<ClusterClientBuilder> {
    let tls = config.urls.iter().any(|u| u.starts_with("rediss://"));
    prepare_tls(tls, root_pem.is_some())?;
    let infos = config
        .urls
        .iter()
        .map(|u| u.as_str().into_connection_info())
        .collect::<redis::RedisResult<Vec<_>>>()?;
    let mut b = ClusterClientBuilder::new(infos)
        .connection_timeout(connect_timeout)
        .response_timeout(op_timeout)
        .retries(3)
        .min_retry_wait(5)
        .max_retry_wait(100);
    if config.read_from_replicas {
        b = b.read_routing_strategy(redis::cluster_read_routing::RandomReplicaStrategy);
    }
    #[cfg(feature = "tls")]
    if let Some(pem) = root_pem {
        b = b.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        });
    }
    Ok(b)
}

/// The sentinels, and which master they reported last (`epoch` counts changes, so the bus
/// can tell that its subscription is on a demoted master).
pub(crate) struct SentinelTarget {
    client: tokio::sync::Mutex<SentinelClient>,
    last: Mutex<Option<String>>,
    epoch: std::sync::atomic::AtomicU64,
}

impl SentinelTarget {
    pub(super) fn new(client: SentinelClient) -> Self {
        Self {
            client: tokio::sync::Mutex::new(client),
            last: Mutex::new(None),
            epoch: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl RedisTarget {
    /// A client for the current master. Through Sentinel, the master's `ROLE` is verified.
    pub(crate) async fn client(&self) -> redis::RedisResult<redis::Client> {
        match self {
            RedisTarget::Url(c) => Ok(c.clone()),
            RedisTarget::Cluster(_) => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a cluster has no single master",
            ))),
            RedisTarget::Sentinel(s) => {
                let client = s.client.lock().await.async_get_client().await?;
                let addr = client.get_connection_info().addr().to_string();
                let mut last = s.last.lock().unwrap_or_else(|p| p.into_inner());
                if last.as_deref().is_some_and(|l| l != addr) {
                    s.epoch.fetch_add(1, Ordering::AcqRel);
                }
                *last = Some(addr);
                Ok(client)
            }
        }
    }

    /// Changes every time the sentinels report another master (0 for a fixed URL).
    pub(crate) fn epoch(&self) -> u64 {
        match self {
            RedisTarget::Url(_) | RedisTarget::Cluster(_) => 0,
            RedisTarget::Sentinel(s) => s.epoch.load(Ordering::Acquire),
        }
    }
}

/// What a failed operation says about Redis, decided here only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// The connection is gone or points at a node that is no longer the master (`READONLY`,
    /// `MASTERDOWN`): reconnect, through the sentinels when configured.
    Lost,
    /// No answer in time.
    Timeout,
    /// Redis answered but refused the operation (`NOPERM`, `LOADING`, `BUSY`, `CROSSSLOT`,
    /// `CLUSTERDOWN`, ...): a failure, not an answer.
    Refused,
    /// Any other server error: Redis is there and took the request (e.g. `WRONGTYPE`). Also
    /// two refusals of a healthy server that concern some keys only, where a failure would
    /// open the breaker and send every read of every key to the source while Redis could
    /// serve them: `OOM` (a full server refuses writes but serves every read, which are what
    /// a cache is for) and `TRYAGAIN` (a cluster slot on the move: a request for several of
    /// its keys of which some have been migrated, until the move is final).
    Answered,
}

/// Error codes that mean "this node cannot serve the operation", with the fault they are.
fn fault_of_code(code: &str) -> Option<Fault> {
    Some(match code {
        "READONLY" | "MASTERDOWN" => Fault::Lost,
        "NOPERM" | "NOAUTH" | "WRONGPASS" | "LOADING" | "BUSY" | "CROSSSLOT" | "CLUSTERDOWN"
        | "MISCONF" | "NOREPLICAS" => Fault::Refused,
        "OOM" | "TRYAGAIN" => Fault::Answered,
        // A redirection the cluster client did not follow (retries exhausted during a
        // resharding or failover, or a single-node URL pointed at a cluster node).
        "MOVED" | "ASK" => Fault::Refused,
        _ => return None,
    })
}

pub(super) fn fault_of(e: &RedisError) -> Fault {
    if e.is_timeout() {
        Fault::Timeout
    } else if is_connection_lost(e) {
        Fault::Lost
    } else {
        // Scripts relay the code of the command that failed inside them; some versions put
        // it after a prefix, so look at the words of the message too.
        e.code()
            .and_then(fault_of_code)
            .or_else(|| {
                e.to_string()
                    .split(|c: char| !c.is_ascii_alphabetic())
                    .find_map(|w| fault_of_code(w).filter(|_| w.len() >= 3))
            })
            .unwrap_or(Fault::Answered)
    }
}

/// Replicas the master reported (`ROLE`), for [`WaitReplicas::Auto`].
///
/// On one connection the count only goes down after two readings of 0 at least
/// [`ROLE_REFRESH`] apart: a master whose replica was just promoted by a failover also reports
/// 0 replicas until it is demoted, and writes it takes then are lost at the demotion. Waiting
/// for 1 there makes them `Err` (retried on the new master) instead of a lost `Ok`.
pub(super) struct Replicas {
    count: AtomicU32,
    checked: Mutex<Option<Instant>>,
    zero_since: Mutex<Option<Instant>>,
}

/// How often `Auto` asks the master how many replicas it has.
const ROLE_REFRESH: Duration = Duration::from_secs(10);

/// Whether `Auto` must ask `ROLE` again, the last time being `checked`.
fn role_refresh_due(checked: Option<Instant>) -> bool {
    checked.is_none_or(|t| t.elapsed() >= ROLE_REFRESH)
}

/// What the Redis thread and every caller share: where the master is, the timeouts, the
/// connection state and the connection's log limiter.
/// What connections are opened from: one master's client, or the cluster's.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // Cloned once per connect, never stored in bulk.
enum Opener {
    Single(redis::Client),
    Cluster(ClusterClient, ClusterClient),
}

pub(super) struct Shared {
    pub(super) target: Arc<RedisTarget>,
    pub(super) connect_timeout: Duration,
    pub(super) op_timeout: Duration,
    pub(super) wait: WaitReplicas,
    pub(super) replicas: Replicas,
    pub(super) state: Mutex<ConnState>,
    pub(super) log: LogLimiter,
    /// Bumped whenever the main connections are (re)opened or lost: connections of callers'
    /// runtimes opened under an older epoch are dropped (they may point at an old master).
    epoch: AtomicU64,
    /// The client of the current master (resolved by the last successful open), or of the
    /// cluster.
    client: Mutex<Option<Opener>>,
    /// Connections driven by callers' runtimes.
    runtimes: Mutex<Vec<RuntimeConns>>,
    /// The Redis thread's own runtime, which uses the main connections.
    pub(super) home: std::sync::OnceLock<tokio::runtime::Id>,
    /// The incarnation record's key and the global clear token's (`incarnation.rs`; its
    /// stripes on a cluster).
    server_key: String,
    global_tokens: Vec<String>,
    /// Blocking callers' threads with a connection of their own (`blocking_conn.rs`).
    pub(super) blocking_conns: std::sync::atomic::AtomicUsize,
}

/// Callers' runtimes with a connection of their own, at most (the oldest is dropped first;
/// a runtime that ended leaves an entry behind until then).
const MAX_RUNTIMES: usize = 16;

/// Calls a runtime makes through the main connections before it gets its own: a runtime
/// built for a handful of calls (one per request, a test's) never opens connections.
const CALLS_BEFORE_OWN: u32 = 32;

/// One caller runtime's connections: its calls are counted until [`CALLS_BEFORE_OWN`], then
/// they are opened.
struct RuntimeConns {
    runtime: tokio::runtime::Id,
    epoch: u64,
    calls: u32,
    conns: Option<Conns>,
}

thread_local! {
    /// This thread's last connection of a caller's runtime: (shared state, runtime, epoch).
    static CALLER_CONNS: RefCell<Option<(usize, tokio::runtime::Id, u64, Conns)>> =
        const { RefCell::new(None) };
}

impl Shared {
    pub(super) fn new(target: RedisTarget, config: &Config) -> Self {
        Shared {
            target: Arc::new(target),
            connect_timeout: config.connect_timeout,
            op_timeout: config.redis_timeout,
            wait: config.wait_replicas,
            replicas: Replicas {
                count: AtomicU32::new(0),
                checked: Mutex::new(None),
                zero_since: Mutex::new(None),
            },
            state: Mutex::new(ConnState::Idle {
                retry_at: Instant::now(),
                failures: 0,
                last_error: String::new(),
            }),
            log: LogLimiter::default(),
            epoch: AtomicU64::new(0),
            client: Mutex::new(None),
            runtimes: Mutex::new(Vec::new()),
            home: std::sync::OnceLock::new(),
            server_key: super::incarnation::server_key(&config.key_prefix),
            global_tokens: super::scope_keys_on(
                config.cluster.is_some(),
                &config.key_prefix,
                &crate::key::scope_key(&config.key_prefix, crate::key::Scope::All),
            ),
            blocking_conns: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// See the `epoch` field: connections opened under another are not used.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The incarnation record's key (`incarnation.rs`).
    pub(super) fn server_key(&self) -> &str {
        &self.server_key
    }

    /// Connections for an async caller, driven by the caller's own Tokio runtime (so a
    /// request and its reply do not cross to the Redis thread and back: docs/PROTOCOL.md
    /// §11). A runtime's first [`CALLS_BEFORE_OWN`] calls use the main connections (as the
    /// Redis thread itself does); then its own are opened in the background on it. `None`:
    /// not on a Tokio runtime, or the main connections are not up (the caller then goes
    /// through the Redis thread).
    pub(super) fn caller_conns(self: &Arc<Self>) -> Option<Conns> {
        self.caller_conns_with(Conns::clone)
    }

    /// What `pick` takes of [`caller_conns`](Self::caller_conns): on the common path (this
    /// thread's runtime already has its connections) from the thread's copy, without
    /// cloning the rest (a hit takes the tracked connection alone).
    pub(super) fn caller_conns_with<T>(
        self: &Arc<Self>,
        pick: impl FnOnce(&Conns) -> T,
    ) -> Option<T> {
        // A blocking call waits on this thread: its runtime cannot drive connections now.
        if crate::blocking::in_blocking_call() {
            return None;
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let id = handle.id();
        if self.home.get() == Some(&id) {
            return self.ready().map(|c| pick(&c));
        }
        let me = Arc::as_ptr(self) as usize;
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut pick = Some(pick);
        let cached = CALLER_CONNS.with(|c| match &*c.borrow() {
            Some((who, rt, e, conns)) if *who == me && *rt == id && *e == epoch => {
                pick.take().map(|pick| pick(conns))
            }
            _ => None,
        });
        if cached.is_some() {
            return cached;
        }
        let pick = pick?;
        self.caller_conns_slow(handle, id, me).map(|c| pick(&c))
    }

    /// [`caller_conns`](Self::caller_conns) past the thread's copy: the runtime's entry, or
    /// the main connections while its own are counted towards or opened.
    fn caller_conns_slow(
        self: &Arc<Self>,
        handle: tokio::runtime::Handle,
        id: tokio::runtime::Id,
        me: usize,
    ) -> Option<Conns> {
        let main = self.ready()?;
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut runtimes = self.runtimes.lock().unwrap_or_else(|p| p.into_inner());
        runtimes.retain(|r| r.epoch == epoch);
        let i = match runtimes.iter().position(|r| r.runtime == id) {
            Some(i) => i,
            None => {
                if runtimes.len() >= MAX_RUNTIMES {
                    runtimes.remove(0);
                }
                runtimes.push(RuntimeConns {
                    runtime: id,
                    epoch,
                    calls: 0,
                    conns: None,
                });
                runtimes.len() - 1
            }
        };
        let entry = &mut runtimes[i];
        if let Some(conns) = &entry.conns {
            let conns = conns.clone();
            CALLER_CONNS.with(|c| *c.borrow_mut() = Some((me, id, epoch, conns.clone())));
            return Some(conns);
        }
        entry.calls = entry.calls.saturating_add(1);
        if entry.calls != CALLS_BEFORE_OWN {
            // Still counting, or already opening.
            return Some(main);
        }
        let client = self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(client) = client else {
            return Some(main);
        };
        let shared = self.clone();
        handle.spawn(async move {
            let opened =
                tokio::time::timeout(shared.connect_timeout, shared.open_managers(client)).await;
            let mut runtimes = shared.runtimes.lock().unwrap_or_else(|p| p.into_inner());
            let slot = runtimes
                .iter()
                .position(|r| r.runtime == id && r.epoch == epoch);
            match (opened, slot) {
                (Ok(Ok(conns)), Some(i)) => runtimes[i].conns = Some(conns),
                // Failed: this runtime counts its calls again before the next attempt.
                (_, Some(i)) => {
                    runtimes.remove(i);
                }
                (_, None) => {}
            }
        });
        Some(main)
    }

    /// The single node's client as last connected (`None` on a cluster, or before).
    pub(super) fn single_client(&self) -> Option<redis::Client> {
        match &*self.client.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(Opener::Single(c)) => Some(c.clone()),
            _ => None,
        }
    }

    /// The connections if they are up (no waiting).
    pub(super) fn ready(&self) -> Option<Conns> {
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            ConnState::Ready(c, _) => Some(c.clone()),
            _ => None,
        }
    }

    /// An operation's result with what it says of the connection: `Answered` on success,
    /// else [`failed_op`](Self::failed_op)'s classification.
    pub(super) fn outcome<T>(&self, res: redis::RedisResult<T>) -> (Result<T, CacheError>, Fault) {
        match res {
            Ok(v) => (Ok(v), Fault::Answered),
            Err(e) => {
                let (e, fault) = self.failed_op(e);
                (Err(e), fault)
            }
        }
    }

    /// Classifies a failed operation; a lost connection (or a demoted master) makes later
    /// operations fail fast (instead of each waiting for the manager's own reconnect
    /// attempts) while it reconnects, through the sentinels if configured, in the background.
    pub(super) fn failed_op(&self, e: RedisError) -> (CacheError, Fault) {
        let fault = fault_of(&e);
        let err = match fault {
            Fault::Timeout => CacheError::Timeout(self.op_timeout),
            Fault::Lost => {
                CacheError::Unavailable(crate::ErrorSource::with_message(redact(&e.to_string()), e))
            }
            Fault::Refused | Fault::Answered => {
                CacheError::Redis(crate::ErrorSource::with_message(redact(&e.to_string()), e))
            }
        };
        if fault == Fault::Lost {
            match *self.target {
                // A cluster connection would repair itself (reconnect the node, refresh the
                // slot map), but the node may come back restarted from its snapshot: the
                // connections are reopened, and every master's incarnation checked, first.
                RedisTarget::Cluster(_) => self.restart_suspected(&err.to_string()),
                _ => self.connection_lost(&err),
            }
        }
        (err, fault)
    }

    /// [`replicas_to_wait`](Self::replicas_to_wait) when it needs no connection: not `Auto`,
    /// or `Auto` with no `ROLE` refresh due. `None`: ask `replicas_to_wait`.
    pub(super) fn replicas_known(&self) -> Option<u32> {
        match self.wait {
            WaitReplicas::Off => Some(0),
            WaitReplicas::Count(n) => Some(n),
            WaitReplicas::Auto => {
                let checked = self
                    .replicas
                    .checked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                (!role_refresh_due(*checked))
                    .then(|| self.replicas.count.load(Ordering::Relaxed).min(1))
            }
        }
    }

    /// The replicas a write must wait for: 0 = no `WAIT`.
    pub(super) async fn replicas_to_wait(&self, conn: &mut Conn) -> u32 {
        match self.wait {
            WaitReplicas::Off => 0,
            WaitReplicas::Count(n) => n,
            WaitReplicas::Auto => {
                let due = {
                    let mut checked = self
                        .replicas
                        .checked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let due = role_refresh_due(*checked);
                    if due {
                        *checked = Some(Instant::now());
                    }
                    due
                };
                if due {
                    // Boxed: a `ROLE` once a period, whose state would otherwise weigh on
                    // the future of every write.
                    Box::pin(self.refresh_replicas(conn, false)).await;
                }
                self.replicas.count.load(Ordering::Relaxed).min(1)
            }
        }
    }

    /// `ROLE` → how many replicas the master reports (kept as it was on an error). `fresh`:
    /// a new connection, taken as it is; otherwise a drop to 0 needs a second reading (see
    /// [`Replicas`]).
    async fn refresh_replicas(&self, conn: &mut Conn, fresh: bool) {
        let Some(n) = conn.master_replicas().await else {
            return;
        };
        let mut zero_since = self
            .replicas
            .zero_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let lower = match (n, *zero_since) {
            (0, _) if fresh => true,
            (0, Some(t)) => t.elapsed() >= ROLE_REFRESH,
            (0, None) => {
                *zero_since = Some(Instant::now());
                false
            }
            _ => true,
        };
        if n > 0 || fresh {
            *zero_since = None;
        }
        if lower {
            self.replicas.count.store(n, Ordering::Relaxed);
        }
    }

    /// The connections, connecting in the background first if needed. Fails fast while a
    /// previous connection attempt's backoff runs.
    pub(super) async fn connection(self: &Arc<Self>) -> Result<Conns, CacheError> {
        loop {
            let mut rx = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                match &*state {
                    ConnState::Ready(c, _) => return Ok(c.clone()),
                    ConnState::Connecting(rx) => rx.clone(),
                    ConnState::Idle {
                        retry_at,
                        last_error,
                        ..
                    } if *retry_at > Instant::now() => {
                        return Err(CacheError::Unavailable(last_error.clone().into()));
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

    /// The data and write connections to `client`, driven by the current runtime.
    async fn open_managers(&self, client: Opener) -> redis::RedisResult<Conns> {
        let client = match client {
            Opener::Single(c) => c,
            Opener::Cluster(c, w) => {
                // A connection per node each; `WAIT` blocks a node's connection, so writes
                // that wait have their own.
                let data = Conn::Cluster(c.get_async_connection().await?);
                let write = match self.wait {
                    WaitReplicas::Off => data.clone(),
                    _ => Conn::Cluster(w.get_async_connection().await?),
                };
                return Ok(Conns {
                    data,
                    write,
                    tracked: None,
                    lane: None,
                });
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.op_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let data =
            Conn::Single(ConnectionManager::new_with_config(client.clone(), config.clone()).await?);
        let write = match self.wait {
            WaitReplicas::Off => data.clone(),
            _ => {
                // `WAIT` may take the whole operation timeout on the server.
                let config = config.set_response_timeout(Some(self.op_timeout * 2));
                Conn::Single(ConnectionManager::new_with_config(client.clone(), config).await?)
            }
        };
        let tracked = match tracking::open(&client, self.connect_timeout, self.op_timeout).await {
            // Shared by the reads: a hit clones one `Arc`, not the connection (whose clone
            // is several reference counts), unless it sends its request itself.
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                // Correct either way; only slower (each hit reads its scope tokens). Without
                // the tracked connection only the subscription notices a restart behind the
                // data connection's back (docs/PROTOCOL.md §8.2).
                crate::bus::want();
                self.log.warn_error(
                    "redis",
                    "client tracking refused (RESP3 `HELLO 3`, `CLIENT TRACKING`): hits read \
                     their scope tokens from Redis",
                    &redact(&e.to_string()),
                );
                None
            }
        };
        let lane = Lane::new(client, self.connect_timeout, self.op_timeout).map(Arc::new);
        Ok(Conns {
            data,
            write,
            tracked,
            lane,
        })
    }

    async fn open(&self) -> redis::RedisResult<Conns> {
        // Resolved again on every connect: after a failover the sentinels name the new master.
        let client = match &*self.target {
            RedisTarget::Cluster(c) => {
                let (data, write) = c.clients();
                Opener::Cluster(data, write)
            }
            _ => Opener::Single(self.target.client().await?),
        };
        let Conns {
            mut data,
            write,
            tracked,
            lane,
        } = self.open_managers(client.clone()).await?;
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client);
        // Before the first read or write: values are stamped and judged on Redis's clock.
        sample_clock(&mut data, &self.log).await;
        if self.wait == WaitReplicas::Auto {
            self.refresh_replicas(&mut data, true).await;
            *self
                .replicas
                .checked
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        // Before the first read: data restored from another incarnation's persistence is
        // invalidated (docs/PROTOCOL.md §8.2; on a cluster, every master's).
        super::incarnation::check(&mut data, &self.server_key, &self.global_tokens, &self.log)
            .await?;
        Ok(Conns {
            data,
            write,
            tracked,
            lane,
        })
    }

    async fn connect(self: Arc<Self>, done: watch::Sender<bool>, failures: u32) {
        let opened_under = self.epoch.load(Ordering::Acquire);
        let attempt = tokio::time::timeout(self.connect_timeout, self.open()).await;
        let next = match attempt {
            Ok(Ok(conns)) => {
                let epoch = opened_under + 1;
                if self
                    .epoch
                    .compare_exchange(opened_under, epoch, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // A restart was suspected while this open ran (`restart_suspected`): its
                    // check may have seen the server before it restarted. Opened again by the
                    // next operation.
                    ConnState::Idle {
                        retry_at: Instant::now(),
                        failures,
                        last_error: "a server may have restarted while connecting".into(),
                    }
                } else {
                    if failures > 0 {
                        tracing::info!("connected to redis");
                    }
                    tokio::spawn(self.clone().keep_clock(conns.data.clone(), epoch));
                    ConnState::Ready(conns, Instant::now())
                }
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

    /// Samples Redis's clock every [`CLOCK_SAMPLE_EVERY`] while `conn` is the current
    /// connection (the estimate's error grows with its age; the server's clock may step).
    async fn keep_clock(self: Arc<Self>, mut conn: Conn, epoch: u64) {
        loop {
            tokio::time::sleep(CLOCK_SAMPLE_EVERY).await;
            if self.epoch.load(Ordering::Acquire) != epoch {
                return;
            }
            sample_clock(&mut conn, &self.log).await;
        }
    }

    /// Drops the connections (every caller runtime's too) after one was found closed. One
    /// that had been up for [`HEALTHY_FOR`] is reopened by the next operation at once (Redis's
    /// idle `timeout`, a proxy's, `CLIENT KILL` close healthy connections: the reconnect
    /// costs that operation a few round trips instead of every caller during the backoff its
    /// body); one that fails again soon after opening backs off.
    fn connection_lost(&self, error: &CacheError) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let ConnState::Ready(_, since) = &*state {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            *state = if since.elapsed() >= HEALTHY_FOR {
                tracing::info!(error = %error, "redis connection closed; reconnecting");
                ConnState::Idle {
                    retry_at: Instant::now(),
                    failures: 0,
                    last_error: error.to_string(),
                }
            } else {
                self.failed(0, error.to_string())
            };
        }
    }

    /// A server may have died and may come back restarted from its snapshot: the bus lost
    /// its subscription (a node's socket closes as it dies, long before it can be restarted),
    /// or a cluster operation lost its node's connection. As
    /// [`connection_lost`](Self::connection_lost) (the next operation reopens the connections
    /// and checks the incarnation first, docs/PROTOCOL.md §8.2), and an open under way does
    /// not serve either (it may have checked before the restart).
    pub(super) fn restart_suspected(&self, why: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.connection_lost(&CacheError::Unavailable(crate::ErrorSource::from(
            why.to_string(),
        )));
    }

    /// Operations on the connections timed out until the breaker opened: they are replaced
    /// as if lost (a single node or Sentinel; a cluster connection replaces its nodes'
    /// connections itself).
    pub(super) fn stalled(&self, error: &CacheError) {
        if !matches!(*self.target, RedisTarget::Cluster(_)) {
            self.connection_lost(error);
        }
    }

    /// A tracked connection (`tracking.rs`) was found closed before a read was sent on it:
    /// as [`connection_lost`](Self::connection_lost), so that the read waits for the
    /// reconnect instead of failing. Returns the error recorded.
    pub(super) fn tracked_lost(&self) -> CacheError {
        let error = CacheError::Unavailable(crate::ErrorSource::from(
            "the tracked connection was closed".to_string(),
        ));
        self.connection_lost(&error);
        error
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

/// How long connections must have been up for their loss to be reconnected without backoff
/// ([`Shared::connection_lost`]): long enough that a server refusing service by closing
/// every connection it accepts is backed off from, short enough that connections closed
/// every few hundred milliseconds (measured with the chaos soak's `kill-normal` every 200 ms:
/// 0 errors instead of 1 403) are reopened at once.
const HEALTHY_FOR: Duration = Duration::from_millis(100);

/// How often a connection samples Redis's clock (docs/PROTOCOL.md §6): the estimate's error
/// grows by at most [`clock::DRIFT_PPM`] × this between samples (1 ms).
const CLOCK_SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// One sample of Redis's clock (`TIME`) for the reference clock. A failure is logged and
/// otherwise harmless: the previous estimate (or the wall clock) stays.
async fn sample_clock(conn: &mut Conn, log: &LogLimiter) {
    let sent = Instant::now();
    let reply = conn.time().await;
    match reply {
        Ok((s, us)) => {
            clock::observe(sent, s * 1_000_000 + us, Instant::now());
        }
        Err(e) => log.warn_error(
            "redis",
            "cannot read Redis's clock (TIME): expiry uses this host's clock",
            &redact(&e.to_string()),
        ),
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

/// Before connecting with TLS (`tls`: a `rediss://` address; `custom_ca`: a root certificate
/// was configured): without the `tls` feature, an error naming the feature; with it, rustls's
/// ring provider installed (a no-op if the application installed one already).
fn prepare_tls(tls: bool, custom_ca: bool) -> redis::RedisResult<()> {
    #[cfg(not(feature = "tls"))]
    if tls || custom_ca {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "rediss:// (TLS) needs cache-runtime's `tls` feature (features = [\"tls\"])",
        )));
    }
    #[cfg(feature = "tls")]
    if tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let _ = custom_ca;
    Ok(())
}

/// Without the `tls` feature: `rediss://` and a custom root certificate are refused with a
/// message naming the feature.
#[cfg(not(feature = "tls"))]
pub(super) fn open_client(
    url: &str,
    root_pem: Option<Vec<u8>>,
) -> redis::RedisResult<redis::Client> {
    prepare_tls(url.starts_with("rediss://"), root_pem.is_some())?;
    redis::Client::open(with_keepalive(url)?)
}

/// TCP keepalive on every connection to Redis: probes after [`KEEPALIVE_IDLE`] of silence,
/// then every [`KEEPALIVE_INTERVAL`]. They keep an idle connection in the tables of the NATs,
/// load balancers and firewalls on the way (which forget one silently after a few minutes:
/// cloud load balancers at 4 to 10), and let the kernel find a peer that vanished.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    let keepalive = redis::io::tcp::socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    redis::io::tcp::TcpSettings::default().set_keepalive(keepalive)
}

const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

fn with_keepalive(url: &str) -> redis::RedisResult<redis::ConnectionInfo> {
    Ok(url.into_connection_info()?.set_tcp_settings(tcp_settings()))
}

/// A client for `url`; `rediss://` uses rustls (ring), with `root_pem` as the only trusted CA
/// when given, the system's roots otherwise.
#[cfg(feature = "tls")]
pub(super) fn open_client(
    url: &str,
    root_pem: Option<Vec<u8>>,
) -> redis::RedisResult<redis::Client> {
    prepare_tls(url.starts_with("rediss://"), root_pem.is_some())?;
    match root_pem {
        Some(pem) => redis::Client::build_with_tls(
            with_keepalive(url)?,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            },
        ),
        None => redis::Client::open(with_keepalive(url)?),
    }
}

/// A client asking `s.urls` for the master `s.master`. `rediss://` sentinels mean TLS to the
/// master too; `root_pem`, when given, is the only CA trusted for both.
pub(super) fn open_sentinel(
    s: &SentinelConfig,
    root_pem: Option<Vec<u8>>,
) -> redis::RedisResult<SentinelClient> {
    let infos = s
        .urls
        .iter()
        .map(|u| u.as_str().into_connection_info())
        .collect::<redis::RedisResult<Vec<_>>>()?;
    let tls = infos
        .iter()
        .any(|i| matches!(i.addr(), ConnectionAddr::TcpTls { .. }));
    prepare_tls(tls, root_pem.is_some())?;
    let mut b = SentinelClientBuilder::new(
        infos.iter().map(|i| i.addr().clone()),
        &s.master,
        SentinelServerType::Master,
    )?
    .set_client_to_redis_tcp_settings(tcp_settings());
    // The sentinels' own credentials come from their URLs.
    if let Some(i) = infos
        .iter()
        .find(|i| i.redis_settings().password().is_some())
    {
        if let Some(u) = i.redis_settings().username() {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = i.redis_settings().password() {
            b = b.set_client_to_sentinel_password(p);
        }
    }
    if let Some(u) = &s.username {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = &s.password {
        b = b.set_client_to_redis_password(p);
    }
    #[cfg(feature = "tls")]
    if tls {
        b = b.set_client_to_redis_tls_mode(TlsMode::Secure);
        if let Some(pem) = root_pem {
            let certs = || redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            };
            b = b
                .set_client_to_sentinel_certificates(certs())
                .set_client_to_redis_certificates(certs());
        }
    }
    b.build()
}

fn is_connection_lost(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_refusal() || closed(e)
}

#[cfg(test)]
mod tests {
    use super::{fault_of, reconnect_delay, Fault};
    use crate::config::redact;
    use std::time::Duration;

    /// The error redis-rs makes of a server's error reply.
    fn server_error(reply: &str) -> redis::RedisError {
        redis::parse_redis_value(format!("-{reply}\r\n").as_bytes())
            .and_then(|v| v.extract_error())
            .expect_err("an error reply")
    }

    #[test]
    fn node_faults_are_failures_a_full_server_is_not_and_a_demoted_master_is_a_lost_connection() {
        let cases = [
            (
                "READONLY You can't write against a read only replica.",
                Fault::Lost,
            ),
            ("MASTERDOWN Link with MASTER is down", Fault::Lost),
            (
                "NOPERM this user has no permissions to run the 'incr' command",
                Fault::Refused,
            ),
            (
                "OOM command not allowed when used memory > 'maxmemory'.",
                Fault::Answered,
            ),
            (
                "CROSSSLOT Keys in request don't hash to the same slot",
                Fault::Refused,
            ),
            ("CLUSTERDOWN The cluster is down", Fault::Refused),
            ("CLUSTERDOWN Hash slot not served", Fault::Refused),
            ("MOVED 3999 127.0.0.1:6381", Fault::Refused),
            ("ASK 3999 127.0.0.1:6381", Fault::Refused),
            (
                "TRYAGAIN Multiple keys request during rehashing of slot",
                Fault::Answered,
            ),
            (
                "LOADING Redis is loading the dataset in memory",
                Fault::Refused,
            ),
            (
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                Fault::Answered,
            ),
            ("ERR unknown command", Fault::Answered),
        ];
        for (reply, fault) in cases {
            assert_eq!(fault_of(&server_error(reply)), fault, "{reply}");
        }
        // A script relays the code of the command that failed inside it.
        let in_script = server_error(
            "NOPERM this user has no permissions to run the 'set' command script: 1234, on \
             @user_script:2.",
        );
        assert_eq!(fault_of(&in_script), Fault::Refused);
        let in_script = server_error(
            "OOM command not allowed when used memory > 'maxmemory'. script: 1234, on @user_script:2.",
        );
        assert_eq!(
            fault_of(&in_script),
            Fault::Answered,
            "a full server reads on"
        );
    }

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
