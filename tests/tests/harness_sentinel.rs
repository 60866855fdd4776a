//! Self-test of the Sentinel harness: the set comes up with a replica that every sentinel
//! lists, a forced failover and a killed master both promote the replica, and a write
//! acknowledged with `WAIT 1` survives the failover.

use cache_tests::SentinelSet;

#[test]
fn a_forced_failover_promotes_the_replica_with_the_data() {
    let set = SentinelSet::start("harness");
    assert_eq!(set.sentinel_urls().len(), 3);
    let old = set.master_port();
    assert_eq!(
        set.nodes()[0].port(),
        old,
        "the first node starts as master"
    );
    set.master().cmd::<()>(&["SET", "k", "v"]).unwrap();
    let acked: u64 = set.master().cmd(&["WAIT", "1", "5000"]).unwrap();
    assert_eq!(acked, 1, "the replica acknowledged the write");

    let new = set.failover();
    assert_ne!(new, old);
    assert_eq!(set.master().port(), new);
    assert_eq!(set.master().info_field("role").as_deref(), Some("master"));
    assert_eq!(
        set.master()
            .cmd::<Option<String>>(&["GET", "k"])
            .unwrap()
            .as_deref(),
        Some("v")
    );
    // The old master is reconfigured as a replica of the new one; then the set can fail
    // over again.
    set.wait_ready();
    assert_eq!(set.replica().port(), old);
    let err = set.replica().cmd::<()>(&["SET", "k", "w"]).unwrap_err();
    assert!(err.to_string().to_uppercase().contains("READONLY"), "{err}");
    assert_eq!(set.failover(), old);
}

#[test]
fn a_killed_master_is_replaced() {
    let set = SentinelSet::start("harness-kill");
    let old = set.kill_master();
    let new = set.wait_new_master(old);
    assert_ne!(new, old);
    assert_eq!(set.master().port(), new);
    set.master().cmd::<()>(&["SET", "after", "1"]).unwrap();
}
