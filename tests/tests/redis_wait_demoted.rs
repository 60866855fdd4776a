//! `WaitReplicas::Auto` on a master whose replica is promoted away (what a failover does before
//! the old master is demoted): the old master then reports 0 replicas, and a write it takes is
//! lost when it is demoted. Such writes must return `Err` (kept and retried), never `Ok`, even
//! after the runtime's periodic `ROLE` refresh (every 10 s) has seen the 0 once.

use std::time::Duration;

use cache_runtime::{cached, CacheError, Config};
use cache_tests::{wait_until, RedisOptions, RedisServer};

#[cached(tier = "redis", ttl = 60, key = "demoted:<id>")]
async fn value(id: u64) -> u64 {
    id
}

/// Replicas in sync (`state=online`; `ROLE` lists only those).
fn online_replicas(master: &RedisServer) -> usize {
    let info: String = master.cmd(&["INFO", "replication"]).unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_master_that_lost_its_replica_to_a_promotion_never_confirms_a_write() {
    let master = RedisServer::start();
    let replica = RedisServer::start_with_options(
        RedisOptions::new()
            .replica_of(master.port())
            .arg("--repl-diskless-sync-delay", "0"),
    );
    wait_until(Duration::from_secs(10), "the replica to sync", || {
        online_replicas(&master) == 1
    });
    cache_runtime::init(
        Config::builder()
            .redis_url(master.url())
            .key_prefix("t")
            .redis_timeout(Duration::from_millis(500))
            .build(),
    )
    .unwrap();
    assert_eq!(value(1).await, 1);
    // Confirmed by the replica while it replicates (retried: a loaded machine may miss the
    // first WAIT's deadline).
    let mut confirmed = invalidate_value(1).await;
    for _ in 0..20 {
        if confirmed.is_ok() {
            break;
        }
        confirmed = invalidate_value(1).await;
    }
    confirmed.expect("confirmed by the replica while it replicates");
    // Enough calls for this runtime to get connections of its own (the invalidation lane is
    // one of them, opened in the background when an invalidation may take it), then
    // invalidations: with a replica to wait for, none takes the lane (its `CLIENT REPLY
    // SKIP` pipeline has no `WAIT`) and it is never opened; each invalidation waits.
    for id in 0..64 {
        assert_eq!(value(id).await, id);
    }
    let waits = master.command_stats("wait").0;
    for _ in 0..10 {
        // `Err` if a loaded machine missed a deadline; then time for a lane opened by
        // mistake to come up and be taken.
        let _ = invalidate_value(1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        master.command_stats("client|reply").0,
        0,
        "no lane with a replica"
    );
    assert!(
        master.command_stats("wait").0 >= waits + 10,
        "every invalidation waited for the replica"
    );

    // The replica is promoted; the old master is not demoted (yet) and reports 0 replicas.
    replica
        .cmd::<()>(&["REPLICAOF", "NO", "ONE"])
        .expect("promote the replica");
    wait_until(
        Duration::from_secs(10),
        "the master to lose its replica",
        || online_replicas(&master) == 0,
    );
    let first = invalidate_value(1).await;
    assert!(
        matches!(first, Err(CacheError::Unavailable(ref m)) if m.contains("WAIT")),
        "a write the promoted replica never saw is not Ok: {first:?}"
    );
    // Past the `ROLE` refresh period: the runtime has now read "0 replicas" once, and must
    // not take it at face value on the same connection.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let second = invalidate_value(1).await;
    assert!(
        second.is_err(),
        "after one ROLE reading of 0 replicas, a write on the old master is still not Ok: {second:?}"
    );
    assert!(cache_runtime::redis_status().unconfirmed_writes >= 2);
    assert_eq!(
        master.command_stats("client|reply").0,
        0,
        "no lane while the runtime still counts a replica"
    );
}
