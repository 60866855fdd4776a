//! A Sentinel set on free loopback ports: one master, one replica, three sentinels
//! (quorum 2), ready for a failover when [`SentinelSet::start`] returns.
//!
//! ```no_run
//! use cache_tests::SentinelSet;
//! let set = SentinelSet::start("cache");
//! let urls = set.sentinel_urls(); // REDIS_SENTINEL_URLS, comma-joined
//! assert_eq!(urls.len(), 3);
//! let before = set.master_port();
//! let after = set.failover();
//! assert_ne!(before, after);
//! assert_eq!(set.master().port(), after);
//! ```
//!
//! Every process dies with the test process (the servers are [`RedisServer`]s, the sentinels
//! are spawned the same way).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{
    binary_path, find_binary, free_port, info_field, spawn_tied_to_process, RedisOptions,
    RedisServer,
};

/// How long start-up and failovers may take before the harness gives up (loopback; generous
/// for a loaded 2-core machine).
const SETTLE: Duration = Duration::from_secs(60);

/// One `redis-sentinel` process.
pub struct Sentinel {
    port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Sentinel {
    fn start(master_name: &str, master_port: u16) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "cache-tests-sentinel-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create sentinel dir");
        // Sentinel rewrites its configuration file: each gets its own, writable.
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                 dir {dir}\n\
                 sentinel monitor {master_name} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {master_name} 1000\n\
                 sentinel failover-timeout {master_name} 5000\n\
                 sentinel parallel-syncs {master_name} 1\n",
                dir = dir.display()
            ),
        )
        .expect("write sentinel.conf");
        // `redis-sentinel` is `redis-server --sentinel` (Debian packages it separately).
        let mut cmd = match find_binary("redis-sentinel") {
            Some(sentinel) => Command::new(sentinel),
            None => Command::new(binary_path("redis-server")),
        };
        cmd.arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let sentinel = Self {
            port,
            dir,
            child: Mutex::new(Some(spawn_tied_to_process(cmd))),
        };
        crate::wait_until(
            SETTLE,
            &format!("sentinel on {port} to answer PING"),
            || sentinel.cmd::<String>(&["PING"]).is_ok(),
        );
        sentinel
    }

    /// The sentinel's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A raw connection to this sentinel.
    pub fn client(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// Runs one command on this sentinel.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut c = self.client()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c)
    }

    /// SIGKILL.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One master, one replica and three sentinels monitoring them as `name`.
pub struct SentinelSet {
    name: String,
    nodes: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
}

impl SentinelSet {
    /// Starts the set and waits until it can fail over: the replica's link is up and every
    /// sentinel lists the replica (not down) and knows the two other sentinels.
    pub fn start(name: &str) -> Self {
        Self::start_with_options(name, RedisOptions::new())
    }

    /// [`start`](Self::start) with extra configuration for both data nodes.
    pub fn start_with_options(name: &str, options: RedisOptions) -> Self {
        let master = RedisServer::start_with_options(options.clone());
        let replica = RedisServer::start_with_options(options.replica_of(master.port()));
        let sentinels = (0..3)
            .map(|_| Sentinel::start(name, master.port()))
            .collect();
        let set = Self {
            name: name.to_string(),
            nodes: vec![master, replica],
            sentinels,
        };
        set.wait_ready();
        set
    }

    /// The name the sentinels monitor (`REDIS_SENTINEL_MASTER`).
    pub fn master_name(&self) -> &str {
        &self.name
    }

    /// `redis://127.0.0.1:PORT` of each sentinel (`REDIS_SENTINEL_URLS`, comma-joined).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Sentinel::url).collect()
    }

    /// The sentinels.
    pub fn sentinels(&self) -> &[Sentinel] {
        &self.sentinels
    }

    /// Both data nodes, in start order (the first was the master at start).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The master's port as the first sentinel that answers reports it.
    pub fn master_port(&self) -> u16 {
        self.sentinels
            .iter()
            .find_map(|s| self.master_port_by(s))
            .expect("no sentinel reports a master")
    }

    fn master_port_by(&self, s: &Sentinel) -> Option<u16> {
        let addr: Vec<String> = s
            .cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.name])
            .ok()?;
        addr.get(1)?.parse().ok()
    }

    /// The data node that the sentinels report as master.
    pub fn master(&self) -> &RedisServer {
        let port = self.master_port();
        self.node(port)
    }

    /// The data node that is not the master.
    pub fn replica(&self) -> &RedisServer {
        let port = self.master_port();
        self.nodes
            .iter()
            .find(|n| n.port() != port)
            .expect("two data nodes")
    }

    /// `redis://127.0.0.1:PORT/` of the current master (for a client pinned to it, like a
    /// runtime without Sentinel support).
    pub fn master_url(&self) -> String {
        self.master().url()
    }

    fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    /// Waits until the set can fail over (see [`start`](Self::start)); also usable after a
    /// failover, once the old master rejoined as a replica.
    pub fn wait_ready(&self) {
        let master = self.master_port();
        let replica = self
            .nodes
            .iter()
            .find(|n| n.port() != master)
            .expect("two data nodes");
        crate::wait_until(SETTLE, "the replica's master_link_status:up", || {
            replica.is_running()
                && replica.info_field("master_link_status").as_deref() == Some("up")
                && replica
                    .info_field("master_port")
                    .and_then(|p| p.parse().ok())
                    == Some(master)
        });
        for s in &self.sentinels {
            crate::wait_until(
                SETTLE,
                &format!(
                    "sentinel {} to list replica {} with its link up",
                    s.port(),
                    replica.port()
                ),
                || self.sentinel_sees_replica(s, replica.port()),
            );
            crate::wait_until(
                SETTLE,
                &format!("sentinel {} to know the two other sentinels", s.port()),
                || {
                    s.cmd::<Vec<redis::Value>>(&["SENTINEL", "SENTINELS", &self.name])
                        .map(|v| v.len() >= 2)
                        .unwrap_or(false)
                },
            );
        }
    }

    fn sentinel_sees_replica(&self, s: &Sentinel, port: u16) -> bool {
        let Ok(replicas) = s.cmd::<Vec<Vec<String>>>(&["SENTINEL", "REPLICAS", &self.name]) else {
            return false;
        };
        replicas.iter().any(|fields| {
            let get = |k: &str| {
                fields
                    .chunks(2)
                    .find(|kv| kv[0] == k)
                    .and_then(|kv| kv.get(1))
                    .cloned()
                    .unwrap_or_default()
            };
            get("port") == port.to_string()
                && !get("flags").contains("down")
                && !get("flags").contains("disconnected")
                && get("master-link-status") == "ok"
        })
    }

    /// `SENTINEL FAILOVER`, then waits until every sentinel reports the promoted replica as
    /// master and it says `role:master`. Returns the new master's port.
    pub fn failover(&self) -> u16 {
        let old = self.master_port();
        let deadline = Instant::now() + SETTLE;
        loop {
            match self.sentinels[0].cmd::<String>(&["SENTINEL", "FAILOVER", &self.name]) {
                Ok(_) => break,
                // NOGOODSLAVE / INPROG while the sentinels are still converging: retry.
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "SENTINEL FAILOVER kept failing: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_new_master(old)
    }

    /// SIGKILLs the current master (the sentinels then fail over on their own, after
    /// `down-after-milliseconds` = 1 s); returns its port. Pair with
    /// [`wait_new_master`](Self::wait_new_master).
    pub fn kill_master(&self) -> u16 {
        let port = self.master_port();
        self.node(port).kill();
        port
    }

    /// Waits until every sentinel reports a master other than `old` and that node says
    /// `role:master`. Returns its port.
    pub fn wait_new_master(&self, old: u16) -> u16 {
        let mut new = 0;
        crate::wait_until(
            SETTLE,
            &format!("every sentinel to report a master other than {old}"),
            || {
                let ports: Vec<Option<u16>> = self
                    .sentinels
                    .iter()
                    .map(|s| self.master_port_by(s))
                    .collect();
                match ports.first() {
                    Some(Some(p)) if *p != old && ports.iter().all(|q| *q == Some(*p)) => {
                        new = *p;
                        self.node(*p).info_field("role").as_deref() == Some("master")
                    }
                    _ => false,
                }
            },
        );
        new
    }

    /// Restarts a killed data node (empty); the sentinels reconfigure it as a replica of the
    /// current master.
    pub fn restart_node(&self, port: u16) {
        self.node(port).restart();
    }
}

/// The `role` field of a node's `INFO replication` (`master` or `slave`).
pub fn role_of(server: &RedisServer) -> Option<String> {
    let info: String = server.cmd(&["INFO", "replication"]).ok()?;
    info_field(&info, "role")
}
