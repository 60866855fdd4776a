//! A Redis Cluster on loopback: 3 masters and 3 replicas (by default) on free ports whose
//! cluster-bus ports (`port + 10000`) are free too, created with
//! `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`, ready when
//! [`RedisCluster::start`] returns (every node `cluster_state:ok` and knowing every other,
//! all 16384 slots served, every replica's `master_link_status:up`, every master's replicas
//! acknowledging a write within 100 ms).
//!
//! ```no_run
//! use cache_tests::RedisCluster;
//! let cluster = RedisCluster::start();
//! let seeds = cluster.seed_urls(); // REDIS_CLUSTER_URLS, comma-joined
//! assert_eq!(cluster.masters().len(), 3);
//! let owner = cluster.master_for_key("{cr:417}:t:user:42");
//! let killed = cluster.kill_master(owner.port());
//! let promoted = cluster.wait_failover(killed);
//! assert_ne!(promoted, killed);
//! ```
//!
//! [`RedisCluster::start_tls`] starts a TLS-only cluster (plain ports disabled; clients,
//! the cluster bus and replication use TLS with a [`TlsFiles`] certificate); the harness's
//! own queries then go over TLS with its CA.
//!
//! Nodes are [`RedisServer`]s: they die with the test process.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{binary_path, free_port, info_field, wait_until, RedisOptions, RedisServer, TlsFiles};

/// How long creation and failovers may take before the harness gives up.
const SETTLE: Duration = Duration::from_secs(60);

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// Node id.
    pub id: String,
    /// Client port.
    pub port: u16,
    /// Flags (`myself`, `master`, `slave`, `fail`, `fail?`, …).
    pub flags: Vec<String>,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// Slot ranges served, as `(first, last)` (masters only).
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    /// Whether it is a master that is not flagged as failing.
    pub fn is_live_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master") && !self.is_failing()
    }

    /// Flagged `fail` or `fail?`.
    pub fn is_failing(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }

    /// Whether it serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// Parses a `CLUSTER NODES` reply.
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            // ip:port@cport[,hostname]
            let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            Some(ClusterNode {
                id: f[0].to_string(),
                port,
                flags: f[2].split(',').map(str::to_string).collect(),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// A running cluster. Dropping it stops every node.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// (killed master's port, first slot it served).
    killed: std::sync::Mutex<Vec<(u16, u16)>>,
}

impl RedisCluster {
    /// 3 masters + 3 replicas.
    pub fn start() -> Self {
        Self::start_with(3, RedisOptions::new())
    }

    /// `masters` masters, each with one replica, with extra configuration for every node.
    pub fn start_with(masters: usize, options: RedisOptions) -> Self {
        Self::start_nodes(masters, options, None)
    }

    /// 3 masters + 3 replicas, TLS only: every node serves `rediss://` on its port (the
    /// plain port is disabled) with `tls`'s certificate, and the cluster bus and replication
    /// use TLS too (`--tls-cluster yes --tls-replication yes`). Clients need the CA
    /// (`tls.ca`); the harness's own queries use it.
    pub fn start_tls(tls: &TlsFiles) -> Self {
        Self::start_tls_with(3, tls, RedisOptions::new())
    }

    /// [`start_tls`](Self::start_tls) with `masters` masters and extra configuration for
    /// every node (e.g. an ACL user with [`RedisOptions::user`]).
    pub fn start_tls_with(masters: usize, tls: &TlsFiles, options: RedisOptions) -> Self {
        Self::start_nodes(masters, options, Some(tls))
    }

    fn start_nodes(masters: usize, options: RedisOptions, tls: Option<&TlsFiles>) -> Self {
        assert!(masters >= 3, "redis-cli --cluster create needs 3 masters");
        let ports = cluster_ports(masters * 2);
        let nodes: Vec<RedisServer> = ports
            .iter()
            .map(|&port| {
                let options = options
                    .clone()
                    .arg("--cluster-enabled", "yes")
                    .arg("--cluster-config-file", "nodes.conf")
                    .arg("--cluster-node-timeout", "1000")
                    // A replica may take over however long it was disconnected.
                    .arg("--cluster-replica-validity-factor", "0");
                match tls {
                    // The bus port is `port + 10000` with TLS too (of the TLS port).
                    Some(tls) => RedisServer::start_tls_with_options_on(
                        port,
                        tls,
                        options
                            .arg("--tls-cluster", "yes")
                            .arg("--tls-replication", "yes"),
                    ),
                    None => RedisServer::start_with_options_on(port, options),
                }
            })
            .collect();
        let mut create = Command::new(binary_path("redis-cli"));
        if tls.is_some() {
            let ca = nodes[0].tls_ca_file().expect("a TLS node has a CA file");
            create.arg("--tls").arg("--cacert").arg(ca);
        }
        create.arg("--cluster").arg("create");
        for p in &ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed{}: {}\n{}",
            if tls.is_some() {
                " (TLS: this redis-cli needs TLS support, as Debian's has)"
            } else {
                ""
            },
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self {
            nodes,
            killed: std::sync::Mutex::new(Vec::new()),
        };
        // `redis-cli` returns once every slot is covered; a replica may still be a master
        // without slots until its `CLUSTER REPLICATE` has been gossiped, and `wait_healthy`
        // takes a master for settled.
        wait_until(SETTLE, "every replica to be attached to its master", || {
            cluster
                .topology()
                .iter()
                .filter(|n| n.master_id.is_some())
                .count()
                == masters
        });
        cluster.wait_healthy();
        cluster
    }

    /// Every node, in start order (roles change with failovers: see [`masters`](Self::masters)).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `redis://127.0.0.1:PORT/` (`rediss://` for a TLS cluster) of every node (seed nodes
    /// for `REDIS_CLUSTER_URLS`).
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// `CLUSTER NODES` as seen by the first running node that answers.
    pub fn topology(&self) -> Vec<ClusterNode> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .find_map(|n| n.cmd::<String>(&["CLUSTER", "NODES"]).ok())
            .map(|t| parse_cluster_nodes(&t))
            .expect("no cluster node answers CLUSTER NODES")
    }

    /// The live masters that serve slots.
    pub fn masters(&self) -> Vec<&RedisServer> {
        self.topology()
            .into_iter()
            .filter(|n| n.is_live_master() && !n.slots.is_empty())
            .map(|n| self.node(n.port))
            .collect()
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .find_map(|n| n.cmd::<u16>(&["CLUSTER", "KEYSLOT", key]).ok())
            .expect("no cluster node answers CLUSTER KEYSLOT")
    }

    /// The live master serving `key`'s slot.
    pub fn master_for_key(&self, key: &str) -> &RedisServer {
        let slot = self.slot_of(key);
        let node = self
            .topology()
            .into_iter()
            .find(|n| n.is_live_master() && n.serves(slot))
            .unwrap_or_else(|| panic!("no live master serves slot {slot}"));
        self.node(node.port)
    }

    /// A raw connection to the node serving `key` (reads and writes of that key go there).
    pub fn client_for_key(&self, key: &str) -> redis::Connection {
        self.master_for_key(key).client()
    }

    /// Waits until every running node says `cluster_state:ok`, knows every running node, and
    /// all 16384 slots are served by live masters; and every running replica's link is up.
    pub fn wait_healthy(&self) {
        let running: Vec<&RedisServer> = self.nodes.iter().filter(|n| n.is_running()).collect();
        for node in &running {
            wait_until(
                SETTLE,
                &format!("cluster node {} to report cluster_state:ok", node.port()),
                || {
                    let Ok(info) = node.cmd::<String>(&["CLUSTER", "INFO"]) else {
                        return false;
                    };
                    info_field(&info, "cluster_state").as_deref() == Some("ok")
                        && info_field(&info, "cluster_slots_ok").as_deref() == Some("16384")
                },
            );
        }
        wait_until(SETTLE, "every slot to be served by a live master", || {
            let topo = self.topology();
            let served: u32 = topo
                .iter()
                .filter(|n| n.is_live_master())
                .flat_map(|n| n.slots.iter())
                .map(|&(a, b)| u32::from(b - a) + 1)
                .sum();
            served == 16384
        });
        for node in &running {
            wait_until(
                SETTLE,
                &format!("node {} to have its replication settled", node.port()),
                || match node.info_field("role").as_deref() {
                    Some("master") => true,
                    Some("slave") => node.info_field("master_link_status").as_deref() == Some("up"),
                    _ => false,
                },
            );
        }
        self.wait_replicas_acknowledge();
    }

    /// Waits until every live master's replicas acknowledge a write within 100 ms (`WAIT`).
    /// A replica whose link is up can still take its first acknowledgement past a cache's
    /// 500 ms op timeout on a loaded 2-core host (seen in CI: a confirmed invalidation right
    /// after the cluster formed returned `Err`); tests start once the path is prompt.
    fn wait_replicas_acknowledge(&self) {
        let masters = self.topology();
        for n in masters
            .iter()
            .filter(|n| n.is_live_master() && !n.slots.is_empty())
        {
            let master = self.node(n.port);
            let replicas: usize = master
                .info_field("connected_slaves")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if replicas == 0 {
                continue;
            }
            let key = (0..)
                .map(|i| format!("harness:ack:{i}"))
                .find(|k| n.serves(self.slot_of(k)))
                .expect("a key of the master's slots");
            let mut c = master.client();
            wait_until(
                SETTLE,
                &format!(
                    "node {}'s {replicas} replica(s) to acknowledge a write",
                    n.port
                ),
                || {
                    let acked: redis::RedisResult<usize> = redis::pipe()
                        .cmd("SET")
                        .arg(&key)
                        .arg(1)
                        .ignore()
                        .cmd("WAIT")
                        .arg(replicas)
                        .arg(100)
                        .query::<(usize,)>(&mut c)
                        .map(|(acked,)| acked);
                    matches!(acked, Ok(acked) if acked >= replicas)
                },
            );
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&key).query(&mut c);
        }
    }

    /// SIGKILLs the master on `port` (which must be a live master); returns the port. Its
    /// replica takes over after `cluster-node-timeout` (1 s) and an election: see
    /// [`wait_failover`](Self::wait_failover).
    pub fn kill_master(&self, port: u16) -> u16 {
        let topo = self.topology();
        let slot = topo
            .iter()
            .find(|n| n.port == port && n.is_live_master())
            .and_then(|n| n.slots.first().map(|&(a, _)| a))
            .unwrap_or_else(|| panic!("node {port} is not a live master with slots: {topo:?}"));
        self.killed.lock().unwrap().push((port, slot));
        self.node(port).kill();
        port
    }

    /// Waits until the slots of the killed master `killed` are served by a live master on
    /// another port (its former replica) and the surviving nodes are healthy again. Returns
    /// the new master's port.
    pub fn wait_failover(&self, killed: u16) -> u16 {
        let slot = self
            .killed
            .lock()
            .unwrap()
            .iter()
            .find(|&&(p, _)| p == killed)
            .map(|&(_, slot)| slot)
            .unwrap_or_else(|| panic!("{killed} was not killed with kill_master"));
        let mut new = 0;
        wait_until(
            SETTLE,
            &format!("a replica of {killed} to be promoted (slot {slot})"),
            || match self
                .topology()
                .iter()
                .find(|n| n.is_live_master() && n.serves(slot) && n.port != killed)
            {
                Some(n) => {
                    new = n.port;
                    true
                }
                None => false,
            },
        );
        self.wait_healthy();
        new
    }

    /// Restarts a killed node (empty, but with its `nodes.conf`): it rejoins as a replica.
    pub fn restart_node(&self, port: u16) {
        self.node(port).restart();
    }
}

/// `n` free loopback ports whose `port + 10000` (the cluster bus) is free too.
pub fn cluster_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let p = free_port();
        if p > 55_000 || ports.contains(&p) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            ports.push(p);
        }
    }
    ports
}
