//! On a Redis Cluster, connections the nodes close while idle (their `timeout` setting): the
//! cluster connection repairs its node connections in the background, and the next reads
//! wait for it (within the operation timeout) instead of failing over to the body; writes
//! are resent too. The single-node case is `redis_idle_timeout.rs`.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, Config};
use cache_tests::{eventually, RedisCluster};

static BODIES: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "cidle:<id>")]
async fn row(id: u64) -> String {
    BODIES.fetch_add(1, SeqCst);
    format!("row {id}")
}

/// Ordinary (non-subscriber, non-replication) connections on every node.
fn normal_clients(cluster: &RedisCluster) -> usize {
    cluster.nodes().iter().map(|n| n.normal_clients()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_connections_closed_while_idle_cost_no_body_and_no_error() {
    let cluster = RedisCluster::start();
    cache_runtime::init(
        Config::builder()
            .redis_cluster(cluster.seed_urls())
            .key_prefix("t")
            .build(),
    )
    .unwrap();
    cache_runtime::health_check().await.expect("health check");
    for i in 0..200 {
        row_cache().clear_local();
        row(i % 5).await;
    }
    assert_eq!(BODIES.load(SeqCst), 5, "one body per key");
    assert_eq!(row_cache().stats().redis_errors, 0);
    let hits = row_cache().stats().redis_hits;

    for n in cluster.nodes() {
        n.config_set("timeout", "1");
    }
    eventually(
        Duration::from_secs(10),
        "the nodes to close every idle connection of the process",
        || normal_clients(&cluster) == 0,
    )
    .await;

    for i in 0..5 {
        row_cache().clear_local();
        assert_eq!(
            lookup_row(i).await.as_deref(),
            Some(format!("row {i}").as_str())
        );
    }
    let s = row_cache().stats();
    assert_eq!(
        s.redis_errors, 0,
        "a closed idle connection failed a read: {s:?}"
    );
    assert_eq!(s.redis_hits, hits + 5, "every read was a Redis hit");

    invalidate_row(1)
        .await
        .expect("an invalidation on connections the cluster closed while idle");
    assert_eq!(row(1).await, "row 1");
    assert_eq!(
        BODIES.load(SeqCst),
        6,
        "the invalidated key ran its body again"
    );
    assert_eq!(row_cache().stats().redis_errors, 0);
}
