//! The edge layer against a real Varnish running the shipped VCL, in front of a small hyper
//! backend in this process that counts its requests.
//!
//! The tests share one Varnish, one backend and the installed edge (an `HttpPurger` and an xkey
//! `SurrogateKeyPurger` aimed at that Varnish); each test uses its own paths and tags. The test
//! of an edge that is down has its own Varnish and its own `Edge`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cache_runtime::edge::{self, encode_surrogate_key, Edge, HttpPurger, SurrogateKeyPurger};
use cache_tests::VarnishServer;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

const WAIT: Duration = Duration::from_secs(10);

/// What the backend serves for one path.
#[derive(Default, Clone)]
struct Page {
    /// Bumped by a test to mimic a write to the database.
    version: u64,
    /// Surrogate keys, sent as `xkey` (encoded with the same function the purger uses).
    tags: Vec<String>,
}

/// A hyper server on its own thread: `GET /anything` answers `<path> v<version>` with
/// `Cache-Control: public, s-maxage=60` (or `private, max-age=60` under `/private/`), an
/// `ETag` and the page's `xkey` header, and counts requests per path.
struct Backend {
    port: u16,
    pages: Arc<Mutex<HashMap<String, Page>>>,
    hits: Arc<Mutex<HashMap<String, u64>>>,
}

impl Backend {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the backend");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let pages: Arc<Mutex<HashMap<String, Page>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let (p, h) = (pages.clone(), hits.clone());
        std::thread::Builder::new()
            .name("edge-test-backend".into())
            .spawn(move || {
                let rt = cache_tests::current_thread_runtime();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        let Ok((sock, _)) = listener.accept().await else {
                            continue;
                        };
                        let (p, h) = (p.clone(), h.clone());
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let (p, h) = (p.clone(), h.clone());
                                async move { Ok::<_, Infallible>(serve(&p, &h, req)) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(sock), service)
                                .await;
                        });
                    }
                });
            })
            .unwrap();
        Self { port, pages, hits }
    }

    fn set_tags(&self, path: &str, tags: &[&str]) {
        self.pages
            .lock()
            .unwrap()
            .entry(path.into())
            .or_default()
            .tags = tags.iter().map(|t| t.to_string()).collect();
    }

    /// A write: the next response for `path` carries new data.
    fn bump(&self, path: &str) {
        self.pages
            .lock()
            .unwrap()
            .entry(path.into())
            .or_default()
            .version += 1;
    }

    fn hits(&self, path: &str) -> u64 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn serve(
    pages: &Mutex<HashMap<String, Page>>,
    hits: &Mutex<HashMap<String, u64>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let page = pages
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap_or_default();
    let cache_control = if path.starts_with("/private/") {
        "private, max-age=60"
    } else {
        "public, s-maxage=60"
    };
    let xkey = page
        .tags
        .iter()
        .map(|t| encode_surrogate_key(t))
        .collect::<Vec<_>>()
        .join(" ");
    let mut resp = Response::builder()
        .header("cache-control", cache_control)
        .header("etag", format!("\"v{}\"", page.version))
        .header("content-type", "text/plain");
    if !xkey.is_empty() {
        resp = resp.header("xkey", xkey);
    }
    resp.body(Full::new(Bytes::from(format!("{path} v{}", page.version))))
        .unwrap()
}

struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Fetched {
    fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// One request on a fresh connection.
async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Fetched {
    let sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to varnish");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
        .await
        .expect("http handshake");
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", format!("127.0.0.1:{port}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        WAIT,
        sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .expect("varnish answers in time")
    .expect("a response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Fetched {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

struct Shared {
    backend: Backend,
    varnish: VarnishServer,
}

/// The shared backend and Varnish, with the process's edge installed against that Varnish.
fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let backend = Backend::start();
        let varnish = VarnishServer::start(backend.port);
        edge::install(
            Edge::builder()
                .purger(HttpPurger::new(varnish.url()).unwrap())
                .purger(SurrogateKeyPurger::xkey(varnish.url()).build().unwrap())
                .retries(2)
                .backoff(Duration::from_millis(20), Duration::from_millis(100))
                // These tests count hits and misses after single purges; the second purge
                // is covered by cache-runtime's unit tests and the profile_api test.
                .repurge_after(Duration::ZERO)
                .build(),
        )
        .expect("only this test binary installs the edge");
        Shared { backend, varnish }
    })
}

#[tokio::test]
async fn a_second_get_is_a_varnish_hit_and_a_path_purge_brings_the_new_data() {
    let s = shared();
    let port = s.varnish.port();
    let path = "/t1/users/1";

    let first = get(port, path, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "/t1/users/1 v0");
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(s.backend.hits(path), 1);

    let second = get(port, path, &[]).await;
    assert_eq!(second.body, "/t1/users/1 v0");
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(s.backend.hits(path), 1, "served by Varnish");

    // A write: until the purge, Varnish keeps serving the old page.
    s.backend.bump(path);
    assert_eq!(get(port, path, &[]).await.body, "/t1/users/1 v0");

    let before = edge::stats();
    edge::enqueue_paths(vec![path.to_string()]);
    assert!(edge::flush(WAIT).await, "the purge was sent");
    let after = edge::stats();
    assert!(after.sent > before.sent, "{after:?}");
    assert_eq!(after.failed, 0, "{after:?}");

    let third = get(port, path, &[]).await;
    assert_eq!(third.body, "/t1/users/1 v1", "new data after the purge");
    assert_eq!(third.x_cache(), "MISS");
    assert_eq!(s.backend.hits(path), 2);
    assert_eq!(get(port, path, &[]).await.x_cache(), "HIT");
}

#[tokio::test]
async fn a_tag_purge_drops_every_page_carrying_the_tag_and_no_other() {
    let s = shared();
    let port = s.varnish.port();
    // Tags with a space and a comma: encoded the same way by the backend and the purger.
    let (a, b, c) = ("/t2/users/7", "/t2/users/7/card", "/t2/users/8");
    s.backend.set_tags(a, &["t2 user,7"]);
    s.backend.set_tags(b, &["t2 user,7", "t2 cards"]);
    s.backend.set_tags(c, &["t2 user,8", "t2 cards"]);
    for p in [a, b, c] {
        assert_eq!(get(port, p, &[]).await.x_cache(), "MISS");
        assert_eq!(get(port, p, &[]).await.x_cache(), "HIT");
        s.backend.bump(p);
    }

    edge::enqueue_tags(vec!["t2 user,7".to_string()]);
    assert!(edge::flush(WAIT).await);

    for p in [a, b] {
        let page = get(port, p, &[]).await;
        assert_eq!(page.x_cache(), "MISS", "{p} carries the tag");
        assert_eq!(page.body, format!("{p} v1"));
        assert_eq!(s.backend.hits(p), 2);
    }
    let other = get(port, c, &[]).await;
    assert_eq!(other.x_cache(), "HIT", "{c} does not carry the tag");
    assert_eq!(other.body, format!("{c} v0"));
    assert_eq!(s.backend.hits(c), 1);

    // A tag shared by two pages: one purge request drops both.
    edge::enqueue_tags(vec!["t2 cards".to_string()]);
    assert!(edge::flush(WAIT).await);
    assert_eq!(get(port, b, &[]).await.x_cache(), "MISS");
    assert_eq!(get(port, c, &[]).await.body, format!("{c} v1"));
}

#[tokio::test]
async fn conditional_requests_are_answered_by_varnish() {
    let s = shared();
    let port = s.varnish.port();
    let path = "/t3/products/1";
    let first = get(port, path, &[]).await;
    assert_eq!(first.headers.get("etag").unwrap(), "\"v0\"");
    let revalidated = get(port, path, &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert!(revalidated.body.is_empty());
    assert_eq!(revalidated.x_cache(), "HIT");
    let changed = get(port, path, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(s.backend.hits(path), 1, "both answered from the cache");
}

#[tokio::test]
async fn private_and_authorized_responses_are_not_shared() {
    let s = shared();
    let port = s.varnish.port();
    let private = "/private/t4/me";
    for n in 1..=2 {
        let page = get(port, private, &[]).await;
        assert_eq!(page.x_cache(), "PASS");
        assert_eq!(s.backend.hits(private), n);
    }
    let public = "/t4/users/1";
    assert_eq!(get(port, public, &[]).await.x_cache(), "MISS");
    let with_auth = get(port, public, &[("authorization", "Bearer x")]).await;
    assert_eq!(with_auth.x_cache(), "PASS");
    assert_eq!(
        s.backend.hits(public),
        2,
        "a request with Authorization is passed"
    );
    // Surrogate keys stay inside the edge.
    assert!(with_auth.headers.get("xkey").is_none());
}

#[test]
fn with_varnish_down_purges_are_retried_counted_as_failed_and_never_block() {
    let backend = &shared().backend;
    let varnish = VarnishServer::start(backend.port);
    let edge = Edge::builder()
        .purger(
            HttpPurger::builder(varnish.url())
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .purger(SurrogateKeyPurger::xkey(varnish.url()).build().unwrap())
        .retries(2)
        .backoff(Duration::from_millis(300), Duration::from_secs(1))
        .repurge_after(Duration::ZERO) // counts single purges
        .build();
    edge.enqueue_paths(["/t5/warm-up"]);
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(edge.stats().sent, 1, "{:?}", edge.stats());

    varnish.kill();
    // Each batch now takes at least 300 + 600 ms of backoff; enqueueing must not wait for it.
    let started = Instant::now();
    for i in 0..50 {
        edge.enqueue_paths([format!("/t5/users/{i}")]);
        edge.enqueue_tags([format!("t5 user:{i}")]);
    }
    let enqueue_time = started.elapsed();
    assert!(
        enqueue_time < Duration::from_millis(300),
        "enqueueing 100 purges took {enqueue_time:?}"
    );
    assert!(edge.stats().pending > 0);

    assert!(edge.flush_blocking(WAIT), "retries are bounded");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "both retries waited"
    );
    let s = edge.stats();
    assert_eq!(s.failed, 100, "{s:?}");
    assert_eq!(s.sent, 1, "{s:?}");
    assert_eq!(s.pending, 0, "{s:?}");
    // Two retries per purger per batch (the first batch may have held only some items).
    assert!(s.retried >= 4 && s.retried % 2 == 0, "{s:?}");

    // Back up: purges go through again.
    varnish.restart();
    edge.enqueue_paths(["/t5/users/0"]);
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(edge.stats().sent, 2, "{:?}", edge.stats());
}

#[cache_runtime::cached(
    ttl = 60,
    key = "edge-test:user:<id>",
    purge = ["/t6/users/<id>", "/t6/users/<id>/card"]
)]
async fn edge_user(id: u64) -> String {
    format!("user {id}")
}

#[cache_runtime::cached(ttl = 60, key = "edge-test:search:<q>", purge = ["/t6/search/<q>"])]
fn edge_search(q: &str) -> Vec<String> {
    vec![q.to_string()]
}

#[tokio::test]
async fn invalidate_and_populate_of_a_cached_function_purge_its_pages() {
    let s = shared();
    let port = s.varnish.port();
    let pages = ["/t6/users/5", "/t6/users/5/card"];
    for p in pages {
        assert_eq!(get(port, p, &[]).await.x_cache(), "MISS");
        assert_eq!(get(port, p, &[]).await.x_cache(), "HIT");
        s.backend.bump(p);
    }
    assert_eq!(edge_user(5).await, "user 5");
    let _ = invalidate_edge_user(5).await;
    assert!(edge::flush(WAIT).await);
    for p in pages {
        let page = get(port, p, &[]).await;
        assert_eq!(
            page.x_cache(),
            "MISS",
            "{p} was purged by invalidate_edge_user"
        );
        assert_eq!(page.body, format!("{p} v1"));
        assert_eq!(get(port, p, &[]).await.x_cache(), "HIT");
        s.backend.bump(p);
    }
    let _ = populate_edge_user(5, "user 5 (new)".to_string()).await;
    assert!(edge::flush(WAIT).await);
    for p in pages {
        assert_eq!(
            get(port, p, &[]).await.body,
            format!("{p} v2"),
            "{p} purged by populate"
        );
    }
}

#[test]
fn purge_paths_are_encoded_like_the_urls_clients_request() {
    let s = shared();
    let port = s.varnish.port();
    // What a client sends for the query "a b/c": the macro percent-encodes the argument the
    // same way, so the purge hits the object Varnish cached under that URL.
    let url = "/t6/search/a%20b%2Fc";
    let rt = cache_tests::current_thread_runtime();
    assert_eq!(rt.block_on(get(port, url, &[])).x_cache(), "MISS");
    assert_eq!(rt.block_on(get(port, url, &[])).x_cache(), "HIT");
    assert_eq!(edge_search("a b/c"), ["a b/c"]);
    invalidate_edge_search("a b/c").unwrap();
    assert!(edge::flush_blocking(WAIT));
    assert_eq!(rt.block_on(get(port, url, &[])).x_cache(), "MISS");
    assert_eq!(s.backend.hits(url), 2);
}

#[tokio::test]
async fn invalidate_tag_purges_the_pages_carrying_the_tag() {
    let s = shared();
    let port = s.varnish.port();
    let (tagged, other) = ("/t7/users/9", "/t7/users/10");
    s.backend.set_tags(tagged, &["t7 user:9"]);
    s.backend.set_tags(other, &["t7 user:10"]);
    for p in [tagged, other] {
        get(port, p, &[]).await;
        assert_eq!(get(port, p, &[]).await.x_cache(), "HIT");
    }
    let _ = cache_runtime::invalidate_tag("t7 user:9").await;
    assert!(edge::flush(WAIT).await);
    assert_eq!(get(port, tagged, &[]).await.x_cache(), "MISS");
    assert_eq!(get(port, other, &[]).await.x_cache(), "HIT");
}

/// A full queue folds its purges into one purge of everything: `BAN /` from the `HttpPurger`,
/// which the shipped VCL turns into a ban of every object of that `Host`.
#[tokio::test]
async fn a_folded_queue_bans_every_page_of_the_host() {
    let backend = &shared().backend;
    let varnish = VarnishServer::start(backend.port);
    let port = varnish.port();
    let paths = ["/t8/a", "/t8/b", "/t8/c"];
    for p in paths {
        assert_eq!(get(port, p, &[]).await.x_cache(), "MISS");
        assert_eq!(get(port, p, &[]).await.x_cache(), "HIT");
        backend.bump(p);
    }
    let edge = Edge::builder()
        .purger(HttpPurger::new(varnish.url()).unwrap())
        .purger(SurrogateKeyPurger::xkey(varnish.url()).build().unwrap())
        .capacity(1)
        .repurge_after(Duration::ZERO)
        .build();
    // More than the queue holds at once: folded (the first may already be in flight).
    edge.enqueue_paths(["/t8/other", "/t8/x", "/t8/y", "/t8/z"]);
    assert!(edge.flush(WAIT).await);
    let s = edge.stats();
    assert!(s.folded >= 2 && s.purged_everything == 1, "{s:?}");
    assert_eq!((s.failed, s.dropped), (0, 0), "{s:?}");
    for p in paths {
        let after = get(port, p, &[]).await;
        assert_eq!(after.x_cache(), "MISS", "{p} was banned");
        assert!(after.body.ends_with(" v1"), "{p}: new data: {}", after.body);
    }
}
