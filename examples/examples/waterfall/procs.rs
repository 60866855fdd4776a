//! The processes of a run: N `profile_api` services, a `redis-server` (the test harness's, on
//! its own free port, no persistence) and a `varnishd` with a round-robin director over the
//! services. Every child is killed when its handle drops, and by the kernel when this process
//! dies (`PR_SET_PDEATHSIG`).

use std::io::Write;
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
            .env("DB_POOL", self.db_pool.to_string());
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

/// A `varnishd` in front of the services, with a round-robin director.
pub struct Varnish {
    pub proc: Proc,
    pub port: u16,
    pub log: PathBuf,
}

impl Varnish {
    /// Starts varnishd on `port` with the VCL: a generated head (one backend per service
    /// port, a round-robin director chosen in `vcl_recv`) followed by the shipped VCL's
    /// caching rules (`include`d when `shipped_vcl` exists).
    pub fn start(dir: &Path, port: u16, backends: &[u16], shipped_vcl: Option<&Path>) -> Varnish {
        let workdir = dir.join("varnish");
        let vcl = dir.join("waterfall.vcl");
        let mut f = std::fs::File::create(&vcl).expect("write the VCL");
        writeln!(f, "vcl 4.1;\nimport directors;").unwrap();
        for (i, p) in backends.iter().enumerate() {
            writeln!(
                f,
                "backend service{i} {{ .host = \"127.0.0.1\"; .port = \"{p}\"; }}"
            )
            .unwrap();
        }
        writeln!(
            f,
            "sub vcl_init {{\n    new services = directors.round_robin();"
        )
        .unwrap();
        for i in 0..backends.len() {
            writeln!(f, "    services.add_backend(service{i});").unwrap();
        }
        writeln!(
            f,
            "}}\nsub vcl_recv {{\n    set req.backend_hint = services.backend();\n}}"
        )
        .unwrap();
        match shipped_vcl {
            Some(p) => writeln!(f, "include \"{}\";", p.display()).unwrap(),
            None => f.write_all(FALLBACK_VCL.as_bytes()).unwrap(),
        }
        drop(f);
        let mut cmd = Command::new(varnishd_path());
        cmd.arg("-F")
            .arg("-n")
            .arg(&workdir)
            .args(["-a", &format!("127.0.0.1:{port}")])
            .arg("-f")
            .arg(&vcl)
            .args(["-s", "malloc,256m"])
            // The shipped VCL's own backend is unused: the director replaces it.
            .args(["-p", "vcc_err_unref=off"])
            .args(["-p", "default_grace=0"]);
        let log = dir.join("varnish.log");
        Varnish {
            proc: Proc::spawn("varnishd", cmd, &log),
            port,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Used when the repository's VCL is not there: cache what the backend allows, answer
/// `PURGE` per URL, mark hits.
const FALLBACK_VCL: &str = r#"
sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip != "127.0.0.1") { return (synth(405)); }
        return (purge);
    }
}
sub vcl_deliver {
    if (obj.hits > 0) { set resp.http.x-cache = "HIT"; } else { set resp.http.x-cache = "MISS"; }
}
"#;

fn varnishd_path() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
    ]) {
        let p = PathBuf::from(dir).join("varnishd");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "varnishd not found: install Debian's `varnish` package (and `varnish-modules` for xkey)"
    );
}
