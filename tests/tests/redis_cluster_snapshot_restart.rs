//! A cluster master restarted from its snapshot (docs/PROTOCOL.md §8.2) within the cluster's
//! node timeout comes back as the master of its slots, with its values together with the
//! tickets and tokens saved beside them: the invalidations acknowledged after the save are
//! undone on that shard, and its replica resyncs to the restored data. The runtime hears the
//! node's connection close on the bus, reopens its connections and checks every master's
//! incarnation (`run_id`) before the next read: the restarted master is another incarnation,
//! so every value is invalidated (global clear) and no caller, of a Redis-only, a two-tier or
//! a lock-reading cache, is served a value invalidated before the crash.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::{cached, Config};
use cache_tests::{eventually, RedisCluster};

/// How long the bus may take to notice a subscription or its loss.
const WITHIN: Duration = Duration::from_secs(30);

const KEYS: usize = 48;
const PREFIX: &str = "csnap";

/// The source of truth: key `id`'s current version.
static SOURCE: [AtomicU64; KEYS] = [const { AtomicU64::new(1) }; KEYS];

#[cached(tier = "redis", ttl = 300, key = "snap:<id>")]
async fn remote(id: usize) -> u64 {
    SOURCE[id].load(SeqCst)
}

#[cached(tier = "local+redis", ttl = 300, key = "snap2:<id>", tags = ["snap:<id>"])]
async fn two_tier(id: usize) -> u64 {
    SOURCE[id].load(SeqCst) + 1000
}

/// Its reads are the lock script's.
#[cached(tier = "redis", ttl = 300, key = "snap3:<id>", lock = true)]
async fn locked(id: usize) -> u64 {
    SOURCE[id].load(SeqCst) + 2000
}

fn value_key(logical: &str) -> String {
    let schema = remote_cache()
        .key_schema()
        .expect("a cache with a Redis tier");
    cache_runtime::key::redis_keys(PREFIX, schema, logical).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_invalidated_after_a_masters_snapshot_are_not_served_after_its_restart() {
    let cluster = RedisCluster::start();
    cache_runtime::init(
        Config::builder()
            .redis_cluster(cluster.seed_urls())
            .key_prefix(PREFIX)
            .build(),
    )
    .unwrap();
    eventually(WITHIN, "the bus to subscribe to every shard", || {
        cache_runtime::bus_status().connected
    })
    .await;
    // Version 1 in Redis.
    for id in 0..KEYS {
        assert_eq!(remote(id).await, 1);
        assert_eq!(two_tier(id).await, 1001);
        assert_eq!(locked(id).await, 2001);
    }
    // The victim: the master of key 0's value; the keys it holds are the ones a restart
    // from its snapshot can bring back.
    let victim = cluster.master_for_key(&value_key("snap:0")).port();
    let on_victim: Vec<usize> = (0..KEYS)
        .filter(|id| {
            cluster
                .master_for_key(&value_key(&format!("snap:{id}")))
                .port()
                == victim
        })
        .collect();
    assert!(
        on_victim.len() >= 4,
        "too few keys on the victim: {on_victim:?}"
    );
    cluster.node(victim).save_snapshot();

    // Version 2: every key invalidated (acknowledged), half of them read again.
    for (id, source) in SOURCE.iter().enumerate() {
        source.store(2, SeqCst);
        invalidate_remote(id).await.expect("invalidate");
        invalidate_two_tier(id).await.expect("invalidate");
        invalidate_locked(id).await.expect("invalidate");
        if id % 2 == 0 {
            assert_eq!(remote(id).await, 2);
            assert_eq!(two_tier(id).await, 1002);
            assert_eq!(locked(id).await, 2002);
        }
    }

    // A crash of the victim. Its socket closes at once (the bus hears it, as it would of a
    // real crash, long before a supervisor has restarted the server); then a restart from
    // the snapshot, well within the node timeout: no failover.
    cluster.node(victim).kill();
    eventually(WITHIN, "the bus to notice the lost node", || {
        !cache_runtime::bus_status().connected
    })
    .await;
    cluster.node(victim).restart_from_snapshot();
    cluster.wait_healthy();
    assert_eq!(
        cluster.master_for_key(&value_key("snap:0")).port(),
        victim,
        "the victim serves its slots again (no failover: else the test proves nothing)"
    );
    let restored: Option<Vec<u8>> = cluster
        .node(victim)
        .cmd(&["GET", &value_key(&format!("snap:{}", on_victim[0]))])
        .expect("GET");
    assert!(
        restored.is_some(),
        "the snapshot's values are back in Redis"
    );

    // Every read from now on is version 2, from the source or from Redis once rewritten.
    for round in 0..20 {
        for id in 0..KEYS {
            assert_eq!(
                locked(id).await,
                2002,
                "key {id}, round {round}: a restored value"
            );
            assert_eq!(
                remote(id).await,
                2,
                "key {id}, round {round}: a restored value"
            );
            assert_eq!(
                two_tier(id).await,
                1002,
                "key {id}, round {round}: a restored value"
            );
        }
    }
    // And the cache works again: values rewritten, then served from Redis (the victim's
    // too).
    let id = on_victim[0];
    let hits = remote_cache().stats().redis_hits;
    let deadline = Instant::now() + Duration::from_secs(10);
    while remote_cache().stats().redis_hits == hits {
        assert!(Instant::now() < deadline, "no Redis hit after the restart");
        assert_eq!(remote(id).await, 2);
    }
}
