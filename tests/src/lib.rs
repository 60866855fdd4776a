//! Test harness: a real `redis-server` per test binary (or per test), on a free loopback port,
//! that tests can kill, pause, restart, flush and configure; a Sentinel set
//! ([`SentinelSet`]) and a Redis Cluster ([`RedisCluster`]) built from the same servers.
//!
//! ```no_run
//! let server = cache_tests::RedisServer::start();
//! let mut raw = server.client();
//! let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut raw).unwrap();
//! server.kill();
//! server.restart();
//! ```
//!
//! With extra configuration (memory pressure, a small pub/sub output buffer):
//!
//! ```no_run
//! use cache_tests::{RedisOptions, RedisServer};
//! let server = RedisServer::start_with_options(
//!     RedisOptions::new()
//!         .maxmemory("2mb", "allkeys-random")
//!         .pubsub_buffer_limit("64kb"),
//! );
//! server.acl_setuser("cache on >pw ~{cr:* &{cr:* -@all +get");
//! assert_eq!(server.flushall(), ());
//! ```

pub mod cdn;
pub mod cluster;
pub mod node;
pub mod proxy;
pub mod sentinel;
pub mod tls;
pub mod varnish;

pub use cluster::RedisCluster;
pub use sentinel::SentinelSet;
pub use tls::TlsFiles;
pub use varnish::VarnishServer;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "The tests need a real Redis (redis-server, redis-cli, redis-sentinel): \
install Debian's package with `apt-get install -y redis-server` (or run `bash .ci/run`, which does)";

/// A `redis-server` process owned by the test. Killed when dropped and when the test process
/// exits (even on a panic or abort: the child is tied to a keeper thread with PDEATHSIG).
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
    extra_args: Vec<String>,
    password: Option<String>,
    /// CA certificate (PEM) of a TLS-only server.
    tls_ca: Option<Vec<u8>>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`.
    /// Panics with an install hint when `redis-server` is missing.
    pub fn start() -> Self {
        Self::start_with(free_port(), &[])
    }

    /// Starts a server on a given port (e.g. one that a test first used while nothing listened).
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// Starts a server whose default user needs `password` (`--requirepass`).
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(free_port(), &["--requirepass", password])
    }

    /// Starts a server on a free port with extra configuration (see [`RedisOptions`]).
    pub fn start_with_options(options: RedisOptions) -> Self {
        Self::start_with_options_on(free_port(), options)
    }

    /// [`start_with_options`](Self::start_with_options) on a given port.
    pub fn start_with_options_on(port: u16, options: RedisOptions) -> Self {
        let args: Vec<&str> = options.args.iter().map(String::as_str).collect();
        Self::start_with(port, &args)
    }

    fn start_with(port: u16, extra: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("cache-tests-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create redis dir");
        let password = extra
            .windows(2)
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1].to_string());
        let server = Self {
            port,
            dir,
            child: Mutex::new(None),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            password,
            tls_ca: None,
        };
        server.launch();
        server
    }

    /// A TLS-only server (`--tls-port`, plain port disabled) with `cert_pem`/`key_pem`,
    /// trusted through `ca_pem`; clients need `rediss://` and that CA.
    pub fn start_tls(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Self {
        let tls = TlsFiles {
            ca: ca_pem.to_string(),
            cert: cert_pem.to_string(),
            key: key_pem.to_string(),
        };
        Self::start_tls_with_options_on(free_port(), &tls, RedisOptions::new())
    }

    /// [`start_tls`](Self::start_tls) on a given port (its TLS port; the plain port is
    /// disabled), with extra configuration (e.g. `--tls-cluster yes`).
    pub fn start_tls_with_options_on(port: u16, tls: &TlsFiles, options: RedisOptions) -> Self {
        let dir =
            std::env::temp_dir().join(format!("cache-tests-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create redis dir");
        for (name, pem) in [
            ("ca.pem", &tls.ca),
            ("cert.pem", &tls.cert),
            ("key.pem", &tls.key),
        ] {
            std::fs::write(dir.join(name), pem).expect("write a TLS file");
        }
        let file = |n: &str| dir.join(n).to_string_lossy().into_owned();
        let mut extra = vec![
            "--tls-port".to_string(),
            port.to_string(),
            "--tls-cert-file".into(),
            file("cert.pem"),
            "--tls-key-file".into(),
            file("key.pem"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        extra.extend(options.args);
        let server = Self {
            port,
            dir,
            child: Mutex::new(None),
            extra_args: extra,
            password: None,
            tls_ca: Some(tls.ca.as_bytes().to_vec()),
        };
        server.launch();
        server
    }

    /// The file of the CA certificate (PEM) of a TLS server (e.g. for `redis-cli --cacert`).
    pub fn tls_ca_file(&self) -> Option<PathBuf> {
        self.tls_ca.as_ref().map(|_| self.dir.join("ca.pem"))
    }

    fn launch(&self) {
        let mut cmd = Command::new(redis_server_path());
        let plain_port = if self.tls_ca.is_some() {
            "0".to_string()
        } else {
            self.port.to_string()
        };
        cmd.args(["--port", &plain_port])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            // A sweep of every test under a server setting (`--tracking-table-max-keys 1`).
            .args(
                std::env::var("CACHE_TESTS_REDIS_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_tied_to_process(cmd);
        *self.child.lock().unwrap() = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self
                .raw_client()
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            if let Some(child) = self.child.lock().unwrap().as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let hint = if self.tls_ca.is_some() {
                        " (a TLS-only server: this redis-server needs TLS support, \
                         as Debian's has)"
                    } else {
                        ""
                    };
                    panic!(
                        "redis-server on port {} exited at start: {status}{hint}",
                        self.port
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/` (with the password, if the server has one), or
    /// `rediss://127.0.0.1:PORT/` for a TLS server.
    pub fn url(&self) -> String {
        match (&self.password, &self.tls_ca) {
            (Some(p), _) => format!("redis://default:{p}@127.0.0.1:{}/", self.port),
            (None, Some(_)) => format!("rediss://127.0.0.1:{}/", self.port),
            (None, None) => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// The CA certificate (PEM) of a TLS server.
    pub fn tls_ca(&self) -> Option<&[u8]> {
        self.tls_ca.as_deref()
    }

    fn raw_client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls_ca {
            Some(ca) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                redis::Client::build_with_tls(
                    self.url(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.clone()),
                    },
                )
            }
            None => redis::Client::open(self.url()),
        }
    }

    /// A raw client in database `db` (`SELECT`ed).
    pub fn client_in(&self, db: u8) -> redis::Connection {
        let mut c = self.client();
        redis::cmd("SELECT")
            .arg(db)
            .query::<()>(&mut c)
            .expect("SELECT");
        c
    }

    /// A raw (blocking) client, to check or tamper with what the cache wrote.
    pub fn client(&self) -> redis::Connection {
        self.raw_client()
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the test redis")
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after `kill`). Data is gone, as after a
    /// crash of a Redis without persistence, unless a `SAVE` wrote a snapshot into the
    /// server's directory: then the data set is that snapshot's (a crash of a Redis that
    /// saves RDB snapshots, restarted from the last one).
    pub fn restart(&self) {
        self.kill();
        self.launch();
    }

    /// SIGSTOP: the server hangs, connections stay open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self
            .child
            .lock()
            .unwrap()
            .as_ref()
            .expect("server is running")
            .id();
        let ok = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} {pid} failed");
    }
}

impl RedisServer {
    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// Whether the process is still running (it may have exited on its own, e.g. a
    /// `SHUTDOWN`).
    pub fn is_running(&self) -> bool {
        match self.child.lock().unwrap().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Runs one command on a fresh raw connection and returns its reply.
    /// Fails (rather than panics) when the server does not answer.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut c = self
            .raw_client()?
            .get_connection_with_timeout(Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c)
    }

    /// Whether `key` exists (`EXISTS`).
    pub fn exists(&self, key: &str) -> bool {
        self.cmd::<bool>(&["EXISTS", key]).expect("EXISTS")
    }

    /// `FLUSHALL` (every database, synchronously).
    pub fn flushall(&self) {
        self.cmd::<()>(&["FLUSHALL", "SYNC"]).expect("FLUSHALL");
    }

    /// `FLUSHDB` of database 0 (the one the runtime uses unless its URL says otherwise).
    pub fn flushdb(&self) {
        self.cmd::<()>(&["FLUSHDB", "SYNC"]).expect("FLUSHDB");
    }

    /// Kills the process and starts an empty server on the same port and configuration: a
    /// restart of a Redis without persistence (a snapshot a `SAVE` left is removed first).
    pub fn restart_empty(&self) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        self.launch();
    }

    /// `SAVE`: an RDB snapshot of the data set now, which the next [`restart`](Self::restart)
    /// or [`restart_from_snapshot`](Self::restart_from_snapshot) loads.
    pub fn save_snapshot(&self) {
        self.cmd::<()>(&["SAVE"]).expect("SAVE");
    }

    /// Kills the process (`SIGKILL`: nothing saved at exit) and starts it again from the last
    /// [`save_snapshot`](Self::save_snapshot): a crash of a Redis that takes RDB snapshots,
    /// restarted from its last one. The snapshot is then removed, so a later restart is empty.
    pub fn restart_from_snapshot(&self) {
        self.restart();
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
    }

    /// `CLIENT KILL TYPE pubsub`: drops every subscriber (the runtime's bus included).
    /// Returns how many connections were closed.
    pub fn kill_pubsub_clients(&self) -> u64 {
        self.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .expect("CLIENT KILL TYPE pubsub")
    }

    /// Connections with client tracking on (`CLIENT LIST`, flag `t`): those a null
    /// invalidation push goes to.
    pub fn tracking_clients(&self) -> usize {
        let list: String = self.cmd(&["CLIENT", "LIST"]).expect("CLIENT LIST");
        list.lines()
            .filter(|l| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix("flags="))
                    .is_some_and(|flags| flags.contains('t'))
            })
            .count()
    }

    /// `CLIENT KILL TYPE normal SKIPME yes`: drops every ordinary connection but the one
    /// sending the command. Returns how many were closed.
    pub fn kill_normal_clients(&self) -> u64 {
        self.cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            .expect("CLIENT KILL TYPE normal")
    }

    /// `REPLICAOF` `master`, then waits (up to 20 s) until the initial sync is done.
    pub fn replicate_from(&self, master: &RedisServer) {
        let port = master.port().to_string();
        self.cmd::<()>(&["REPLICAOF", "127.0.0.1", &port])
            .expect("REPLICAOF");
        eventually_blocking(Duration::from_secs(20), "the replica synced", || {
            self.info_field("master_link_status").as_deref() == Some("up")
                && self.info_field("master_sync_in_progress").as_deref() == Some("0")
        });
    }

    /// `REPLICAOF NO ONE`: a master again, with the data set it has.
    pub fn promote(&self) {
        self.cmd::<()>(&["REPLICAOF", "NO", "ONE"])
            .expect("REPLICAOF NO ONE");
    }

    /// Ordinary connections open now (`CLIENT LIST TYPE normal`: neither subscribers nor
    /// replicas), the one asking excepted.
    pub fn normal_clients(&self) -> usize {
        let list: String = self
            .cmd(&["CLIENT", "LIST", "TYPE", "normal"])
            .expect("CLIENT LIST TYPE normal");
        list.lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("cmd=client|list"))
            .count()
    }

    /// `CONFIG SET name value`.
    pub fn config_set(&self, name: &str, value: &str) {
        self.cmd::<()>(&["CONFIG", "SET", name, value])
            .unwrap_or_else(|e| panic!("CONFIG SET {name} {value}: {e}"));
    }

    /// `CONFIG GET name`: the value.
    pub fn config_get(&self, name: &str) -> String {
        let pair: Vec<String> = self.cmd(&["CONFIG", "GET", name]).expect("CONFIG GET");
        pair.into_iter().nth(1).unwrap_or_default()
    }

    /// `ACL SETUSER` with the rules of `line` (split on whitespace), e.g.
    /// `"cache on >pw ~{cr:* &{cr:* -@all +get"`.
    pub fn acl_setuser(&self, line: &str) {
        let mut args = vec!["ACL", "SETUSER"];
        args.extend(line.split_whitespace());
        self.cmd::<()>(&args)
            .unwrap_or_else(|e| panic!("ACL SETUSER {line}: {e}"));
    }

    /// `redis://user:password@127.0.0.1:PORT/`: a URL for an ACL user.
    pub fn url_for_user(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}/", self.port)
    }

    /// A field of `INFO` (e.g. `used_memory`, `role`, `master_link_status`, `run_id`).
    pub fn info_field(&self, field: &str) -> Option<String> {
        let info: String = self.cmd(&["INFO", "everything"]).ok()?;
        info_field(&info, field)
    }

    /// `(calls, rejected calls)` of one command in `INFO commandstats` (`"evalsha"`,
    /// `"client|reply"`); `(0, 0)` for a command never called.
    pub fn command_stats(&self, command: &str) -> (u64, u64) {
        let info: String = self
            .cmd(&["INFO", "commandstats"])
            .expect("INFO commandstats");
        let prefix = format!("cmdstat_{command}:");
        let Some(line) = info.lines().find(|l| l.starts_with(&prefix)) else {
            return (0, 0);
        };
        let field = |f: &str| {
            line.split([':', ','])
                .find_map(|kv| kv.strip_prefix(f))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("calls="), field("rejected_calls="))
    }

    /// Keys matching `pattern` (`SCAN`, never `KEYS`).
    pub fn scan(&self, pattern: &str) -> Vec<String> {
        let mut c = self.client();
        let iter: redis::Iter<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut c)
            .expect("SCAN");
        iter.collect::<Result<Vec<_>, _>>().expect("SCAN")
    }

    /// Logs every command from now on in the `SLOWLOG` (emptied), for
    /// [`slowlog_commands`](Self::slowlog_commands).
    pub fn log_every_command(&self) {
        self.config_set("slowlog-log-slower-than", "0");
        self.config_set("slowlog-max-len", "1024");
        self.cmd::<()>(&["SLOWLOG", "RESET"])
            .expect("SLOWLOG RESET");
    }

    /// Reads of `key` (`GET`, `MGET`) in the `SLOWLOG`: this key's only (a runtime also reads
    /// other keys: the incarnation record when a connection opens, scope tokens), and not a
    /// script's (`SLOWLOG` logs the `EVALSHA`, not the commands it runs).
    pub fn slowlog_reads_of(&self, key: &str) -> usize {
        self.slowlog_commands()
            .iter()
            .filter(|c| {
                (c[0].eq_ignore_ascii_case("get") || c[0].eq_ignore_ascii_case("mget"))
                    && c[1..].iter().any(|a| a == key)
            })
            .count()
    }

    /// The commands named `name` (any case) in the `SLOWLOG`, newest first.
    pub fn slowlog_commands_named(&self, name: &str) -> Vec<Vec<String>> {
        let mut commands = self.slowlog_commands();
        commands.retain(|c| c[0].eq_ignore_ascii_case(name));
        commands
    }

    /// The commands in the `SLOWLOG` (newest first), each as its arguments in text.
    pub fn slowlog_commands(&self) -> Vec<Vec<String>> {
        let log: Vec<redis::Value> = self.cmd(&["SLOWLOG", "GET", "1024"]).expect("SLOWLOG");
        log.iter()
            .filter_map(|entry| match entry {
                redis::Value::Array(fields) => match fields.get(3) {
                    Some(redis::Value::Array(args)) => Some(
                        args.iter()
                            .map(|a| match a {
                                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into(),
                                other => format!("{other:?}"),
                            })
                            .collect(),
                    ),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }
}

/// A field (`name:value` line) of an `INFO` reply.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// Extra `redis-server` configuration for [`RedisServer::start_with_options`]. Every option
/// is a command-line `--name value` pair; persistence is always off.
///
/// ```no_run
/// use cache_tests::{RedisOptions, RedisServer};
/// let opts = RedisOptions::new()
///     .maxmemory("1mb", "noeviction")
///     .arg("--hz", "100");
/// let server = RedisServer::start_with_options(opts);
/// assert_eq!(server.config_get("maxmemory-policy"), "noeviction");
/// ```
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    args: Vec<String>,
}

impl RedisOptions {
    /// No extra configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Any `--name value` option.
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.args.push(name.to_string());
        self.args.push(value.to_string());
        self
    }

    /// `--rename-command <command> <new name>`: e.g. a server whose `HELLO` is gone (as
    /// behind a proxy that only speaks RESP2).
    pub fn rename_command(mut self, command: &str, new_name: &str) -> Self {
        self.args.push("--rename-command".to_string());
        self.args.push(command.to_string());
        self.args.push(new_name.to_string());
        self
    }

    /// `--maxmemory <size> --maxmemory-policy <policy>` (e.g. `"2mb"`, `"allkeys-lru"`).
    pub fn maxmemory(self, size: &str, policy: &str) -> Self {
        self.arg("--maxmemory", size)
            .arg("--maxmemory-policy", policy)
    }

    /// `--client-output-buffer-limit "pubsub <hard> 0 0"`: a subscriber that falls more than
    /// `hard` behind is disconnected by the server.
    pub fn pubsub_buffer_limit(mut self, hard: &str) -> Self {
        self.args
            .extend(["--client-output-buffer-limit", "pubsub", hard, "0", "0"].map(str::to_string));
        self
    }

    /// `--user <rules>`: an ACL user defined at start (e.g.
    /// `"cache on >pw ~{cr:* &{cr:* -@all +get"`).
    pub fn user(mut self, rules: &str) -> Self {
        self.args.push("--user".to_string());
        self.args
            .extend(rules.split_whitespace().map(str::to_string));
        self
    }

    /// `--replicaof 127.0.0.1 <port>`.
    pub fn replica_of(mut self, port: u16) -> Self {
        self.args.extend([
            "--replicaof".to_string(),
            "127.0.0.1".into(),
            port.to_string(),
        ]);
        self
    }

    /// The options given so far, as command-line arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn redis_server_path() -> PathBuf {
    binary_path("redis-server")
}

/// The path of a Redis binary (`redis-server`, `redis-cli`, `redis-sentinel`) on `PATH`, or a
/// panic with an install hint.
pub fn binary_path(name: &str) -> PathBuf {
    find_binary(name).unwrap_or_else(|| panic!("{name} was not found on PATH. {INSTALL_HINT}"))
}

/// The path of a binary on `PATH` (or in the usual system directories), if any.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/bin",
        "/usr/sbin",
        "/usr/local/bin",
    ]) {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// PDEATHSIG fires when the *thread* that spawned the child exits, so children are spawned by
/// one keeper thread that lives as long as the process.
pub(crate) fn spawn_tied_to_process(cmd: Command) -> Child {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("redis-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                    unsafe {
                        cmd.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn keeper thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    keeper
        .lock()
        .unwrap()
        .send((cmd, tx))
        .expect("keeper alive");
    rx.recv()
        .expect("keeper replied")
        .unwrap_or_else(|e| panic!("cannot start redis-server: {e}. {INSTALL_HINT}"))
}

/// A server of the test's own (which it may kill, pause or restart), with the cache runtime
/// configured to use it: key prefix `prefix`, the default timeouts. Once per test binary.
pub fn own_redis(prefix: &str) -> RedisServer {
    let server = RedisServer::start();
    cache_runtime::init(
        cache_runtime::Config::builder()
            .redis_url(server.url())
            .key_prefix(prefix)
            .build(),
    )
    .expect("the cache runtime is configured once per test binary");
    server
}

/// The process-wide server of a test binary, started on first use, with the cache runtime
/// configured to use it (key prefix `t`, 200 ms timeout).
pub fn shared_redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = RedisServer::start();
        cache_runtime::init(
            cache_runtime::Config::builder()
                .redis_url(server.url())
                .key_prefix("t")
                .redis_timeout(Duration::from_millis(200))
                .build(),
        )
        .expect("the cache runtime is configured by the harness only");
        server
    })
}

/// The Redis key of `cache`'s lock (`lock = true`) of the logical key `logical` under
/// [`shared_redis`]'s configuration (prefix `t`, the cache's key schema).
pub fn shared_lock_key<V>(cache: &cache_runtime::Cache<V>, logical: &str) -> String {
    let schema = cache.key_schema().expect("a cache with a Redis tier");
    cache_runtime::key::redis_keys("t", schema, logical).2
}

/// [`shared_redis`], once the invalidation bus has subscribed and is trusted. The bus clears
/// local tiers when it (re)subscribes, which refuses a value stored meanwhile, and a
/// `local+redis` cache serves its local copies only while the bus is trusted, which it is
/// from the first probe answered after the subscription (docs/PROTOCOL.md §5.4): tests that
/// assert on local copies (or on one body for calls that a first subscription landing in
/// between would detach) wait for this first. The bus is started on the harness's
/// initiative, so this holds whichever test of the binary runs first.
pub async fn shared_redis_with_bus() -> &'static RedisServer {
    let server = shared_redis();
    want_bus();
    eventually(
        BUS_UP_WITHIN,
        "the invalidation bus to subscribe and be trusted",
        bus_up,
    )
    .await;
    server
}

/// Blocking [`shared_redis_with_bus`], for the tests that are not async.
pub fn shared_redis_with_bus_blocking() -> &'static RedisServer {
    let server = shared_redis();
    want_bus();
    eventually_blocking(
        BUS_UP_WITHIN,
        "the invalidation bus to subscribe and be trusted",
        bus_up,
    );
    server
}

/// Runs `attempt` until one run of it had the bus trusted from its start to its end, with no
/// lapse and no resubscription in between, and returns that run's result; panics after
/// `BUS_UP_WITHIN` (20 s) naming `what`. For assertions on local copies of `local+redis` caches,
/// which are served only while the bus is trusted (docs/PROTOCOL.md §5.4): on a loaded
/// machine a probe's answer can come late enough for trust to lapse for a moment, and a
/// (re)subscription clears the local tiers; both are by design, and neither is what such a
/// test is about. The attempt must start from a state of its own making (clear what it
/// reads first) and return what it measured: a run that had the bus trusted throughout
/// must then show exactly the local behaviour asserted on its result.
pub fn trusted_throughout_blocking<T>(what: &str, mut attempt: impl FnMut() -> T) -> T {
    let deadline = Instant::now() + BUS_UP_WITHIN;
    loop {
        eventually_blocking(
            deadline.saturating_duration_since(Instant::now()),
            &format!("the bus trusted, for: {what}"),
            bus_up,
        );
        let before = cache_runtime::bus_status();
        let out = attempt();
        if held_trust(&before) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "the bus never stayed trusted for a whole attempt of: {what} ({:?})",
            cache_runtime::bus_status()
        );
    }
}

/// Async [`trusted_throughout_blocking`].
pub async fn trusted_throughout<T, F: std::future::Future<Output = T>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + BUS_UP_WITHIN;
    loop {
        eventually(
            deadline.saturating_duration_since(Instant::now()),
            &format!("the bus trusted, for: {what}"),
            bus_up,
        )
        .await;
        let before = cache_runtime::bus_status();
        let out = attempt().await;
        if held_trust(&before) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "the bus never stayed trusted for a whole attempt of: {what} ({:?})",
            cache_runtime::bus_status()
        );
    }
}

/// Whether the bus, trusted at `before`, is trusted now and was throughout: a lapse is
/// counted in `distrusted` once noticed, and it is noticed before trust is extended again.
fn held_trust(before: &cache_runtime::BusStatus) -> bool {
    let after = cache_runtime::bus_status();
    after.trusted
        && after.connected
        && after.distrusted == before.distrusted
        && after.subscriptions == before.subscriptions
}

/// How long the bus may take to subscribe and answer its first probe: generous, for a loaded
/// 2-core CI machine.
const BUS_UP_WITHIN: Duration = Duration::from_secs(20);

/// A cache with a local tier wants the bus: the test's own may not be built yet.
fn want_bus() {
    let _ = cache_runtime::Cache::<u8>::builder("cache_tests::with_bus").build();
}

fn bus_up() -> bool {
    let s = cache_runtime::bus_status();
    s.connected && s.trusted
}

/// Polls `cond` until it holds (or panics after `within`). For conditions that have no event
/// to await, such as a counter in another component reaching a value.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls `cond` every 20 ms until it holds, or panics after `within` naming `what`. For the
/// harness's own waits (servers, sentinels, cluster nodes), which run on plain threads.
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A current-thread Tokio runtime with I/O and timers: what a test that drives calls itself
/// (a reader thread, a runtime of its own) runs them on.
///
/// ```
/// assert_eq!(cache_tests::current_thread_runtime().block_on(async { 2 }), 2);
/// ```
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread Tokio runtime")
}

/// Polls `fut` to completion on this thread, parking it between polls: no runtime, as an
/// executor other than Tokio's (or a plain thread) would. A cached `async fn` awaited this
/// way is an async caller outside Tokio.
///
/// ```
/// assert_eq!(cache_tests::poll_here(async { 1 + 1 }), 2);
/// ```
pub fn poll_here<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Blocking [`eventually`].
pub fn eventually_blocking(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A running cache node (see [`node`]), driven over stdin/stdout.
pub struct Node {
    child: Mutex<Option<Child>>,
    stdin: Mutex<std::process::ChildStdin>,
    inbox: std::sync::Arc<(Mutex<Inbox>, std::sync::Condvar)>,
    next: std::sync::atomic::AtomicU64,
    pid: u32,
}

#[derive(Default)]
struct Inbox {
    replies: std::collections::HashMap<u64, Result<String, String>>,
    events: Vec<String>,
    closed: bool,
}

const NODE_TIMEOUT: Duration = Duration::from_secs(30);

impl Node {
    /// Starts `binary` (e.g. `env!("CARGO_BIN_EXE_cache-node")`) against `server`, with
    /// extra environment variables, and waits until it is ready.
    pub fn start(binary: &str, server: &RedisServer, env: &[(&str, &str)]) -> Self {
        Self::start_at(binary, &server.url(), env)
    }

    /// [`start`](Self::start) with the Redis URL given (a Unix socket, another database).
    pub fn start_at(binary: &str, url: &str, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut cmd = Command::new(binary);
        cmd.args(["--redis", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = spawn_tied_to_process(cmd);
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let pid = child.id();
        let inbox = std::sync::Arc::new((Mutex::new(Inbox::default()), std::sync::Condvar::new()));
        let reader_inbox = inbox.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (lock, cv) = &*reader_inbox;
                let mut inbox = lock.lock().unwrap();
                if let Some(event) = line.strip_prefix("! ") {
                    inbox.events.push(event.to_string());
                } else {
                    let mut parts = line.splitn(3, ' ');
                    let id = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                    let status = parts.next().unwrap_or("");
                    let rest = parts.next().unwrap_or("").to_string();
                    inbox
                        .replies
                        .insert(id, if status == "ok" { Ok(rest) } else { Err(rest) });
                }
                cv.notify_all();
            }
            let (lock, cv) = &*reader_inbox;
            lock.lock().unwrap().closed = true;
            cv.notify_all();
        });
        let node = Self {
            child: Mutex::new(Some(child)),
            stdin: Mutex::new(stdin),
            inbox,
            next: std::sync::atomic::AtomicU64::new(1),
            pid,
        };
        node.wait_event("ready");
        node
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends a command without waiting; returns its request id for [`Node::reply`].
    pub fn send(&self, command: &str) -> u64 {
        use std::io::Write;
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut stdin = self.stdin.lock().unwrap();
        writeln!(stdin, "{id} {command}").expect("node stdin");
        stdin.flush().expect("node stdin");
        id
    }

    /// Waits for the reply to request `id`.
    pub fn reply(&self, id: u64) -> Result<String, String> {
        let (lock, cv) = &*self.inbox;
        let deadline = Instant::now() + NODE_TIMEOUT;
        let mut inbox = lock.lock().unwrap();
        loop {
            if let Some(r) = inbox.replies.remove(&id) {
                return r;
            }
            assert!(
                !inbox.closed,
                "node {} exited before replying to request {id}",
                self.pid
            );
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "node {} did not reply to request {id} within {NODE_TIMEOUT:?}",
                self.pid
            );
            inbox = cv.wait_timeout(inbox, left).unwrap().0;
        }
    }

    /// Sends a command and returns its successful result (panics on `err`).
    pub fn call(&self, command: &str) -> String {
        let id = self.send(command);
        self.reply(id)
            .unwrap_or_else(|e| panic!("node {}: `{command}` failed: {e}", self.pid))
    }

    /// One counter of the node's cache stats (`stats`: the `Debug` form of `Stats`).
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.call("stats");
        let at = stats
            .find(&format!("{name}: "))
            .unwrap_or_else(|| panic!("no {name} in {stats}"));
        stats[at + name.len() + 2..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    }

    /// Sends `command` again every 20 ms until it returns Ok (a write is `Err` while the
    /// node reconnects or a failover is under way); panics past `within`. Returns the instant
    /// the Ok arrived.
    pub fn call_until_ok(&self, command: &str, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            match self.reply(self.send(command)) {
                Ok(_) => return Instant::now(),
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "node {}: `{command}` never returned Ok within {within:?}: {e}",
                    self.pid
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The node's bus status: (connected, subscriptions, received, applied).
    pub fn bus(&self) -> (bool, u64, u64, u64) {
        let s = self.call("bus");
        let f: Vec<&str> = s.split(' ').collect();
        (
            f[0] == "true",
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
        )
    }

    /// Whether the node's bus is trusted now (its local copies of `local+redis` caches are
    /// served: docs/PROTOCOL.md §5.4).
    pub fn bus_trusted(&self) -> bool {
        self.call("bus").split(' ').nth(4) == Some("true")
    }

    /// Waits (up to `within`) until the node's bus is connected with at least `at_least`
    /// subscriptions since start, and trusted: a subscription is trusted from the first
    /// probe answered after it (docs/PROTOCOL.md §5.4), and until then the node serves no
    /// local copy, so a test that asserts on one (`peek`) right after this would race that
    /// probe.
    pub fn wait_subscribed(&self, at_least: u64, within: Duration) {
        eventually_blocking(within, "the node's bus subscription, trusted", || {
            let (connected, subscriptions, ..) = self.bus();
            connected && subscriptions >= at_least && self.bus_trusted()
        });
    }

    /// Waits until the node has reported `event` (e.g. `paused 1`), and consumes it.
    pub fn wait_event(&self, event: &str) {
        let (lock, cv) = &*self.inbox;
        let deadline = Instant::now() + NODE_TIMEOUT;
        let mut inbox = lock.lock().unwrap();
        loop {
            if let Some(i) = inbox.events.iter().position(|e| e == event) {
                inbox.events.remove(i);
                return;
            }
            assert!(!inbox.closed, "node {} exited before `{event}`", self.pid);
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "node {} did not report `{event}` within {NODE_TIMEOUT:?}",
                self.pid
            );
            inbox = cv.wait_timeout(inbox, left).unwrap().0;
        }
    }

    /// SIGKILL.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
