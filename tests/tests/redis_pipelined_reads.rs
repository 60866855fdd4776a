//! Auto-pipelined reads (docs/PROTOCOL.md §7.1, `redis_tier/batch.rs`): when many hits of
//! one runtime are in flight at once, their `GET`s go to Redis in one pipeline. Each caller
//! must still get its own key's value, and a ticket deleted behind the process's back must
//! still be seen by every read sent after the delete.
//!
//! 64 tasks on a current-thread runtime: the runtime's connections answer nothing before
//! every ready task has sent its read, so from the fifth read on, reads are pipelined
//! (checked through `redis_status().pipelined_reads`, not assumed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cache_runtime::cached;
use cache_tests::{shared_redis, wait_until};

const KEYS: u64 = 256;
const TASKS: u64 = 64;
const WITHIN: Duration = Duration::from_secs(30);
/// The key whose ticket is deleted behind the process's back; read by task 0 alone, so that
/// no read of it joins a flight that started before the delete.
const CHANGED: u64 = 17;

/// The source's version of `CHANGED` (every other key stays at version 1).
static VERSION: AtomicU64 = AtomicU64::new(1);
static BODY_CALLS: AtomicU64 = AtomicU64::new(0);

/// A distinct value per key and version, so that a reply handed to the wrong caller shows.
fn expected(id: u64, version: u64) -> u64 {
    id * 7_919 + version * 1_000_003
}

#[cached(tier = "redis", ttl = 600, key = "pipe:<id>")]
async fn value(id: u64) -> u64 {
    BODY_CALLS.fetch_add(1, Ordering::SeqCst);
    let version = if id == CHANGED {
        VERSION.load(Ordering::SeqCst)
    } else {
        1
    };
    expected(id, version)
}

fn pipelined() -> u64 {
    cache_runtime::redis_status().pipelined_reads
}

/// One round of reads by 64 tasks, each over every key in its own order (`CHANGED` by task
/// 0 only); `check(id, deleted, value)` judges each result, `deleted` read before the call.
async fn round(check: fn(u64, bool, u64)) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            tokio::spawn(async move {
                // Keys of its own first (64 reads in flight, no flight joined), then the
                // others' in its own order.
                for i in 0..KEYS {
                    let id = (i + t * (KEYS / TASKS)) % KEYS;
                    if id == CHANGED && t != 0 {
                        continue;
                    }
                    let deleted = DELETED.load(Ordering::SeqCst);
                    check(id, deleted, value(id).await);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a reading task panicked");
    }
}

static DELETED: AtomicBool = AtomicBool::new(false);
static READS_AFTER_DELETE: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

#[test]
fn concurrent_hits_share_pipelines_and_still_see_a_deleted_ticket() {
    // The harness server (key prefix `t`).
    let server = shared_redis();
    let rt = cache_tests::current_thread_runtime();
    // Fill Redis and read every key a few times: the runtime gets its own connections and
    // keeps every entry's ticket (a hit is then `GET v` alone, the read that is pipelined).
    rt.block_on(async {
        for _ in 0..4 {
            for id in 0..KEYS {
                assert_eq!(value(id).await, expected(id, 1));
            }
        }
    });
    assert_eq!(BODY_CALLS.load(Ordering::SeqCst), KEYS, "one body per key");

    // Every caller gets its own key's value, from Redis, most of the reads pipelined.
    let before = pipelined();
    let pipelines_before = cache_runtime::redis_status().read_pipelines;
    let hits = value_cache().stats().redis_hits;
    rt.block_on(round(|id, _, v| assert_eq!(v, expected(id, 1), "id {id}")));
    let reads = TASKS * KEYS - (TASKS - 1);
    assert_eq!(
        BODY_CALLS.load(Ordering::SeqCst),
        KEYS,
        "every read was a hit"
    );
    assert_eq!(value_cache().stats().redis_hits - hits, reads);
    let batched = pipelined() - before;
    assert!(
        batched * 2 >= reads,
        "most of the {reads} concurrent reads were pipelined: {batched}"
    );
    // 64 reads ready at once go in batches of at most 32 (`batch.rs`, `BATCH_MAX`), each
    // written before the next is taken, not in one pipeline of 64.
    let pipelines = cache_runtime::redis_status().read_pipelines - pipelines_before;
    assert!(
        batched <= 32 * pipelines,
        "{batched} reads in {pipelines} pipelines: more than 32 per pipeline"
    );

    // Rounds go on while the source changes and `CHANGED`'s ticket is deleted behind the
    // process's back (no bus message): a read of it sent after the delete must not return
    // the old value, although the other keys' reads keep riding in the same pipelines.
    let reader = std::thread::spawn(move || {
        rt.block_on(async {
            while !STOP.load(Ordering::SeqCst) {
                round(|id, deleted, v| {
                    if id != CHANGED {
                        assert_eq!(v, expected(id, 1), "id {id}");
                    } else if deleted {
                        // Set after the `DEL` returned: this read was sent after it ran.
                        assert_eq!(
                            v,
                            expected(id, 2),
                            "the old value after its ticket's delete"
                        );
                        READS_AFTER_DELETE.fetch_add(1, Ordering::SeqCst);
                    } else {
                        assert!(v == expected(id, 1) || v == expected(id, 2), "{v}");
                    }
                })
                .await;
            }
        })
    });
    wait_until(WITHIN, "reads pipelined while rounds go on", || {
        pipelined() > before + batched + 1_000
    });
    VERSION.store(2, Ordering::SeqCst);
    let ticket: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{t:*}}:t:pipe:{CHANGED}"))
        .query(&mut server.client())
        .unwrap();
    assert_eq!(ticket.len(), 1, "the entry's ticket key: {ticket:?}");
    assert_eq!(server.cmd::<u64>(&["DEL", &ticket[0]]).unwrap(), 1);
    let pipelined_at_delete = pipelined();
    DELETED.store(true, Ordering::SeqCst);
    wait_until(WITHIN, "reads of the changed key after the delete", || {
        READS_AFTER_DELETE.load(Ordering::SeqCst) >= 3 && pipelined() > pipelined_at_delete + 1_000
    });
    STOP.store(true, Ordering::SeqCst);
    reader.join().expect("a read was wrong");
}
