//! A tag invalidation affects only what carries the tag: loads in flight for other keys (or
//! in untagged caches) still store their values, while a tagged load that read the old
//! version is not stored.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, invalidate_tag};
use cache_tests::{eventually, shared_redis_with_bus};
use tokio::sync::Semaphore;

static UNTAGGED_STARTED: AtomicUsize = AtomicUsize::new(0);
static UNTAGGED_GATE: Semaphore = Semaphore::const_new(0);

#[cached(tier = "local+redis", ttl = 60, key = "plain:<id>")]
async fn untagged(id: u64) -> u64 {
    UNTAGGED_STARTED.fetch_add(1, SeqCst);
    UNTAGGED_GATE.acquire().await.unwrap().forget();
    id
}

static TAGGED_STARTED: AtomicUsize = AtomicUsize::new(0);
static TAGGED_GATE: Semaphore = Semaphore::const_new(0);

#[cached(tier = "local+redis", ttl = 60, key = "item:<id>:<group>", tags = ["group:<group>"])]
async fn tagged(id: u64, group: u64) -> u64 {
    TAGGED_STARTED.fetch_add(1, SeqCst);
    TAGGED_GATE.acquire().await.unwrap().forget();
    id * 100 + group
}

#[tokio::test]
async fn a_tag_invalidation_refuses_only_the_loads_that_carry_the_tag() {
    shared_redis_with_bus().await;
    let plain = tokio::spawn(untagged(1));
    let same_tag = tokio::spawn(tagged(1, 7));
    let other_tag = tokio::spawn(tagged(2, 8));
    eventually(Duration::from_secs(5), "every body to start", || {
        UNTAGGED_STARTED.load(SeqCst) == 1 && TAGGED_STARTED.load(SeqCst) == 2
    })
    .await;

    // Every body read its value before this invalidation.
    invalidate_tag("group:7").await.unwrap();
    UNTAGGED_GATE.add_permits(1);
    TAGGED_GATE.add_permits(2);
    assert_eq!(plain.await.unwrap(), 1);
    assert_eq!(same_tag.await.unwrap(), 107);
    assert_eq!(other_tag.await.unwrap(), 208);

    assert_eq!(
        untagged_cache().peek_local("plain:1"),
        Some(1),
        "untagged caches are unaffected"
    );
    assert_eq!(
        tagged_cache().peek_local("item:2:8"),
        Some(208),
        "other tags are unaffected"
    );
    assert_eq!(
        tagged_cache().peek_local("item:1:7"),
        None,
        "a value loaded before its tag was invalidated is not stored"
    );
    assert_eq!(tagged_cache().stats().superseded, 1);
}
