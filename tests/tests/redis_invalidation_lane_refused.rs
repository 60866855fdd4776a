//! A user without `+client|reply` (README.md's ACL before the invalidation lane): the lane's
//! proof on its new connection is refused once, the lane stays off, and every invalidation
//! runs as the invalidate script, correct under concurrent reads. Counted from the server's
//! side (`INFO commandstats`).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{cached, Config};
use cache_tests::RedisServer;

const KEYS: u64 = 8;

static VERSIONS: [AtomicU64; KEYS as usize] = [const { AtomicU64::new(0) }; KEYS as usize];

#[cached(tier = "redis", ttl = 60, key = "refused:<id>")]
async fn item(id: u64) -> u64 {
    id * 1_000_000 + VERSIONS[id as usize].load(SeqCst)
}

/// A cache with a local tier: the process subscribes, so its own messages echo back to it,
/// which is what the lane's reply order is for (a process that does not subscribe sends
/// plain pipelines, docs/PROTOCOL.md §7.4).
#[cached(tier = "local+redis", ttl = 60, key = "refused-copy:<id>")]
async fn copy(id: u64) -> u64 {
    id
}

const ACL_WITHOUT_REPLY: &str = "cache on >secret resetkeys resetchannels ~{cr:* &cr:bus:* \
    -@all +ping +auth +hello +select +get +mget +set +del +pexpire +pexpireat +pttl +evalsha \
    +script|load +publish +subscribe +unsubscribe +time +role +wait +client|tracking \
    +client|caching";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_client_reply_every_invalidation_runs_the_script_and_stays_correct() {
    let server = RedisServer::start();
    server.acl_setuser(ACL_WITHOUT_REPLY);
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url_for_user("cache", "secret"))
            .build(),
    )
    .unwrap();
    copy_cache();
    assert!(
        cache_runtime::bus_status().wanted,
        "a local tier subscribes"
    );

    // Enough calls for the runtime's own connections; invalidations until the lane has
    // tried its proof (refused).
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.command_stats("client|reply").1 == 0 {
        for id in 0..KEYS {
            item(id).await;
        }
        let _ = invalidate_item(0).await;
        assert!(Instant::now() < deadline, "the lane never tried its proof");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Readers and writers at once: every invalidation Ok, by the script; no read older than
    // an invalidation that returned Ok before it started.
    let settled: Arc<[AtomicU64; KEYS as usize]> =
        Arc::new([const { AtomicU64::new(0) }; KEYS as usize]);
    let scripts_before = server.command_stats("evalsha").0;
    let mut tasks = Vec::new();
    for r in 0..3u64 {
        let settled = settled.clone();
        tasks.push(tokio::spawn(async move {
            let mut wrong = 0;
            for i in 0..600u64 {
                let id = (i + r) % KEYS;
                let floor = settled[id as usize].load(SeqCst);
                let got = item(id).await;
                if got / 1_000_000 != id || got % 1_000_000 < floor {
                    wrong += 1;
                }
            }
            wrong
        }));
    }
    let mut writes = 0;
    for i in 0..200u64 {
        let id = i % KEYS;
        let v = VERSIONS[id as usize].fetch_add(1, SeqCst) + 1;
        invalidate_item(id)
            .await
            .expect("an invalidation returns Ok");
        settled[id as usize].fetch_max(v, SeqCst);
        writes += 1;
    }
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            0,
            "no read saw a superseded or foreign value"
        );
    }
    // (Reads whose body heard of a write store with a script too.)
    assert!(
        server.command_stats("evalsha").0 - scripts_before >= writes,
        "each invalidation ran the script"
    );
    assert_eq!(
        server.command_stats("client|reply"),
        (0, 1),
        "one refused proof, never a lane request"
    );
}
