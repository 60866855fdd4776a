//! A Redis restarted from a large snapshot answers for seconds before its data set is back:
//! it accepts connections and answers `HELLO`, `SELECT`, `CLIENT TRACKING`, `SUBSCRIBE`,
//! `INFO`, `PUBLISH` at once, and `-LOADING` to reads and writes until the snapshot is
//! loaded. Callers keep calling through the whole restart, on the runtime's own connections
//! and the caller runtime's (which redis-rs reconnects by itself): every answer comes from
//! the source or from a value written after the restart, none from the snapshot, whose
//! values were invalidated before the crash (docs/PROTOCOL.md §8.2).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{cached, Config};
use cache_tests::{RedisOptions, RedisServer};

const KEYS: usize = 8;
/// Keys of the snapshot that no reader touches: the proof it was restored.
const WITNESS: usize = KEYS;

static SOURCE: [AtomicU64; KEYS + 1] = [const { AtomicU64::new(1) }; KEYS + 1];

#[cached(tier = "redis", ttl = 300, key = "load:<id>")]
async fn remote(id: usize) -> u64 {
    SOURCE[id].load(SeqCst)
}

#[cached(tier = "local+redis", ttl = 300, key = "load2:<id>", tags = ["load:<id>"])]
async fn two_tier(id: usize) -> u64 {
    SOURCE[id].load(SeqCst) + 1000
}

#[cached(tier = "redis", ttl = 300, key = "load3:<id>", lock = true)]
async fn locked(id: usize) -> u64 {
    SOURCE[id].load(SeqCst) + 2000
}

/// Reads every key of the three caches; panics on a value other than the source's.
async fn read_all(round: u64) {
    for (id, source) in SOURCE.iter().enumerate().take(KEYS) {
        let v = source.load(SeqCst);
        assert_eq!(remote(id).await, v, "remote key {id}, round {round}");
        assert_eq!(
            two_tier(id).await,
            v + 1000,
            "two_tier key {id}, round {round}"
        );
        assert_eq!(locked(id).await, v + 2000, "locked key {id}, round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_the_snapshot_is_served_while_redis_loads_it_or_after() {
    // 20 000 keys at 150 µs each: about 3 s of loading, with client events handled every
    // KiB of it (as a large data set's loading does every 2 MiB).
    let server = RedisServer::start_with_options(
        RedisOptions::new()
            .arg("--key-load-delay", "150")
            .arg("--loading-process-events-interval-bytes", "1024"),
    );
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url())
            .key_prefix("load")
            .redis_timeout(Duration::from_millis(500))
            .build(),
    )
    .unwrap();
    // Version 1 in Redis, with 20 000 keys of filler, and a snapshot of it.
    for _ in 0..3 {
        read_all(0).await;
    }
    assert_eq!(remote(WITNESS).await, 1);
    let filled: i64 = server
        .cmd(&[
            "EVAL",
            "for i = 1, 20000 do redis.call('SET', 'filler:' .. i, i) end return 20000",
            "0",
        ])
        .expect("filler");
    assert_eq!(filled, 20000);
    server.save_snapshot();
    // Version 2: every key invalidated, the witness included (acknowledged).
    for (id, source) in SOURCE.iter().enumerate() {
        source.store(2, SeqCst);
        invalidate_remote(id).await.expect("invalidate");
        invalidate_two_tier(id).await.expect("invalidate");
        invalidate_locked(id).await.expect("invalidate");
    }
    read_all(1).await;

    // Readers through the whole restart.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut rounds = 0;
                while !stop.load(SeqCst) {
                    read_all(rounds).await;
                    rounds += 1;
                    tokio::task::yield_now().await;
                }
                rounds
            })
        })
        .collect();
    let errors_before = remote_cache().stats().redis_errors + remote_cache().stats().redis_timeouts;
    let started = Instant::now();
    let restarted = {
        let server = &server;
        // The harness returns once the server answers `PING`: after loading.
        tokio::task::block_in_place(|| {
            server.restart_from_snapshot();
            started.elapsed()
        })
    };
    let (value_key, _, _) = cache_runtime::key::redis_keys(
        "load",
        remote_cache()
            .key_schema()
            .expect("a cache with a Redis tier"),
        &format!("load:{WITNESS}"),
    );
    let restored: Option<Vec<u8>> = server.cmd(&["GET", &value_key]).expect("GET");
    assert!(
        restored.is_some(),
        "the snapshot's values are back in Redis"
    );
    assert!(
        restarted >= Duration::from_secs(1),
        "the restart loaded for {restarted:?}: too short to test the loading window"
    );
    let s = remote_cache().stats();
    assert!(
        s.redis_errors + s.redis_timeouts > errors_before,
        "readers met the loading server: {s:?}"
    );
    // Readers go on after the load, until Redis serves hits again.
    let hits = remote_cache().stats().redis_hits;
    let deadline = Instant::now() + Duration::from_secs(20);
    while remote_cache().stats().redis_hits < hits + 100 {
        assert!(Instant::now() < deadline, "no Redis hits after the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, SeqCst);
    for r in readers {
        assert!(r.await.expect("a reader saw a value of the snapshot") > 0);
    }
    assert_eq!(remote(WITNESS).await, 2, "the witness's restored value");
}
