//! Nothing configured and no `REDIS_URL`: the program still works, on the local tier.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use cache_runtime::cached;

static REDIS_RUNS: AtomicUsize = AtomicUsize::new(0);
static TWO_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "redis", ttl = 60, key = "nr:<id>")]
async fn redis_only(id: u64) -> u64 {
    REDIS_RUNS.fetch_add(1, SeqCst);
    id
}

#[cached(tier = "local+redis", ttl = 60, key = "nr2:<id>")]
async fn two_tier(id: u64) -> u64 {
    TWO_RUNS.fetch_add(1, SeqCst);
    id
}

#[tokio::test]
async fn without_redis_url_caches_run_locally_or_not_at_all() {
    // The only test of this binary, so nothing has read the environment yet.
    std::env::remove_var("REDIS_URL");
    assert!(!cache_runtime::redis_enabled());
    assert_eq!(redis_only(1).await, 1);
    assert_eq!(redis_only(1).await, 1);
    assert_eq!(
        REDIS_RUNS.load(SeqCst),
        2,
        "redis alone: the body runs on every call"
    );
    assert_eq!(two_tier(1).await, 1);
    assert_eq!(two_tier(1).await, 1);
    assert_eq!(TWO_RUNS.load(SeqCst), 1, "local+redis keeps its local tier");
    assert!(!two_tier_cache().redis_active());
    assert_eq!(invalidate_two_tier(1).await, Ok(()));
    assert_eq!(lookup_two_tier(1).await, None);
    assert!(cache_runtime::health_check().await.is_err());
}
