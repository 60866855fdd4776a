//! Redis behind Sentinel (1 master, 1 replica, 3 sentinels): the runtime finds the master
//! through the sentinels, follows a `SENTINEL FAILOVER` (never writing to the old address
//! once it is demoted), confirms writes with the replica (`WAIT 1`, `WaitReplicas::Auto`), and
//! no read returns a value older than an invalidation that returned `Ok`, before, during or
//! after the failover.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_runtime::{cached, Config};
use cache_tests::{sentinel::role_of, wait_until, SentinelSet};

const KEYS: u64 = 60;

/// The source of truth: the version of each row, and the version that the last `Ok`
/// invalidation covered (no read that starts after it may return less).
static DB: Mutex<Option<HashMap<u64, u64>>> = Mutex::new(None);
static CONFIRMED: Mutex<Option<HashMap<u64, u64>>> = Mutex::new(None);

fn db(id: u64) -> u64 {
    *DB.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(id)
        .or_insert(1)
}

fn confirmed(id: u64) -> u64 {
    CONFIRMED
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .get(&id)
        .copied()
        .unwrap_or(1)
}

// Redis only: every read goes through the (current) master.
#[cached(tier = "redis", ttl = 300, key = "row:<id>")]
fn row(id: u64) -> u64 {
    db(id)
}

/// Bumps the row, then invalidates; records the version an `Ok` covers.
fn write(id: u64) -> bool {
    let v = {
        let mut g = DB.lock().unwrap();
        let e = g.get_or_insert_with(HashMap::new).entry(id).or_insert(1);
        *e += 1;
        *e
    };
    let ok = invalidate_row(id).is_ok();
    if ok {
        let mut g = CONFIRMED.lock().unwrap();
        let e = g.get_or_insert_with(HashMap::new).entry(id).or_insert(1);
        *e = (*e).max(v);
    }
    ok
}

/// Reads `id` and checks it against the last confirmed invalidation; returns whether it was
/// stale.
fn read_is_stale(id: u64) -> bool {
    let floor = confirmed(id);
    let got = row(id);
    assert!(got <= db(id), "row {id}: {got} was never written");
    got < floor
}

#[test]
fn reads_and_writes_follow_a_sentinel_failover_without_stale_reads() {
    let set = SentinelSet::start("cache");
    cache_runtime::init(
        Config::builder()
            .redis_sentinel(set.sentinel_urls(), set.master_name())
            .key_prefix("sentinel")
            // Generous for a loaded 2-core VM: `WAIT` and the failover share it.
            .redis_timeout(Duration::from_millis(800))
            .build(),
    )
    .unwrap();
    let old_master = set.master_port();

    // Warm up through Sentinel; every write is confirmed by the replica.
    for id in 0..KEYS {
        assert_eq!(row(id), db(id));
    }
    for id in 0..KEYS {
        assert!(write(id), "a write with a healthy replica returns Ok");
        assert_eq!(row(id), db(id));
    }
    assert_eq!(cache_runtime::redis_status().unconfirmed_writes, 0);

    // Writers and readers run throughout the failover.
    let stop = Arc::new(AtomicBool::new(false));
    let stale = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let stop = stop.clone();
            let stale = stale.clone();
            std::thread::spawn(move || {
                let mut n = w;
                let mut reads = 0u64;
                while !stop.load(SeqCst) {
                    let id = n % KEYS;
                    if n % 3 == 0 {
                        write(id);
                    } else {
                        reads += 1;
                        if read_is_stale(id) {
                            stale.lock().unwrap().push(id);
                        }
                    }
                    n += 7;
                }
                reads
            })
        })
        .collect();

    let new_master = set.failover();
    assert_ne!(new_master, old_master);
    // The old master rejoined as a replica of the new one: writes can be confirmed again.
    set.wait_ready();
    assert_eq!(
        role_of(set.nodes().iter().find(|n| n.port() == old_master).unwrap()).as_deref(),
        Some("slave")
    );

    // Writes go through again (to the new master: the old one answers READONLY now).
    wait_until(
        Duration::from_secs(30),
        "an Ok invalidation after the failover",
        || write(0),
    );
    stop.store(true, SeqCst);
    let reads: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(reads > 0);

    // Every write that was not confirmed is retried against the new master.
    wait_until(Duration::from_secs(30), "pending writes to drain", || {
        cache_runtime::redis_status().pending_writes == 0
    });
    for id in 0..KEYS {
        assert_eq!(row(id), db(id), "row {id} after the failover");
    }
    let stale = stale.lock().unwrap();
    assert!(stale.is_empty(), "stale reads of rows {stale:?}");
    // The runtime talks to the new master: it holds the rows just read.
    let master = set.master();
    assert_eq!(master.port(), new_master);
    assert!(!master.scan("{sentinel:*").is_empty());
}
