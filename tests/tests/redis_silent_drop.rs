//! Connections the network drops without telling either end (a NAT, a load balancer or a
//! firewall forgetting them: no `FIN`, no `RST`; TCP itself notices after minutes): calls
//! time out, the breaker opens, and the runtime opens new connections instead of probing the
//! dead ones forever; reads are Redis hits again within a breaker cool-down or two, and an
//! invalidation issued meanwhile is applied.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::{cached, BreakerState, Config};
use cache_tests::{eventually, proxy::Proxy, RedisServer};

static VERSION: AtomicUsize = AtomicUsize::new(1);

#[cached(tier = "local+redis", ttl = 60, key = "drop:<id>")]
async fn row(id: u64) -> String {
    format!("row {id} v{}", VERSION.load(SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dropped_silently_are_replaced() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    cache_runtime::init(
        Config::builder()
            .redis_url(proxy.url())
            .key_prefix("t")
            .redis_timeout(Duration::from_millis(100))
            .breaker_threshold(3)
            .breaker_cooldown(Duration::from_millis(300))
            .build(),
    )
    .unwrap();
    // The bus first: its first subscription detaches the flights of `local+redis` caches and
    // drops their local copies (docs/PROTOCOL.md §5.4), so a warm-up it lands in runs the
    // body again.
    let _ = row_cache();
    eventually(
        Duration::from_secs(20),
        "the bus subscribed and trusted",
        || {
            let s = cache_runtime::bus_status();
            s.connected && s.trusted
        },
    )
    .await;
    for _ in 0..40 {
        row_cache().clear_local();
        assert_eq!(row(1).await, "row 1 v1");
    }
    let s = row_cache().stats();
    assert_eq!(
        s.body_calls, 1,
        "served from Redis after the first call: {s:?}"
    );
    let accepted = proxy.accepted();

    proxy.blackhole_open_connections();
    // The row changes; the invalidation cannot reach Redis now and is kept for retry.
    VERSION.store(2, SeqCst);
    assert!(invalidate_row(1).await.is_err(), "Redis cannot be reached");
    assert_eq!(
        row(1).await,
        "row 1 v2",
        "correct from the source meanwhile"
    );

    // Reads recover once new connections are opened: the value is stored in Redis again and
    // read back from there.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hits = row_cache().stats().redis_hits;
        row_cache().clear_local();
        assert_eq!(row(1).await, "row 1 v2", "never the invalidated value");
        if row_cache().stats().redis_hits > hits {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the runtime kept probing dead connections: no Redis hit 10 s after the drop \
             ({:?}, {} connections accepted before, {} now)",
            row_cache().stats(),
            accepted,
            proxy.accepted()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(proxy.accepted() > accepted, "new connections were opened");
    assert_eq!(cache_runtime::redis_status().breaker, BreakerState::Closed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache_runtime::redis_status().pending_writes > 0 {
        assert!(
            Instant::now() < deadline,
            "the deferred invalidation was never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    invalidate_row(1).await.expect("writes go through again");
}
