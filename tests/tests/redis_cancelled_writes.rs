//! A write whose caller goes away before Redis answered — a client disconnect (the server
//! drops the handler's future after the database commit), a `timeout` or `select!` around
//! `invalidate_…`, `populate_…` or `invalidate_tag`, an aborted task — is kept and retried
//! like a write Redis refused, never lost. Here the network drops the connections silently
//! while the write is on its way (`cache_tests::proxy`: it never reaches Redis, which keeps
//! the old value and tag token, and does not restart, so nothing else would clear them); the
//! caller is cancelled; once the runtime has new connections the kept writes land, and no
//! call reads the old value again. The edge purge of a cancelled `invalidate_…` is not lost
//! with its caller either.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cache_runtime::cached;
use cache_runtime::edge::{self, Edge, FnPurger, PurgeBatch, PurgeError};
use cache_tests::{eventually, proxy::Proxy, RedisServer};

static VERSION: AtomicU64 = AtomicU64::new(0);

#[cached(tier = "local+redis", ttl = 300, key = "cw-price:<id>")]
async fn price(id: u64) -> u64 {
    id * 1000 + VERSION.load(SeqCst)
}

#[cached(tier = "local+redis", ttl = 300, key = "cw-stock:<id>")]
async fn stock(id: u64) -> u64 {
    id * 1000 + VERSION.load(SeqCst)
}

#[cached(tier = "local+redis", ttl = 300, key = "cw-team:<id>", tags = ["cw-team:<id>"])]
async fn team(id: u64) -> u64 {
    id * 1000 + VERSION.load(SeqCst)
}

/// The server, and the proxy the runtime reaches it through.
#[cached(tier = "local+redis", ttl = 300, key = "cw-page:<id>", purge = ["/cw/pages/<id>"])]
async fn page(id: u64) -> u64 {
    id * 1000 + VERSION.load(SeqCst)
}

/// The paths the edge was asked to purge.
static PURGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn purged(path: &str) -> bool {
    PURGED.lock().unwrap().iter().any(|p| p == path)
}

fn server() -> &'static (RedisServer, Proxy) {
    static SERVER: OnceLock<(RedisServer, Proxy)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.port());
        cache_runtime::init(
            cache_runtime::Config::builder()
                .redis_url(proxy.url())
                .key_prefix("t")
                // Far longer than the cancellation below (the write is still waiting for
                // Redis when its caller goes away), short enough to replace dead connections
                // soon after.
                .redis_timeout(Duration::from_millis(400))
                .breaker_threshold(2)
                .breaker_cooldown(Duration::from_millis(200))
                .build(),
        )
        .expect("configured once");
        edge::install(
            Edge::builder()
                .purger(FnPurger::new("record", |b: &PurgeBatch| {
                    PURGED.lock().unwrap().extend(b.paths().iter().cloned());
                    Ok::<(), PurgeError>(())
                }))
                .build(),
        )
        .expect("installed once");
        (server, proxy)
    })
}

fn pending() -> usize {
    cache_runtime::redis_status().pending_writes
}

/// Until Redis serves this process again: connections up (the health check runs every
/// command and script), breaker closed, nothing pending.
async fn until_redis_serves() {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let serving = cache_runtime::health_check().await.is_ok()
            && cache_runtime::redis_status().breaker == cache_runtime::BreakerState::Closed
            && pending() == 0;
        if serving {
            return;
        }
        assert!(Instant::now() < deadline, "Redis serves again within 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The network drops the connections, `write` is cancelled while it waits for Redis: the
/// write was kept, and lands once the runtime has new connections.
async fn cancel_while_the_network_drops_it<F: std::future::Future>(write: F) {
    let (_, proxy) = server();
    until_redis_serves().await;
    proxy.blackhole_open_connections();
    let cancelled = tokio::time::timeout(Duration::from_millis(50), write).await;
    assert!(cancelled.is_err(), "the write was still waiting for Redis");
    assert!(pending() >= 1, "the cancelled write is kept");
    eventually(Duration::from_secs(30), "the kept write lands", || {
        pending() == 0
    })
    .await;
    until_redis_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_cancelled_in_flight_are_kept_not_lost() {
    server();
    VERSION.store(0, SeqCst);
    assert_eq!(price(1).await, 1000);
    assert_eq!(stock(1).await, 1000);
    assert_eq!(team(1).await, 1000);
    assert_eq!(page(1).await, 1000);
    // Every value is in Redis now.

    // The source changes; each write is cancelled on its way.
    VERSION.store(1, SeqCst);
    cancel_while_the_network_drops_it(invalidate_price(1)).await;
    cancel_while_the_network_drops_it(populate_stock(1, 1001)).await;
    cancel_while_the_network_drops_it(cache_runtime::invalidate_tag("cw-team:1")).await;
    assert!(!purged("/cw/pages/1"));
    cancel_while_the_network_drops_it(invalidate_page(1)).await;
    eventually(Duration::from_secs(10), "the page is purged", || {
        purged("/cw/pages/1")
    })
    .await;

    // Local copies dropped, so each call reads Redis: none finds the old value.
    price_cache().clear_local();
    stock_cache().clear_local();
    team_cache().clear_local();
    page_cache().clear_local();
    assert_eq!(price(1).await, 1001, "the invalidation landed");
    assert_eq!(stock(1).await, 1001, "the populate's invalidation landed");
    assert_eq!(team(1).await, 1001, "the tag invalidation landed");
    assert_eq!(page(1).await, 1001, "the invalidation landed");
}
