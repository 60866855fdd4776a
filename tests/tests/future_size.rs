//! The future of a `#[cached]` `async fn` with a local tier stays small whatever its body
//! holds: a hit never builds the body's future, and the miss path (the flight, Redis, the
//! body, the store) is boxed on a local miss. Without that, every call, hit or not, moved
//! several kilobytes of state (the miss path's, about 5 KB in release, plus the body's) into
//! its caller's future, and every caller awaiting it grew by as much. (A `tier = "redis"`
//! cache keeps its miss path inline: every call takes it, and a box would be an allocation
//! per call.)

use std::mem::size_of_val;

use cache_runtime::Source;

/// What a generated future may weigh: the key's stack buffer, the arguments, the box.
const SMALL: usize = 1024;

/// A body whose own future is large: 16 KB held across an await.
async fn heavy_body(id: u64) -> u64 {
    let buf = [id as u8; 16 * 1024];
    tokio::task::yield_now().await;
    std::hint::black_box(&buf)
        .iter()
        .map(|&b| u64::from(b))
        .sum()
}

#[cache_runtime::cached(tier = "local", ttl = 60, key = "fs:local:<id>")]
async fn local_only(id: u64) -> u64 {
    heavy_body(id).await
}

#[cache_runtime::cached(tier = "local+redis", ttl = 60, key = "fs:two:<id>")]
async fn two_tier(id: u64) -> u64 {
    heavy_body(id).await
}

#[cache_runtime::cached(tier = "local+redis", ttl = 60, key = "fs:result:<id>")]
async fn fallible(id: u64) -> Result<u64, String> {
    Ok(heavy_body(id).await)
}

/// `stale` with `soft_timeout`: the body may outlive the call (its future is made only when
/// it runs, and then owned by the miss path or the background task).
#[cache_runtime::cached(
    tier = "local",
    ttl = 60,
    key = "fs:detached:<id>",
    stale = "10s",
    soft_timeout = "50ms"
)]
async fn detached(id: u64) -> u64 {
    heavy_body(id).await
}

struct Repo;

impl Repo {
    #[cache_runtime::cached(tier = "local+redis", ttl = 60, key = "fs:method:<id>", skip(self))]
    async fn method(&self, id: u64) -> u64 {
        heavy_body(id).await
    }
}

#[test]
fn generated_futures_stay_small_whatever_the_body_holds() {
    // The body alone is over 16 KB: were it (or the miss path) held inline, so would be ours.
    assert!(size_of_val(&heavy_body(1)) > 16 * 1024);
    let sizes = [
        ("local", size_of_val(&local_only(1))),
        ("local+redis", size_of_val(&two_tier(1))),
        ("local+redis, Result", size_of_val(&fallible(1))),
        ("method", size_of_val(&Repo.method(1))),
        ("local+redis `_entry`", size_of_val(&two_tier_entry(1))),
        ("detached", size_of_val(&detached(1))),
        ("detached `_entry`", size_of_val(&detached_entry(1))),
    ];
    for (what, size) in sizes {
        assert!(
            size <= SMALL,
            "the future of a `{what}` cached async fn is {size} bytes (at most {SMALL} expected)"
        );
    }
}

#[test]
fn a_small_future_still_runs_the_body_on_a_miss_and_serves_the_hit() {
    cache_runtime::init(cache_runtime::Config::builder().without_redis().build())
        .expect("the test configures the runtime first");
    let rt = cache_tests::current_thread_runtime();
    rt.block_on(async {
        assert_eq!(local_only(3).await, 3 * 16 * 1024);
        assert_eq!(local_only(3).await, 3 * 16 * 1024);
        assert_eq!(Repo.method(2).await, 2 * 16 * 1024);
        assert_eq!(detached(4).await, 4 * 16 * 1024);
        assert_eq!(detached(4).await, 4 * 16 * 1024);
        let entry = two_tier_entry(5).await;
        assert_eq!(
            (*entry.value(), entry.source()),
            (5 * 16 * 1024, Source::Body)
        );
        let entry = two_tier_entry(5).await;
        assert_eq!(
            (*entry.value(), entry.source()),
            (5 * 16 * 1024, Source::Local)
        );
    });
    for stats in [local_only_cache().stats(), detached_cache().stats()] {
        assert_eq!((stats.body_calls, stats.local_hits), (1, 1));
    }
}
