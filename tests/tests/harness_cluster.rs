//! Self-test of the cluster harness: 3 masters and 3 replicas come up healthy, hash tags
//! spread over every master, and a killed master's replica takes its slots with the data.

use cache_tests::RedisCluster;

#[test]
fn the_cluster_comes_up_spreads_keys_and_fails_over() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.nodes().len(), 6);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let topo = cluster.topology();
    assert_eq!(
        topo.iter().filter(|n| n.master_id.is_some()).count(),
        3,
        "three replicas: {topo:?}"
    );

    // 64 bucket tags reach every master.
    let mut owners = std::collections::BTreeSet::new();
    for b in 0..64 {
        owners.insert(cluster.master_for_key(&format!("{{cr:{b}}}:t:k")).port());
    }
    assert_eq!(owners.len(), 3, "buckets spread over all masters");

    // A write acknowledged by its replica survives the master's death.
    let key = "{cr:417}:t:user:42";
    let owner = cluster.master_for_key(key);
    owner.cmd::<()>(&["SET", key, "ticket"]).unwrap();
    let acked: u64 = owner.cmd(&["WAIT", "1", "5000"]).unwrap();
    assert_eq!(acked, 1);
    // The owner's replica holds it (read on the replica itself).
    let topo = cluster.topology();
    let owner_id = topo
        .iter()
        .find(|n| n.port == owner.port())
        .map(|n| n.id.clone())
        .expect("the owner in the topology");
    let replica = topo
        .iter()
        .find(|n| n.master_id.as_deref() == Some(owner_id.as_str()))
        .map(|n| n.port)
        .expect("the owner's replica");
    // Observed on Redis 7.0.15 right after the cluster came up (about one run in three): WAIT
    // counted the replica before a READONLY GET on it could see the write, for a few ms. The
    // harness checks the failover, so it waits until the replica serves the write (an open
    // question for the cluster issue: whether WAIT's acknowledgement can precede the data).
    let mut conn = cluster.node(replica).client();
    redis::cmd("READONLY").query::<()>(&mut conn).unwrap();
    cache_tests::wait_until(
        std::time::Duration::from_secs(10),
        "the owner's replica to serve the acknowledged write",
        || {
            redis::cmd("GET")
                .arg(key)
                .query::<Option<String>>(&mut conn)
                .unwrap()
                .as_deref()
                == Some("ticket")
        },
    );
    let killed = cluster.kill_master(owner.port());
    let promoted = cluster.wait_failover(killed);
    assert_ne!(promoted, killed);
    assert_eq!(
        promoted,
        replica,
        "the owner's replica took over: {:?}",
        cluster.topology()
    );
    assert_eq!(cluster.master_for_key(key).port(), promoted);
    assert_eq!(
        cluster
            .master_for_key(key)
            .cmd::<Option<String>>(&["GET", key])
            .unwrap()
            .as_deref(),
        Some("ticket")
    );
    assert_eq!(cluster.masters().len(), 3);

    // The killed node comes back as a replica and the cluster is whole again.
    cluster.restart_node(killed);
    cluster.wait_healthy();
    assert_eq!(cluster.masters().len(), 3);
}
