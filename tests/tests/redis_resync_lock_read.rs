//! A lock read sent after a resync replaced the data set, before the client took the null
//! invalidation push (docs/PROTOCOL.md §13 F10), made deterministic: a proxy holds what the
//! server sends on every connection that carried the push (the tracked ones), while the
//! others answer. Redis is rolled back to an older copy of its data set (a full resync from a
//! detached replica, then a promotion), and three callers of `lock = true` caches read a key
//! invalidated before the rollback: two through the Redis thread (a blocking caller, whose
//! lock reads never open its thread's own connection, and an async caller outside Tokio)
//! and an async caller on a Tokio runtime (on the main connections, from its runtime). No
//! read script may be answered with the restored value: each goes on a tracked connection,
//! behind the push, and its reply is used only if no push came first. On the data
//! connection (the Redis-thread callers' before this test) it answers at once with the older
//! copy's version 1.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::cached;
use cache_tests::proxy::Proxy;
use cache_tests::{eventually_blocking, RedisServer};

const WITHIN: Duration = Duration::from_secs(20);

/// The RESP3 null invalidation push (`>2`, `invalidate`, null): a flush, or a resync that
/// emptied the data set.
const NULL_PUSH: &[u8] = b"$10\r\ninvalidate\r\n_\r\n";

/// The source of truth's version.
static SOURCE: AtomicU64 = AtomicU64::new(1);

#[cached(tier = "redis", ttl = 300, key = "rlr-b:<id>", lock = true)]
fn blocking_locked(id: u32) -> u64 {
    let _ = id;
    SOURCE.load(SeqCst) + 1000
}

#[cached(tier = "redis", ttl = 300, key = "rlr-a:<id>", lock = true)]
async fn async_locked(id: u32) -> u64 {
    let _ = id;
    SOURCE.load(SeqCst) + 2000
}

#[cached(tier = "redis", ttl = 300, key = "rlr-t:<id>", lock = true)]
async fn tokio_locked(id: u32) -> u64 {
    let _ = id;
    SOURCE.load(SeqCst) + 3000
}

/// `tokio_locked(id)` on a new Tokio runtime: its first calls use the main connections
/// (the runtime's own open after a few calls), from the caller's runtime.
fn on_tokio(id: u32) -> u64 {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(tokio_locked(id))
}

/// The three callers' reads of key `id`, each on a thread of its own (a new thread: no own
/// connection).
fn all_of(id: u32) -> (u64, u64, u64) {
    let b = std::thread::spawn(move || blocking_locked(id));
    let a = std::thread::spawn(move || cache_tests::poll_here(async_locked(id)));
    let t = std::thread::spawn(move || on_tokio(id));
    let join = |h: std::thread::JoinHandle<u64>| h.join().expect("caller");
    (join(b), join(a), join(t))
}

fn all() -> (u64, u64, u64) {
    all_of(0)
}

#[test]
fn a_lock_read_behind_an_untaken_null_push_never_returns_the_rolled_back_value() {
    let node = RedisServer::start();
    let older = RedisServer::start();
    let proxy = Proxy::start(node.port());
    cache_runtime::init(
        cache_runtime::Config::builder()
            .redis_url(proxy.url())
            .key_prefix("rlr")
            // A held read waits for the test to see it executed: not for the default 100 ms.
            .redis_timeout(Duration::from_secs(10))
            .build(),
    )
    .expect("init");
    // Version 1 in Redis, and a copy of it on `older` (a replica detached since).
    assert_eq!(all(), (1001, 2001, 3001));
    assert_eq!(all(), (1001, 2001, 3001), "served from Redis");
    older.replicate_from(&node);
    older.promote();
    // Version 2: invalidated (acknowledged) and read again, so Redis holds it.
    SOURCE.store(2, SeqCst);
    invalidate_blocking_locked(0).expect("invalidate");
    cache_tests::poll_here(invalidate_async_locked(0)).expect("invalidate");
    cache_tests::poll_here(invalidate_tokio_locked(0)).expect("invalidate");
    assert_eq!(all(), (1002, 2002, 3002));
    assert_eq!(all(), (1002, 2002, 3002), "served from Redis");
    // Misses of other keys: a `lock = true` cache whose recent reads mostly missed reads
    // with the lock script first (not a plain read first, as a warm one does).
    for id in 1..=6 {
        assert_eq!(all_of(id), (1002, 2002, 3002));
    }

    // The rollback: every tracked connection's null push held in the proxy.
    let tracked = node.tracking_clients();
    assert!(tracked >= 1, "the runtime tracks keys on a single node");
    proxy.hold_replies_after(NULL_PUSH);
    node.replicate_from(&older);
    eventually_blocking(WITHIN, "every tracked connection's push held", || {
        proxy.connections_held() >= tracked as u64
    });
    node.promote();

    // The reads sent while the pushes wait: each must reach the server (counted there)
    // before anything is released, so a reply on a connection that is not held would
    // already be back.
    let (scripts, _) = node.command_stats("evalsha");
    let callers = std::thread::spawn(all);
    eventually_blocking(WITHIN, "the three read scripts executed", || {
        node.command_stats("evalsha").0 >= scripts + 3
    });
    proxy.release_replies();
    assert_eq!(
        callers.join().expect("callers"),
        (1002, 2002, 3002),
        "a lock read after the rollback returned the restored version 1"
    );
    // And from then on, version 2 again (the restored copy refused for good).
    assert_eq!(all(), (1002, 2002, 3002));
}
