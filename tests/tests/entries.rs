//! `<fn>_entry`: values with their validators (ETag, creation time), tags and source.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use cache_runtime::{cached, codec, Cache, OkOnly, Sharing, Source, Tier};
use cache_tests::{shared_redis, shared_redis_with_bus};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Card {
    id: u64,
    title: String,
}

fn card(id: u64, rev: u32) -> Card {
    Card {
        id,
        title: format!("card {id} rev {rev}"),
    }
}

static LOCAL_RUNS: AtomicUsize = AtomicUsize::new(0);
static LOCAL_REV: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "card:<id>", etag = true, tags = ["cards"])]
async fn local_card(id: u64) -> Result<Card, String> {
    LOCAL_RUNS.fetch_add(1, SeqCst);
    Ok(card(id, LOCAL_REV.load(SeqCst) as u32))
}

#[tokio::test]
async fn local_entries_keep_their_validators_until_the_value_changes() {
    // One runtime configuration per test binary: the harness Redis.
    shared_redis_with_bus().await;
    let first = local_card_entry(1).await.unwrap();
    assert_eq!(first.source(), Source::Body);
    let etag = first.etag().expect("etag = true gives an ETag");
    assert_eq!(Some(etag), codec::payload_etag(&card(1, 0)));
    assert_eq!(first.tags(), ["cards".to_string()]);

    let hit = local_card_entry(1).await.unwrap();
    assert_eq!(hit.source(), Source::Local);
    assert_eq!(hit.etag(), Some(etag));
    assert_eq!(hit.created(), first.created());
    assert_eq!(hit.value(), first.value());
    assert_eq!(LOCAL_RUNS.load(SeqCst), 1, "a hit runs no body");

    // The plain function shares the entry.
    assert_eq!(local_card(1).await.unwrap(), card(1, 0));
    assert_eq!(LOCAL_RUNS.load(SeqCst), 1);

    // A write gives a new value, hence a new tag.
    LOCAL_REV.store(1, SeqCst);
    invalidate_local_card(1).await.unwrap();
    let changed = local_card_entry(1).await.unwrap();
    assert_eq!(changed.source(), Source::Body);
    assert_ne!(changed.etag(), Some(etag));
    assert_eq!(changed.etag(), codec::payload_etag(&card(1, 1)));
}

#[cached(ttl = 60, key = "plain:<id>")]
fn no_etag(id: u64) -> u64 {
    id
}

#[test]
fn local_caches_without_etag_still_give_times() {
    // One runtime configuration per test binary: the harness Redis.
    shared_redis();
    let e = no_etag_entry(3);
    assert_eq!(*e.value(), 3);
    assert_eq!(
        e.etag(),
        None,
        "a local cache encodes nothing unless `etag = true`"
    );
    assert!(e.remaining_ttl() <= std::time::Duration::from_secs(60));
    assert!(e.remaining_ttl() > std::time::Duration::from_secs(50));
}

#[cached(ttl = 60, key = "maybe:<id>")]
fn maybe_card(id: u64) -> Option<Card> {
    (id < 10).then(|| card(id, 0))
}

#[test]
fn option_entries_wrap_only_some() {
    // One runtime configuration per test binary: the harness Redis.
    shared_redis();
    assert_eq!(
        maybe_card_entry(1).map(|e| e.into_value()),
        Some(card(1, 0))
    );
    assert!(maybe_card_entry(11).is_none());
}

#[cached(ttl = 60, key = "failing:<id>")]
async fn failing(id: u64) -> Result<Card, String> {
    Err(format!("no card {id}"))
}

#[tokio::test]
async fn errors_pass_through_entries() {
    // One runtime configuration per test binary: the harness Redis.
    shared_redis_with_bus().await;
    assert_eq!(failing_entry(2).await.unwrap_err(), "no card 2");
}

static REDIS_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "rcard:<id>")]
async fn redis_card(id: u64) -> Result<Card, String> {
    REDIS_RUNS.fetch_add(1, SeqCst);
    Ok(card(id, 0))
}

/// Another process's cache over `cache`'s Redis entries: a fresh local tier, same name, key
/// template and version, so values come from Redis with their writer's validators.
fn other_process(cache: &Cache<Card>, key_space: &str) -> Cache<Card> {
    Cache::builder(cache.name())
        .key_space(key_space)
        .tier(Tier::LocalRedis)
        .ttl(std::time::Duration::from_secs(60))
        .build()
}

/// `cache`'s entry for `key`, which must be found without running the body.
async fn found_entry(cache: &Cache<Card>, key: &str) -> cache_runtime::Entry<Card> {
    cache
        .get_or_load_entry::<_, OkOnly>(
            key,
            async { Err::<Card, String>("must not run".into()) },
            &Sharing::none(),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn every_process_sees_the_same_etag_and_creation_time() {
    shared_redis_with_bus().await;
    let written = redis_card_entry(7).await.unwrap();
    assert_eq!(written.source(), Source::Body);
    let etag = written.etag().expect("a Redis tier always gives an ETag");
    assert_eq!(Some(etag), codec::payload_etag(&card(7, 0)));

    // Another process's cache over the same Redis entry.
    let other = other_process(redis_card_cache(), "rcard:<id>");
    let key = redis_card_cache().redis_key("rcard:7").unwrap();
    assert_eq!(other.redis_key("rcard:7").unwrap(), key);
    let promoted = found_entry(&other, "rcard:7").await;
    assert_eq!(promoted.source(), Source::Redis);
    assert_eq!(promoted.etag(), Some(etag));
    assert_eq!(promoted.created(), written.created());
    assert_eq!(promoted.expires(), written.expires());

    // And from its local tier afterwards, still without hashing anew.
    let local = found_entry(&other, "rcard:7").await;
    assert_eq!(local.source(), Source::Local);
    assert_eq!(local.etag(), Some(etag));
    assert_eq!(REDIS_RUNS.load(SeqCst), 1);

    // populate: the new value's tag everywhere.
    populate_redis_card(7, card(7, 5)).await.unwrap();
    let after = redis_card_entry(7).await.unwrap();
    assert_eq!(after.etag(), codec::payload_etag(&card(7, 5)));
    assert_eq!(after.source(), Source::Local);
}

static LAZY_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "lazy_card:<id>")]
async fn lazy_card(id: u64) -> Result<Card, String> {
    LAZY_RUNS.fetch_add(1, SeqCst);
    Ok(card(id, 0))
}

/// Until a cache's first entry call, reads and stores skip the ETag's hash; an entry call
/// that then meets a value loaded without one (its local copy, a Redis copy another cache
/// read first) still gets the tag every process computes for that value.
#[tokio::test]
async fn values_loaded_before_the_first_entry_call_still_get_their_etag() {
    shared_redis_with_bus().await;
    let want = codec::payload_etag(&card(9, 0));
    assert!(want.is_some());

    // Stored by a plain call (body, Redis, local copy), then asked for as an entry.
    assert_eq!(lazy_card(9).await.unwrap(), card(9, 0));
    let local = lazy_card_entry(9).await.unwrap();
    assert_eq!(local.source(), Source::Local);
    assert_eq!(local.etag(), want);

    // Another process: its plain call promotes the Redis copy, then an entry call finds
    // the local copy without a tag.
    let other = other_process(lazy_card_cache(), "lazy_card:<id>");
    let never = async { Err::<Card, String>("must not run".into()) };
    let plain = other
        .get_or_load::<_, OkOnly>("lazy_card:9", never, &Sharing::none())
        .await;
    assert_eq!(plain.unwrap(), card(9, 0));
    let promoted = found_entry(&other, "lazy_card:9").await;
    assert_eq!(promoted.source(), Source::Local);
    assert_eq!(promoted.etag(), want);

    // Once entries are wanted, a Redis read carries the tag from the envelope itself.
    other.clear_local();
    let reread = found_entry(&other, "lazy_card:9").await;
    assert_eq!(reread.source(), Source::Redis);
    assert_eq!(reread.etag(), want);
    assert_eq!(LAZY_RUNS.load(SeqCst), 1);
}

/// Observe and bypass modes neither serve nor store: their entries carry no ETag, as before
/// ETags became lazy; back in normal mode the same call gets its tag.
#[tokio::test]
async fn bypassed_entries_carry_no_etag() {
    shared_redis_with_bus().await;
    let cache: Cache<Card> = Cache::builder("entries::bypassed").etag().build();
    let load = || async { Ok::<Card, String>(card(3, 0)) };
    cache.set_mode(cache_runtime::Mode::Bypass);
    let bypassed = cache
        .get_or_load_entry::<_, OkOnly>("b:3", load(), &Sharing::none())
        .await
        .unwrap();
    assert_eq!(bypassed.source(), Source::Body);
    assert_eq!(bypassed.etag(), None);
    cache.set_mode(cache_runtime::Mode::Normal);
    let normal = cache
        .get_or_load_entry::<_, OkOnly>("b:3", load(), &Sharing::none())
        .await
        .unwrap();
    assert_eq!(normal.etag(), codec::payload_etag(&card(3, 0)));
}
