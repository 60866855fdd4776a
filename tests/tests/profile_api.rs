//! End to end: the `profile_api` example service (examples/examples/profile_api), as a real
//! process, alone and behind the harness's Varnish and Redis.
//!
//! How the test gets the service: examples cannot be depended on, and `CARGO_BIN_EXE_*`
//! exists only for `[[bin]]` targets, so the test runs `cargo build --workspace --example
//! profile_api` (the `CARGO` that runs the test, the same target directory and profile) and
//! spawns the executable cargo reports. Under `cargo test --workspace --all-targets` the
//! dependencies are already built, so this compiles the example's own code at most once.
//! Cargo does not hold the build lock while tests run, so the nested build cannot deadlock.
//!
//! Every wait polls a condition with a deadline; nothing sleeps to synchronise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The example's executable, built once per test binary.
fn service_binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args([
                "build",
                "--workspace",
                "--example",
                "profile_api",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit());
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build --example profile_api failed"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let exe = stdout
            .lines()
            .filter(|l| l.contains("\"name\":\"profile_api\"") && l.contains("\"executable\":\""))
            .find_map(|l| {
                let start = l.find("\"executable\":\"")? + "\"executable\":\"".len();
                let end = start + l[start..].find('"')?;
                Some(PathBuf::from(&l[start..end]))
            })
            .expect("cargo reported the profile_api executable");
        assert!(exe.is_file(), "{} is not a file", exe.display());
        exe
    })
}

/// A running service; killed on drop (and with the test thread, by PDEATHSIG).
struct Service {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Service {
    fn start(env: &[(&str, &str)]) -> Service {
        let dir = std::env::temp_dir().join(format!(
            "profile-api-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(service_binary());
        cmd.env_remove("REDIS_URL")
            .env_remove("CACHE_EDGE_PURGE_URL")
            .env("PORT", "0")
            .env("DB_PATH", dir.join("db.sqlite"))
            .env("DB_LATENCY_MS", "2")
            .env("SEED_USERS", "200")
            .env("SEED_PRODUCTS", "40")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start profile_api");
        // The first line says where it listens: "profile_api listening on http://127.0.0.1:PORT …".
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines
            .next()
            .expect("profile_api printed nothing")
            .expect("read its stdout");
        let port = listening_port(&first);
        // Keep draining its output (and show it with the test's output).
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                println!("[profile_api] {l}");
            }
        });
        let s = Service { child, port, dir };
        eventually(
            Duration::from_secs(30),
            "the service answers /health",
            || get(s.port, "/health", &[]).is_ok_and(|r| r.status == 200),
        );
        s
    }

    /// A number from the service's `/metrics` JSON, e.g. `"db"."reads"`.
    fn metric(&self, object: &str, field: &str) -> u64 {
        let r = get(self.port, "/metrics", &[]).expect("GET /metrics");
        assert_eq!(r.status, 200);
        number_after(&r.body, &format!("\"{object}\":{{"), field)
            .unwrap_or_else(|| panic!("no {object}.{field} in {}", r.body))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `"field":N` after `prefix` in a JSON text.
fn number_after(json: &str, prefix: &str, field: &str) -> Option<u64> {
    let rest = &json[json.find(prefix)? + prefix.len()..];
    let key = format!("\"{field}\":");
    let rest = &rest[rest.find(&key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `"version"` of a user or product body.
    fn version(&self) -> u64 {
        number_after(&self.body, "{", "version")
            .unwrap_or_else(|| panic!("no version in {}", self.body))
    }
}

fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
    request(port, "GET", path, headers, None)
}

fn put_json(port: u16, path: &str, json: &str) -> Response {
    request(
        port,
        "PUT",
        path,
        &[("content-type", "application/json")],
        Some(json),
    )
    .unwrap_or_else(|e| panic!("PUT {path}: {e}"))
}

/// One HTTP/1.1 request on a new connection (`Connection: close`), chunked bodies decoded.
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    // The Host a browser would send (and the edge purger does): Varnish keys objects by it.
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Without Redis or a CDN: a revalidation with the current `ETag` is a `304` answered from
/// the in-process tier, without a database query; after a write it is a `200` with the new
/// version.
#[test]
fn if_none_match_is_answered_304_without_a_query() {
    let svc = Service::start(&[("CACHE_LAYERS", "local")]);
    let first = get(svc.port, "/users/7", &[]).unwrap();
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.version(), 1);
    let etag = first.header("etag").expect("an ETag").to_string();
    assert_eq!(svc.metric("db", "reads"), 1);

    let again = get(svc.port, "/users/7", &[("if-none-match", &etag)]).unwrap();
    assert_eq!(again.status, 304, "{again:?}");
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_eq!(
        svc.metric("db", "reads"),
        1,
        "the 304 came from the cache, without a query"
    );

    let written = put_json(svc.port, "/users/7", r#"{"name":"Grace"}"#);
    assert_eq!(written.status, 200, "{written:?}");
    assert_eq!(written.version(), 2);
    let after = get(svc.port, "/users/7", &[("if-none-match", &etag)]).unwrap();
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.version(), 2);
    assert!(after.body.contains("\"name\":\"Grace\""));
    assert_ne!(after.header("etag"), Some(etag.as_str()));
}

/// Behind the harness's Varnish (the shipped VCL) and with the harness's Redis: the first
/// GET reaches the service, the second is a Varnish hit, a PUT through Varnish writes and
/// purges, and the next GET reaches the service again and returns the new data. The same for
/// a product list, purged by its surrogate key (xkey) when one of its products is written.
#[test]
fn varnish_serves_repeats_until_a_write_purges_them() {
    let redis = cache_tests::RedisServer::start();
    let port = cache_tests::free_port();
    let varnish = cache_tests::VarnishServer::start(port);
    let svc = Service::start(&[
        ("PORT", &port.to_string()),
        ("CACHE_LAYERS", "redis"),
        ("REDIS_URL", &redis.url()),
        ("CACHE_EDGE_PURGE_URL", &varnish.url()),
        // The second purge, later than the default 1 s so that on a loaded machine the list
        // is surely re-cached before it (the last check needs that order).
        ("CACHE_EDGE_REPURGE_MS", "3000"),
    ]);
    let edge = varnish.port();
    let served = |svc: &Service| {
        ["local", "redis", "body", "not_modified"]
            .iter()
            .map(|f| svc.metric("responses", f))
            .sum::<u64>()
    };
    // Purges are asynchronous: wait until the service's edge queue is empty and everything
    // it enqueued was acknowledged by Varnish.
    let purged = |svc: &Service, at_least: u64| {
        eventually(
            Duration::from_secs(20),
            "the service's purges reached Varnish",
            || svc.metric("edge", "pending") == 0 && svc.metric("edge", "sent") >= at_least,
        );
        assert_eq!(svc.metric("edge", "failed"), 0);
    };

    // A user profile.
    let first = get(edge, "/users/42", &[]).unwrap();
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(first.version(), 1);
    assert_eq!(served(&svc), 1, "the first GET reached the service");
    let second = get(edge, "/users/42", &[]).unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-cache"), Some("HIT"), "{second:?}");
    assert_eq!(second.body, first.body);
    assert_eq!(served(&svc), 1, "the second GET was answered by Varnish");
    // A revalidation is answered by Varnish too.
    let etag = first.header("etag").expect("an ETag").to_string();
    let revalidated = get(edge, "/users/42", &[("if-none-match", &etag)]).unwrap();
    assert_eq!(revalidated.status, 304, "{revalidated:?}");
    assert_eq!(served(&svc), 1);

    let written = put_json(edge, "/users/42", r#"{"name":"Edsger"}"#);
    assert_eq!(written.status, 200, "{written:?}");
    assert_eq!(written.version(), 2);
    purged(&svc, 1);
    let after = get(edge, "/users/42", &[("if-none-match", &etag)]).unwrap();
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(
        after.header("x-cache"),
        Some("MISS"),
        "the purge dropped the old copy"
    );
    assert_eq!(after.version(), 2);
    assert!(after.body.contains("\"name\":\"Edsger\""), "{}", after.body);
    let reached = served(&svc);
    assert_eq!(reached, 2, "the GET after the write reached the service");

    // A product list, purged by tag when one of its products changes. Product 1 is in
    // "books" (products are spread over the categories in order).
    let list = get(edge, "/products?category=books", &[]).unwrap();
    assert_eq!(list.status, 200, "{list:?}");
    assert_eq!(list.header("x-cache"), Some("MISS"));
    assert!(list.body.contains("\"id\":1,") && list.body.contains("\"version\":1,"));
    let again = get(edge, "/products?category=books", &[]).unwrap();
    assert_eq!(again.header("x-cache"), Some("HIT"));
    assert_eq!(served(&svc), reached + 1);
    let sent_before = svc.metric("edge", "sent");
    let written = put_json(edge, "/products/1", r#"{"price_cents":4242}"#);
    assert_eq!(written.status, 200, "{written:?}");
    assert_eq!(written.version(), 2);
    purged(&svc, sent_before + 2); // the path /products/1 and the tag products:books
    let list = get(edge, "/products?category=books", &[]).unwrap();
    assert_eq!(list.status, 200, "{list:?}");
    assert_eq!(
        list.header("x-cache"),
        Some("MISS"),
        "the xkey purge dropped the list"
    );
    assert!(list.body.contains("\"price_cents\":4242"), "{}", list.body);
    assert_eq!(served(&svc), reached + 2);

    // The runtime purges each of them a second time, 3 s later (a fetch racing the write
    // could have stored the old page after the first purge): /users/42, /products/1 and the
    // tag products:books.
    assert_eq!(svc.metric("edge", "repurge_after_ms"), 3000);
    eventually(Duration::from_secs(20), "the second purges", || {
        svc.metric("edge", "repurged") >= 3
            && svc.metric("edge", "delayed") == 0
            && svc.metric("edge", "pending") == 0
    });
    assert_eq!(svc.metric("edge", "failed"), 0);
    let served_before = served(&svc);
    let list = get(edge, "/products?category=books", &[]).unwrap();
    assert_eq!(list.header("x-cache"), Some("MISS"), "purged again");
    assert!(list.body.contains("\"price_cents\":4242"), "{}", list.body);
    assert_eq!(served(&svc), served_before + 1);
}

/// The layer-3 rule the example teaches, through the shipped Varnish: the public profile has
/// no personal field and is shared (a Varnish hit); the e-mail is only in the per-user
/// endpoint, `private` with `Vary: Authorization`, refused without the user's token and never
/// a Varnish hit.
#[test]
fn personal_fields_are_private_and_never_shared_by_varnish() {
    let port = cache_tests::free_port();
    let varnish = cache_tests::VarnishServer::start(port);
    let svc = Service::start(&[
        ("PORT", &port.to_string()),
        ("CACHE_LAYERS", "local"),
        ("API_SECRET", "s3cret"),
    ]);
    let edge = varnish.port();

    let public = get(edge, "/users/9", &[]).unwrap();
    assert_eq!(public.status, 200, "{public:?}");
    assert!(!public.body.contains("email"), "{}", public.body);
    assert!(public
        .header("cache-control")
        .unwrap()
        .starts_with("public"));
    // Age is for caches: Varnish adds its own; the origin sends none.
    assert!(public.header("age").is_some(), "{public:?}");
    let direct = get(svc.port, "/users/9", &[]).unwrap();
    assert_eq!(direct.header("age"), None, "{direct:?}");
    let again = get(edge, "/users/9", &[]).unwrap();
    assert_eq!(again.header("x-cache"), Some("HIT"), "{again:?}");

    let anonymous = get(edge, "/users/9/private", &[]).unwrap();
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let someone_else = get(
        edge,
        "/users/9/private",
        &[("authorization", "Bearer 8.s3cret")],
    );
    assert_eq!(someone_else.unwrap().status, 401);

    for _ in 0..3 {
        let mine = get(
            edge,
            "/users/9/private",
            &[("authorization", "Bearer 9.s3cret")],
        )
        .unwrap();
        assert_eq!(mine.status, 200, "{mine:?}");
        assert!(mine.body.contains("\"email\":"), "{}", mine.body);
        let cc = mine.header("cache-control").unwrap();
        assert!(
            cc.starts_with("private") && cc.contains("max-age=30"),
            "{cc}"
        );
        assert!(
            mine.header("vary").unwrap().contains("Authorization"),
            "{mine:?}"
        );
        assert_ne!(
            mine.header("x-cache"),
            Some("HIT"),
            "a private response was shared"
        );
    }
    assert_eq!(
        varnish.stat("MAIN.cache_hit"),
        1,
        "only the public GET was a hit"
    );
}

/// SIGTERM (what service managers and containers send) stops the service like Ctrl-C: it
/// exits cleanly and removes its temporary SQLite files.
#[test]
fn sigterm_removes_the_temporary_database() {
    let mut cmd = Command::new(service_binary());
    cmd.env_remove("REDIS_URL")
        .env_remove("CACHE_EDGE_PURGE_URL")
        .env_remove("CACHE_EDGE")
        .env_remove("DB_PATH")
        .env("PORT", "0")
        .env("CACHE_LAYERS", "local")
        .env("DB_LATENCY_MS", "0")
        .env("SEED_USERS", "20")
        .env("SEED_PRODUCTS", "5")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("start profile_api");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a first line").expect("read stdout");
    let port = listening_port(&first);
    let db = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            let rest = l.trim().strip_prefix("database: ")?;
            Some(PathBuf::from(rest.split(" (").next()?))
        })
        .expect("the service printed its database");
    assert!(db.is_file(), "{} exists while running", db.display());
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    // SIGTERM once it serves, as a service manager would send it.
    eventually(
        Duration::from_secs(30),
        "the service answers /health",
        || get(port, "/health", &[]).is_ok_and(|r| r.status == 200),
    );
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    for ext in ["", "-wal", "-shm"] {
        let f = format!("{}{ext}", db.display());
        assert!(!std::path::Path::new(&f).exists(), "{f} was left behind");
    }
}

/// The port in `profile_api`'s first line (`profile_api listening on http://127.0.0.1:<port> (pid …)`).
fn listening_port(first: &str) -> u16 {
    first
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
}
