//! Test harness: a real `redis-server` per test binary (or per test), on a free loopback port,
//! that tests can kill, pause and restart.
//!
//! ```no_run
//! let server = cache_tests::RedisServer::start();
//! let mut raw = server.client();
//! let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut raw).unwrap();
//! server.kill();
//! server.restart();
//! ```

pub mod cdn;
pub mod node;
pub mod varnish;

pub use varnish::VarnishServer;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "redis-server was not found on PATH. The tests need a real Redis: \
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
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("cache-tests-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create redis dir");
        for (name, pem) in [
            ("ca.pem", ca_pem),
            ("cert.pem", cert_pem),
            ("key.pem", key_pem),
        ] {
            std::fs::write(dir.join(name), pem).expect("write a TLS file");
        }
        let file = |n: &str| dir.join(n).to_string_lossy().into_owned();
        let extra = vec![
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
        let server = Self {
            port,
            dir,
            child: Mutex::new(None),
            extra_args: extra,
            password: None,
            tls_ca: Some(ca_pem.as_bytes().to_vec()),
        };
        server.launch();
        server
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
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
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
                    panic!(
                        "redis-server on port {} exited at start: {status}",
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
    /// crash of a Redis without persistence.
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn redis_server_path() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/bin",
        "/usr/sbin",
        "/usr/local/bin",
    ]) {
        let p = PathBuf::from(dir).join("redis-server");
        if p.is_file() {
            return p;
        }
    }
    panic!("{INSTALL_HINT}");
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
fn spawn_tied_to_process(cmd: Command) -> Child {
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

/// [`shared_redis`], once the invalidation bus has subscribed. The bus clears local tiers
/// when it (re)subscribes, which refuses a value stored meanwhile: tests that assert on local
/// copies right after a first load wait for this first.
pub async fn shared_redis_with_bus() -> &'static RedisServer {
    let server = shared_redis();
    // Creates the runtime, which starts the bus.
    let _ = cache_runtime::redis_status();
    eventually(
        Duration::from_secs(10),
        "the invalidation bus to subscribe",
        || cache_runtime::bus_status().connected,
    )
    .await;
    server
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
        use std::io::BufRead;
        let mut cmd = Command::new(binary);
        cmd.args(["--redis", &server.url()])
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
