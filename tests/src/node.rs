//! A cache node: a separate OS process that runs cached functions on command, so tests can
//! check what several processes sharing one Redis see. The binaries in `src/bin` define the
//! cached functions (with different schema versions) and hand them to [`serve`].
//!
//! Protocol, one line each way: `<id> <command> <args…>` in, `<id> ok <result>` or
//! `<id> err <message>` out; events (`! paused <key>`) may come at any time.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

/// A boxed future, as the handlers return.
pub type Fut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The cached functions a node binary provides.
pub struct Handlers {
    /// `profile(id)`: local+redis, tags `user:<id>`; the value rendered as text.
    pub get: fn(u64) -> Fut<String>,
    pub invalidate: fn(u64) -> Fut<Result<(), String>>,
    pub populate: fn(u64, String) -> Fut<Result<(), String>>,
    pub lookup: fn(u64) -> Fut<Option<String>>,
    /// Local tier only.
    pub peek: fn(u64) -> Option<String>,
    pub clear: fn() -> Fut<Result<(), String>>,
    /// Drops this process's local copies only.
    pub clear_local: fn(),
    /// `locked(id)`: redis tier with `lock = true`.
    pub locked: fn(u64) -> Fut<String>,
    pub stats: fn() -> String,
}

static DB: OnceLock<redis::aio::ConnectionManager> = OnceLock::new();
static PAUSES: Mutex<Option<HashMap<u64, oneshot::Receiver<()>>>> = Mutex::new(None);
static RESUMES: Mutex<Option<HashMap<u64, oneshot::Sender<()>>>> = Mutex::new(None);
static OUT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn emit(line: String) {
    let _guard = OUT.lock().await;
    let mut out = tokio::io::stdout();
    let _ = out.write_all(format!("{line}\n").as_bytes()).await;
    let _ = out.flush().await;
}

/// The "database" row `id`: `db:<id>` in the same Redis (not a cache key).
fn row_key(id: u64) -> String {
    format!("db:{id}")
}

/// Writes row `id` of the nodes' "database" (in database 0 of `db`), as a test changes the
/// source of truth.
pub fn set_row(db: &crate::RedisServer, id: u64, value: &str) {
    set_row_in(db, 0, id, value);
}

/// [`set_row`] for nodes whose URL names database `number`.
pub fn set_row_in(db: &crate::RedisServer, number: u8, id: u64, value: &str) {
    redis::cmd("SET")
        .arg(row_key(id))
        .arg(value)
        .query::<()>(&mut db.client_in(number))
        .expect("set the source of truth");
}

/// Reads row `id` of the "database": what bodies do.
pub async fn db_get(id: u64) -> String {
    let mut c = DB.get().expect("db connection").clone();
    redis::cmd("GET")
        .arg(row_key(id))
        .query_async::<Option<String>>(&mut c)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| "none".into())
}

/// Counts a body run of `what` for `id` in Redis (`body:<what>:<id>`), across processes.
pub async fn count_body(what: &str, id: u64) -> u64 {
    let mut c = DB.get().expect("db connection").clone();
    redis::cmd("INCR")
        .arg(format!("body:{what}:{id}"))
        .query_async::<u64>(&mut c)
        .await
        .unwrap_or(0)
}

/// How many times the nodes ran the body of `what` for `id` ([`count_body`]), read from
/// the "database" `db` by the test.
pub fn body_runs(db: &crate::RedisServer, what: &str, id: u64) -> u64 {
    redis::cmd("GET")
        .arg(format!("body:{what}:{id}"))
        .query::<Option<u64>>(&mut db.client())
        .expect("read a body count")
        .unwrap_or(0)
}

/// Records this process as the lock holder of `id` (`holder:<id>` = pid).
pub async fn mark_holder(id: u64) {
    let mut c = DB.get().expect("db connection").clone();
    let _ = redis::cmd("SET")
        .arg(format!("holder:{id}"))
        .arg(std::process::id())
        .query_async::<()>(&mut c)
        .await;
}

/// The test hook between a body's read and its return: if a pause is armed for `id`, tell
/// the driver and wait until it says `resume`.
pub async fn pause_point(id: u64) {
    let rx = PAUSES
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .remove(&id);
    if let Some(rx) = rx {
        emit(format!("! paused {id}")).await;
        let _ = rx.await;
    }
}

fn arm_pause(id: u64) {
    let (tx, rx) = oneshot::channel();
    PAUSES
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(id, rx);
    RESUMES
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(id, tx);
}

fn resume(id: u64) -> bool {
    RESUMES
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .remove(&id)
        .map(|tx| tx.send(()).is_ok())
        .unwrap_or(false)
}

/// Runs a node: configures the runtime from `--redis URL` (or from the Sentinel variables
/// above, with `--redis` the database only), then serves commands from stdin until it closes.
pub fn serve(handlers: Handlers) {
    let url = std::env::args()
        .skip_while(|a| a != "--redis")
        .nth(1)
        .expect("--redis URL");
    // Behind Sentinel (`NODE_SENTINEL_URLS`, comma-separated, and `NODE_SENTINEL_MASTER`) the
    // cache follows the master; the "database" is then `--redis` (a separate server).
    // `NODE_KEY_PREFIX` isolates the nodes of one test from others sharing a Redis.
    let prefix = std::env::var("NODE_KEY_PREFIX").unwrap_or_else(|_| "t".into());
    let builder = cache_runtime::Config::builder()
        .key_prefix(prefix)
        .redis_timeout(Duration::from_millis(500));
    // On a cluster (`NODE_CLUSTER_URLS`, comma-separated seed nodes) the same: the cache is
    // the cluster, the "database" `--redis`.
    let builder = match (
        std::env::var("NODE_SENTINEL_URLS"),
        std::env::var("NODE_SENTINEL_MASTER"),
        std::env::var("NODE_CLUSTER_URLS"),
    ) {
        (_, _, Ok(seeds)) => builder.redis_cluster(seeds.split(',')),
        (Ok(urls), Ok(master), _) => builder.redis_sentinel(urls.split(','), master),
        _ => builder.redis_url(url.clone()),
    };
    let builder = builder.read_from_replicas(std::env::var("NODE_READ_FROM_REPLICAS").is_ok());
    let builder = match std::env::var("NODE_REDIS_TIMEOUT_MS") {
        Ok(ms) => builder.redis_timeout(Duration::from_millis(ms.parse().expect("ms"))),
        Err(_) => builder,
    };
    cache_runtime::init(builder.build()).expect("init");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let client = redis::Client::open(url).expect("url");
        // Reconnecting, so the "database" survives the tests' Redis restarts.
        let conn = redis::aio::ConnectionManager::new(client)
            .await
            .expect("db connection");
        let _ = DB.set(conn);
        // The node's caches are built now (the first with a local tier starts the bus's
        // subscription), not on the first call: tests wait for the subscription first.
        let _ = (handlers.stats)();
        let handlers = Arc::new(handlers);
        emit("! ready".into()).await;
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let h = handlers.clone();
            tokio::spawn(async move {
                let mut parts = line.split_whitespace();
                let req = parts.next().unwrap_or("0").to_string();
                let cmd = parts.next().unwrap_or("").to_string();
                let args: Vec<String> = parts.map(str::to_string).collect();
                let reply = run(&h, &cmd, &args).await;
                emit(match reply {
                    Ok(v) => format!("{req} ok {v}"),
                    Err(e) => format!("{req} err {e}"),
                })
                .await;
            });
        }
    });
}

fn id_arg(args: &[String], i: usize) -> Result<u64, String> {
    args.get(i)
        .ok_or("missing argument")?
        .parse()
        .map_err(|e| format!("bad id: {e}"))
}

async fn run(h: &Handlers, cmd: &str, args: &[String]) -> Result<String, String> {
    Ok(match cmd {
        "get" => (h.get)(id_arg(args, 0)?).await,
        "get_paused" => {
            let id = id_arg(args, 0)?;
            arm_pause(id);
            (h.get)(id).await
        }
        "resume" => resume(id_arg(args, 0)?).to_string(),
        "invalidate" => (h.invalidate)(id_arg(args, 0)?)
            .await
            .map(|()| "done".into())?,
        "populate" => {
            let v = args.get(1).cloned().ok_or("missing value")?;
            (h.populate)(id_arg(args, 0)?, v)
                .await
                .map(|()| "done".into())?
        }
        "lookup" => (h.lookup)(id_arg(args, 0)?)
            .await
            .unwrap_or_else(|| "-".into()),
        "peek" => (h.peek)(id_arg(args, 0)?).unwrap_or_else(|| "-".into()),
        "clear" => (h.clear)().await.map(|()| "done".into())?,
        "clear_local" => {
            (h.clear_local)();
            "done".into()
        }
        "clear_all" => cache_runtime::clear_all()
            .await
            .map(|()| "done".to_string())
            .map_err(|e| e.to_string())?,
        "tag" => {
            let tag = args.first().ok_or("missing tag")?;
            cache_runtime::invalidate_tag(tag)
                .await
                .map(|()| "done".to_string())
                .map_err(|e| e.to_string())?
        }
        "burst" => {
            let id = id_arg(args, 0)?;
            let n = id_arg(args, 1)?;
            let tasks: Vec<_> = (0..n).map(|_| tokio::spawn((h.locked)(id))).collect();
            let mut values = Vec::new();
            for t in tasks {
                values.push(t.await.map_err(|e| e.to_string())?);
            }
            values.sort();
            values.dedup();
            values.join(",")
        }
        "bus" => {
            let s = cache_runtime::bus_status();
            format!(
                "{} {} {} {} {}",
                s.connected, s.subscriptions, s.received, s.applied, s.trusted
            )
        }
        "delays" => cache_runtime::recent_propagation_delays_us()
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
        "stats" => (h.stats)(),
        "trusted" => cache_runtime::bus_status().trusted.to_string(),
        // Every cache's counters, `name=Stats {..}` separated by ` | `.
        "stats_all" => cache_runtime::caches()
            .into_iter()
            .map(|c| format!("{}={:?}", c.name, c.stats))
            .collect::<Vec<_>>()
            .join(" | "),
        "health" => match cache_runtime::health_check().await {
            Ok(()) => "ok".to_string(),
            Err(e) => return Err(e.to_string()),
        },
        "pid" => std::process::id().to_string(),
        "pending" => cache_runtime::redis_status().pending_writes.to_string(),
        "breaker" => format!("{:?}", cache_runtime::redis_status().breaker),
        other => return Err(format!("unknown command {other}")),
    })
}
