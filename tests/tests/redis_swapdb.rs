//! The data set swapped under live connections (`SWAPDB`, docs/PROTOCOL.md §7.6): Redis sends
//! no tracking invalidation for it, so a process keeps the scope tokens it read before
//! (client tracking) although the database it now reads holds none. Values stored after the
//! swap are stamped with those kept tokens. A tag invalidation, a cache clear or a global
//! clear then finds no token to delete; before, its `DEL` changed nothing, told no process
//! and the old value stayed current for its whole TTL. The invalidation now writes a fresh
//! token as well, a write Redis tracks whatever the database held, so every process that kept
//! the old token drops it.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use cache_runtime::cached;

const KEYS: usize = 4;

/// The source of truth: key `id`'s current version.
static SOURCE: [AtomicU64; KEYS] = [const { AtomicU64::new(1) }; KEYS];

#[cached(tier = "redis", ttl = 300, key = "swp:<id>", tags = ["swp:<id>"])]
async fn tagged(id: usize) -> u64 {
    SOURCE[id].load(SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_invalidations_hold_after_a_swapdb() {
    let server = cache_tests::own_redis("swp");
    // Read a few times: hits whose tokens and tickets are kept in the process, and the last
    // reads all found a ticket, so a miss does not claim one (nor the tag's token) in its
    // read (a claim would write the token and mask what is tested).
    for _ in 0..4 {
        for id in 0..KEYS {
            assert_eq!(tagged(id).await, 1);
        }
    }
    assert!(tagged_cache().stats().redis_hits >= KEYS as u64);

    // Database 1 is empty: after the swap no token exists where the process reads.
    server.cmd::<()>(&["SWAPDB", "0", "1"]).expect("SWAPDB 0 1");

    for round in 0..3 {
        for (step, how) in ["tag", "cache clear", "global clear"].iter().enumerate() {
            for (id, source) in SOURCE.iter().enumerate() {
                // Stored after the swap, stamped with the tokens kept from before it; read
                // again, so that it is served from Redis.
                let before = source.load(SeqCst);
                assert_eq!(tagged(id).await, before);
                assert_eq!(tagged(id).await, before);
            }
            for source in &SOURCE {
                source.fetch_add(1, SeqCst);
            }
            match step {
                0 => {
                    for id in 0..KEYS {
                        cache_runtime::invalidate_tag(&format!("swp:{id}"))
                            .await
                            .expect("invalidate_tag");
                    }
                }
                1 => tagged_cache().clear().await.expect("clear"),
                _ => cache_runtime::clear_all().await.expect("clear_all"),
            }
            for (id, source) in SOURCE.iter().enumerate() {
                assert_eq!(
                    tagged(id).await,
                    source.load(SeqCst),
                    "round {round}, key {id}: the value from before the {how} (acknowledged)"
                );
            }
        }
    }
    // The tokens written by the invalidations are the ones in force: values are served from
    // Redis again.
    let hits = tagged_cache().stats().redis_hits;
    assert_eq!(tagged(0).await, SOURCE[0].load(SeqCst));
    assert_eq!(tagged(0).await, SOURCE[0].load(SeqCst));
    assert!(
        tagged_cache().stats().redis_hits > hits,
        "no Redis hit after the swap"
    );
}
