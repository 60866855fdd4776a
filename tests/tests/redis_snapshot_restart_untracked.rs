//! A restart from a snapshot (docs/PROTOCOL.md §8.2) seen by a process without client
//! tracking (its ACL user lacks `+client|tracking`: README.md's ACL before issue 12's fourth
//! round). Its reads go over the data connection, which redis-rs reconnects by itself to the
//! restarted server without an error: nothing on the read path sees the restart. The bus's
//! subscription does (the server's socket closes as it dies, before it can be restarted): the
//! connections are reopened, and the server's incarnation checked, before the next read. No
//! value invalidated before the crash is served after the restart.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::{cached, Config};
use cache_tests::{eventually, RedisOptions, RedisServer};

/// How long the bus may take to notice a subscription or its loss.
const WITHIN: Duration = Duration::from_secs(30);

const KEYS: usize = 16;

/// The documented ACL (README.md) without `client|tracking` and `client|caching`.
const ACL_UNTRACKED: &str = "cache on >secret resetkeys resetchannels ~{cr:* &cr:bus:* -@all \
     +ping +auth +hello +select +get +mget +set +del +pexpire +pexpireat +pttl +evalsha \
     +script|load +publish +subscribe +unsubscribe +time +role +wait +client|reply +info";

/// The source of truth: key `id`'s current version.
static SOURCE: [AtomicU64; KEYS] = [const { AtomicU64::new(1) }; KEYS];

#[cached(tier = "redis", ttl = 300, key = "snap:<id>")]
async fn remote(id: usize) -> u64 {
    SOURCE[id].load(SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untracked_reader_is_not_served_values_restored_from_a_snapshot() {
    // Defined at start, so the restarted server knows the user too.
    let server = RedisServer::start_with_options(RedisOptions::new().user(ACL_UNTRACKED));
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url_for_user("cache", "secret"))
            .build(),
    )
    .unwrap();
    for id in 0..KEYS {
        assert_eq!(remote(id).await, 1);
    }
    // Its only cache is Redis-only, but tracking was refused: only the subscription would
    // notice a restart, so the process subscribes (docs/PROTOCOL.md §5.2).
    eventually(WITHIN, "the bus to subscribe", || {
        cache_runtime::bus_status().connected
    })
    .await;
    assert!(cache_runtime::bus_status().wanted);
    // Untracked: hits read on the data connection (checked, or the test would prove
    // nothing: with tracking, the tracked connection's loss alone is enough).
    let tracking: String = server.cmd(&["CLIENT", "LIST"]).expect("CLIENT LIST");
    assert!(
        !tracking.lines().any(|l| l.contains("flags=t")),
        "no connection of the runtime has client tracking on: {tracking}"
    );
    server.save_snapshot();
    for (id, source) in SOURCE.iter().enumerate() {
        source.store(2, SeqCst);
        invalidate_remote(id).await.expect("invalidate");
        if id % 2 == 0 {
            assert_eq!(remote(id).await, 2);
        }
    }

    // A crash: the bus hears the socket close (as it would long before a supervisor has
    // restarted the server), then the restart from the snapshot.
    server.kill();
    eventually(WITHIN, "the bus to notice the crash", || {
        !cache_runtime::bus_status().connected
    })
    .await;
    server.restart_from_snapshot();
    let (value_key, _, _) = cache_runtime::key::redis_keys(
        "cr",
        remote_cache()
            .key_schema()
            .expect("a cache with a Redis tier"),
        "snap:1",
    );
    let restored: Option<Vec<u8>> = server.cmd(&["GET", &value_key]).expect("GET");
    assert!(
        restored.is_some(),
        "the snapshot's values are back in Redis"
    );

    for round in 0..20 {
        for id in 0..KEYS {
            assert_eq!(
                remote(id).await,
                2,
                "key {id}, round {round}: a restored value"
            );
        }
    }
    let hits = remote_cache().stats().redis_hits;
    let deadline = Instant::now() + Duration::from_secs(10);
    while remote_cache().stats().redis_hits == hits {
        assert!(Instant::now() < deadline, "no Redis hit after the restart");
        assert_eq!(remote(0).await, 2);
    }
}
