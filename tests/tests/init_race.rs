//! `init` called from several threads at once: one runtime is installed, the others' calls
//! return `AlreadyInitialized` (their Redis threads end), and the bus subscriber that starts
//! is the installed runtime's.
//! Were it a losing runtime's, a dropped subscription would be reported to that runtime, and
//! the installed one would not replace its connections (a restart may have gone unnoticed
//! while nobody listened, docs/PROTOCOL.md §8.2).

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use cache_runtime::{cached, Config, InitError};
use cache_tests::{wait_until, RedisServer};

const RACERS: usize = 8;
const WITHIN: Duration = Duration::from_secs(10);

/// A cache with a local tier: the process subscribes.
#[cached(tier = "local+redis", ttl = 60, key = "race:<id>")]
async fn value(id: u64) -> u64 {
    id
}

/// The ids of the server's clients with client tracking on (the runtime's tracked
/// connections).
fn tracked_clients(server: &RedisServer) -> BTreeSet<u64> {
    let list: String = server.cmd(&["CLIENT", "LIST"]).expect("CLIENT LIST");
    list.lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('t'))
        })
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect()
}

/// This process's threads named `cache-runtime-redis` (`comm` keeps 15 bytes of a name).
fn redis_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "cache-runtime-r")
        .count()
}

#[test]
fn racing_inits_install_one_runtime_and_its_own_subscriber() {
    let server = RedisServer::start();
    let barrier = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let (barrier, url) = (barrier.clone(), server.url());
            std::thread::spawn(move || {
                barrier.wait();
                cache_runtime::init(Config::builder().redis_url(url).key_prefix("race").build())
            })
        })
        .collect();
    let results: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(()) | Err(InitError::AlreadyInitialized))));
    // Each racer built a runtime with a Redis thread; the losers' end with their runtimes.
    wait_until(WITHIN, "one Redis thread left", || redis_threads() == 1);

    let rt = cache_tests::current_thread_runtime();
    assert_eq!(rt.block_on(value(1)), 1);
    wait_until(WITHIN, "the bus to subscribe", || {
        cache_runtime::bus_status().connected
    });
    let before = tracked_clients(&server);
    assert_eq!(before.len(), 1, "the runtime's tracked connection");

    // The subscription dropped: the installed runtime hears of it and replaces its
    // connections (a new tracked one, for the misses that follow).
    assert!(server.kill_pubsub_clients() >= 1);
    let mut id = 2;
    wait_until(
        WITHIN,
        "the runtime to replace its tracked connection",
        || {
            id += 1;
            assert_eq!(rt.block_on(value(id)), id);
            let now = tracked_clients(&server);
            !now.is_empty() && now.is_disjoint(&before)
        },
    );
}
