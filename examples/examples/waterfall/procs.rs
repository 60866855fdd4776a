//! The processes of a run: N `profile_api` services, a `redis-server` (the test harness's, on
//! its own free port, no persistence) and a `varnishd` with a round-robin director over the
//! services. Every child is killed when its handle drops, and by the kernel when this process
//! dies (`PR_SET_PDEATHSIG`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use cache_tests::free_port;

/// Finds (building it first when run through cargo) the `profile_api` example binary.
///
/// - `PROFILE_API_BIN` set: that file.
/// - Run through `cargo run` (`CARGO` set): `cargo build -p cache-examples --example
///   profile_api` with this binary's profile, and the path cargo reports.
/// - Otherwise: `profile_api` next to this executable (both are in `target/<profile>/examples`).
pub fn service_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PROFILE_API_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-p",
            "cache-examples",
            "--example",
            "profile_api",
            "--message-format=json-render-diagnostics",
        ]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build --example profile_api failed"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        if let Some(p) = stdout
            .lines()
            .filter(|l| l.contains("\"name\":\"profile_api\""))
            .find_map(|l| json_string_field(l, "executable"))
        {
            return PathBuf::from(p);
        }
    }
    let exe = std::env::current_exe().expect("current exe");
    let p = exe.with_file_name("profile_api");
    assert!(
        p.is_file(),
        "{} not found: build it with `cargo build --release --example profile_api`, or set \
         PROFILE_API_BIN",
        p.display()
    );
    p
}

fn json_string_field(line: &str, field: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v[field].as_str().map(str::to_string)
}

/// A child process, killed on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let log = std::fs::File::create(log).expect("create a log file");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running `profile_api`.
pub struct Service {
    pub proc: Proc,
    pub port: u16,
    pub log: PathBuf,
}

impl Service {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// What every service of a run gets.
pub struct ServiceEnv<'a> {
    pub binary: &'a Path,
    pub dir: &'a Path,
    pub layers: &'a str,
    pub redis_url: Option<String>,
    pub edge_url: Option<String>,
    pub db_latency_ms: u64,
    pub db_pool: usize,
    pub repurge_ms: u64,
    pub list_invalidation: &'a str,
}

impl ServiceEnv<'_> {
    pub fn start(&self, index: usize, port: u16) -> Service {
        let mut cmd = Command::new(self.binary);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("CACHE_LAYERS", self.layers)
            .env("DB_PATH", self.dir.join("db.sqlite"))
            .env("DB_LATENCY_MS", self.db_latency_ms.to_string())
            .env("DB_POOL", self.db_pool.to_string())
            .env("CACHE_EDGE_REPURGE_MS", self.repurge_ms.to_string())
            .env("LIST_INVALIDATION", self.list_invalidation);
        if let Some(u) = &self.redis_url {
            cmd.env("REDIS_URL", u);
        }
        if let Some(u) = &self.edge_url {
            cmd.env("CACHE_EDGE_PURGE_URL", u);
        }
        let log = self.dir.join(format!("service-{index}.log"));
        Service {
            proc: Proc::spawn(&format!("profile_api #{index}"), cmd, &log),
            port,
            log,
        }
    }
}

/// Waits until `GET url` answers 200 (or panics with the process's log).
pub async fn wait_http(url: &str, proc: &mut Proc, log: &Path, within: Duration) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = client
            .get(url)
            .timeout(Duration::from_millis(500))
            .send()
            .await
        {
            if r.status().is_success() {
                return;
            }
        }
        if let Some(status) = proc.exited() {
            panic!(
                "{} exited ({status}) before answering {url}:\n{}",
                proc.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not answer {url} within {within:?}:\n{}",
            proc.name,
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The VCL for Varnish in front of several services: the shipped VCL
/// (`deploy/varnish/cache-toolkit.vcl`), whose backend block the harness replaces with
/// `backend default` = the first service, followed by one more backend per other service and
/// a round-robin director over all of them, chosen in a `vcl_recv` that runs before the
/// shipped one (VCL concatenates subroutines of the same name in order).
pub fn director_vcl(shipped: &str, ports: &[u16]) -> String {
    let marker = "# END backend";
    let at = shipped
        .find(marker)
        .map(|i| i + marker.len())
        .expect("the shipped VCL marks its backend block with `# END backend`");
    let mut head = String::from(
        "\n# Added by the waterfall driver: a round-robin director.\nimport directors;\n",
    );
    for (i, p) in ports.iter().enumerate().skip(1) {
        head.push_str(&format!(
            "backend service{i} {{\n    .host = \"127.0.0.1\";\n    .port = \"{p}\";\n    \
             .connect_timeout = 1s;\n    .first_byte_timeout = 30s;\n}}\n"
        ));
    }
    head.push_str("sub vcl_init {\n    new services = directors.round_robin();\n    services.add_backend(default);\n");
    for i in 1..ports.len() {
        head.push_str(&format!("    services.add_backend(service{i});\n"));
    }
    head.push_str("}\nsub vcl_recv {\n    set req.backend_hint = services.backend();\n}\n");
    format!("{}{head}{}", &shipped[..at], &shipped[at..])
}
