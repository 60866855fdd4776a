//! The invalidation lane (docs/PROTOCOL.md §7.4): an async caller's invalidation runs as plain
//! commands under `CLIENT REPLY SKIP` on a connection of its own, and every way that can go
//! wrong falls back to the invalidate script without losing the invalidation or handing a
//! reply to the wrong request. Counted from the server's side (`INFO commandstats`).
//!
//! One test, in phases, on one server: the lane is taken (no script); under `noeviction`
//! OOM (the lane's `SET` refused: the script does it); its connection killed (the script
//! does it, the lane comes back); `+client|reply` revoked while readers and writers run on
//! every connection (no wrong value, no failed invalidation, the lane turns itself off).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{cached, Config};
use cache_tests::RedisServer;

const KEYS: u64 = 16;

/// The source of truth: each key's version.
static VERSIONS: [AtomicU64; KEYS as usize] = [const { AtomicU64::new(0) }; KEYS as usize];
static BODY_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(tier = "redis", ttl = 60, key = "lane:<id>", tags = ["k:<id>"])]
async fn item(id: u64) -> u64 {
    BODY_RUNS.fetch_add(1, SeqCst);
    id * 1_000_000 + VERSIONS[id as usize].load(SeqCst)
}

/// A cache with a local tier: the process subscribes, so its own messages echo back to it,
/// which is what the lane's reply order is for (a process that does not subscribe sends
/// plain pipelines, docs/PROTOCOL.md §7.4).
#[cached(tier = "local+redis", ttl = 60, key = "lane-copy:<id>")]
async fn copy(id: u64) -> u64 {
    id
}

/// The README's ACL line with `+client|reply` (the lane's permission).
const ACL: &str = "cache on >secret resetkeys resetchannels ~{cr:* &cr:bus:* -@all \
    +ping +auth +hello +select +get +mget +set +del +pexpire +pexpireat +pttl +evalsha \
    +script|load +publish +subscribe +unsubscribe +time +role +wait +client|tracking \
    +client|caching +client|reply +info";

/// Writes a new version of `id` and invalidates it (the key, or its tag `k:<id>` for every
/// third version); the next read must see that version.
async fn write(id: u64) -> u64 {
    let v = VERSIONS[id as usize].fetch_add(1, SeqCst) + 1;
    let done = match v % 3 {
        0 => cache_runtime::invalidate_tag(&format!("k:{id}")).await,
        _ => invalidate_item(id).await,
    };
    done.expect("an invalidation returns Ok");
    v
}

async fn assert_current(id: u64) {
    let want = id * 1_000_000 + VERSIONS[id as usize].load(SeqCst);
    assert_eq!(item(id).await, want, "key {id} after its invalidation");
}

/// Invalidations until the lane answers them (its first use opens it in the background).
async fn lane_up(server: &RedisServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Enough calls for the runtime to get connections of its own (the lane is theirs).
        for id in 0..KEYS {
            item(id).await;
        }
        let before = server.command_stats("client|reply").0;
        // `Err` while the runtime reconnects (kept and retried).
        VERSIONS[0].fetch_add(1, SeqCst);
        let _ = invalidate_item(0).await;
        if server.command_stats("client|reply").0 > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the invalidation lane never came up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_take_the_lane_and_every_fault_of_it_falls_back_to_the_script() {
    let server = Arc::new(RedisServer::start());
    server.acl_setuser(ACL);
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url_for_user("cache", "secret"))
            .breaker_threshold(10_000)
            .build(),
    )
    .unwrap();
    copy_cache();
    assert!(
        cache_runtime::bus_status().wanted,
        "a local tier subscribes"
    );

    // 1. The lane is taken: one `CLIENT REPLY SKIP` per invalidation (of a key or a tag),
    // no script.
    lane_up(&server).await;
    for id in 0..KEYS {
        item(id).await;
    }
    let (replies_before, _) = server.command_stats("client|reply");
    let (scripts_before, _) = server.command_stats("evalsha");
    let runs_before = BODY_RUNS.load(SeqCst);
    // Three versions of each key: two key invalidations and one tag invalidation each.
    for _ in 0..3 {
        for id in 0..KEYS {
            write(id).await;
            assert_current(id).await;
        }
    }
    assert_eq!(
        server.command_stats("client|reply").0 - replies_before,
        3 * KEYS,
        "every invalidation on the lane"
    );
    assert_eq!(
        server.command_stats("evalsha").0,
        scripts_before,
        "no invalidate script while the lane answers"
    );
    assert_eq!(
        BODY_RUNS.load(SeqCst) - runs_before,
        3 * KEYS,
        "each invalidation made the next read run the body"
    );

    // 2. `noeviction` OOM: the lane's `DEL` runs, its `SET` is refused: the script runs it
    // again (a script that wrote first is not refused later) and the
    // invalidation is Ok and effective; the lane stays up.
    for id in 0..KEYS {
        item(id).await;
    }
    server.config_set("maxmemory-policy", "noeviction");
    server.config_set("maxmemory", "1");
    let scripts_before = server.command_stats("evalsha").0;
    write(3).await;
    server.config_set("maxmemory", "0");
    assert!(
        server.command_stats("evalsha").0 > scripts_before,
        "the refused SET sent the invalidation to the script"
    );
    assert_current(3).await;
    let (replies_before, _) = server.command_stats("client|reply");
    write(4).await;
    assert_current(4).await;
    assert_eq!(
        server.command_stats("client|reply").0 - replies_before,
        1,
        "the lane is still in step after an OOM refusal"
    );

    // 3. Every data connection killed (the lane's included): the invalidation returns Ok
    // again once the runtime has reconnected (an `Err` meanwhile: kept and retried), and
    // the lane comes back.
    server.kill_normal_clients();
    VERSIONS[5].fetch_add(1, SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while invalidate_item(5).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the invalidation never returned Ok again"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_current(5).await;
    lane_up(&server).await;

    // 3b. The server hangs (SIGSTOP) under an invalidation on the lane: `Err` (no answer
    // within the timeout), kept and retried once the server answers again; the lane, closed
    // with its connection, comes back.
    for id in 0..KEYS {
        item(id).await;
    }
    server.pause();
    VERSIONS[6].fetch_add(1, SeqCst);
    let hung = invalidate_item(6).await;
    server.resume();
    assert!(
        hung.is_err(),
        "a hung server's invalidation is not Ok: {hung:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache_runtime::redis_status().pending_writes > 0 {
        assert!(
            Instant::now() < deadline,
            "the kept invalidation was never retried"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_current(6).await;
    lane_up(&server).await;

    // 4. `+client|reply` revoked while readers and writers run: no read ever sees a version
    // older than one whose invalidation returned Ok before the read started, every
    // invalidation returns Ok, and the lane turns itself off (the script takes over).
    let settled: Arc<[AtomicU64; KEYS as usize]> =
        Arc::new([const { AtomicU64::new(0) }; KEYS as usize]);
    for (id, s) in settled.iter().enumerate() {
        s.store(VERSIONS[id].load(SeqCst), SeqCst);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..2u64 {
        let (settled, stop) = (settled.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(SeqCst) {
                let id = i % KEYS;
                let v = write(id).await;
                settled[id as usize].fetch_max(v, SeqCst);
                i += 2;
            }
        }));
    }
    let wrong = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    for r in 0..4u64 {
        let (settled, stop, wrong, reads) =
            (settled.clone(), stop.clone(), wrong.clone(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(SeqCst) {
                let id = i % KEYS;
                let floor = settled[id as usize].load(SeqCst);
                let got = item(id).await;
                if got / 1_000_000 != id || got % 1_000_000 < floor {
                    wrong.fetch_add(1, SeqCst);
                }
                reads.fetch_add(1, SeqCst);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.acl_setuser("cache -client|reply"))
        .await
        .unwrap();
    // Until the lane has met the refusal and the script has answered after it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let scripts_at_revoke = server.command_stats("evalsha").0;
    while server.command_stats("client|reply").1 == 0
        || server.command_stats("evalsha").0 < scripts_at_revoke + 20
    {
        assert!(Instant::now() < deadline, "the lane never met the refusal");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.expect("no reader or writer panicked");
    }
    assert!(reads.load(SeqCst) > 100, "the readers ran");
    assert_eq!(
        wrong.load(SeqCst),
        0,
        "no read saw a superseded or foreign value"
    );
    let replies_after_off = server.command_stats("client|reply");
    for id in 0..KEYS {
        write(id).await;
        assert_current(id).await;
    }
    assert_eq!(
        server.command_stats("client|reply"),
        replies_after_off,
        "a refused lane stays off"
    );
}
