//! The Redis tier against a real redis-server started by the harness.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::codec::{self, DecodeError};
use cache_runtime::{cached, Cache, CacheError};
use cache_tests::{
    shared_redis, shared_redis_with_bus, shared_redis_with_bus_blocking, trusted_throughout,
    trusted_throughout_blocking,
};
use redis::Commands;
use serde::{Deserialize, Serialize};

/// The Redis key of a value of `cache` (docs/PROTOCOL.md §2: bucket hash tag, wire version
/// 2, the cache's key schema).
fn vkey<V>(cache: &Cache<V>, logical: &str) -> String {
    cache.redis_key(logical).expect("a cache with a Redis tier")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
}

fn raw() -> redis::Connection {
    shared_redis().client()
}

fn profile(id: u64) -> Profile {
    Profile {
        id,
        name: format!("user {id}"),
    }
}

static REDIS_ONLY_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "redis", ttl = "1500ms", key = "user:profile:<id>")]
async fn redis_only(id: u64) -> Result<Profile, String> {
    REDIS_ONLY_RUNS.fetch_add(1, SeqCst);
    Ok(profile(id))
}

#[tokio::test]
async fn redis_tier_writes_with_px_and_reads_back() {
    shared_redis();
    assert!(redis_only_cache().redis_active());
    assert_eq!(redis_only(1).await.unwrap(), profile(1));
    // The documented key layout: prefix, wire version, schema version, template.
    let key = &vkey(redis_only_cache(), "user:profile:1");
    let bytes: Vec<u8> = raw().get(key).unwrap();
    let fp = codec::type_fingerprint::<Profile>(1);
    assert_eq!(
        codec::decode::<Profile>(&bytes, fp, 1 << 20).unwrap().value,
        profile(1)
    );
    let pttl: i64 = raw().pttl(key).unwrap();
    assert!(pttl > 0 && pttl <= 1500, "PX in milliseconds, got {pttl}");

    assert_eq!(redis_only(1).await.unwrap(), profile(1));
    assert_eq!(REDIS_ONLY_RUNS.load(SeqCst), 1);
    let s = redis_only_cache().stats();
    assert_eq!((s.redis_hits, s.local_hits, s.redis_errors), (1, 0, 0));
}

static SHORT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "redis", ttl = "250ms", key = "short:<id>")]
fn short_redis(id: u64) -> u64 {
    SHORT_RUNS.fetch_add(1, SeqCst);
    id
}

#[test]
fn sub_second_ttl_is_kept_in_milliseconds() {
    shared_redis();
    assert_eq!(short_redis(5), 5);
    let pttl: i64 = raw().pttl(vkey(short_redis_cache(), "short:5")).unwrap();
    assert!(pttl > 0 && pttl <= 250, "got {pttl}");
    assert_eq!(short_redis(5), 5);
    assert_eq!(SHORT_RUNS.load(SeqCst), 1);
    // Time passing is what is under test.
    std::thread::sleep(Duration::from_millis(300));
    let exists: bool = raw().exists(vkey(short_redis_cache(), "short:5")).unwrap();
    assert!(!exists);
    assert_eq!(short_redis(5), 5);
    assert_eq!(SHORT_RUNS.load(SeqCst), 2);
}

static TWO_TIER_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "two:<id>")]
async fn two_tier(id: u64) -> Profile {
    TWO_TIER_RUNS.fetch_add(1, SeqCst);
    profile(id)
}

/// Another function over the same keys and type: stands in for another process.
#[cached(tier = "local+redis", ttl = 60, key = "two:<id>")]
async fn two_tier_elsewhere(id: u64) -> Profile {
    let _ = id;
    unreachable!("served from Redis")
}

#[tokio::test]
async fn local_miss_falls_through_to_redis_and_promotes() {
    shared_redis_with_bus().await;
    assert_eq!(two_tier(1).await, profile(1));
    // A Redis hit, then a local one, with the bus trusted throughout (a local copy is served
    // only then: docs/PROTOCOL.md §5.4).
    let (redis_hits, local_hits, body_calls) =
        trusted_throughout("a Redis hit promoted to a local hit", || async {
            two_tier_elsewhere_cache().clear_local();
            let before = two_tier_elsewhere_cache().stats();
            assert_eq!(two_tier_elsewhere(1).await, profile(1));
            assert_eq!(two_tier_elsewhere(1).await, profile(1));
            let s = two_tier_elsewhere_cache().stats();
            (
                s.redis_hits - before.redis_hits,
                s.local_hits - before.local_hits,
                s.body_calls - before.body_calls,
            )
        })
        .await;
    assert_eq!(
        (redis_hits, local_hits, body_calls),
        (1, 1, 0),
        "promoted after the Redis hit"
    );

    two_tier_cache().clear_local();
    assert_eq!(two_tier(1).await, profile(1));
    assert_eq!(two_tier_cache().stats().redis_hits, 1);
    assert_eq!(TWO_TIER_RUNS.load(SeqCst), 1);
    assert_eq!(
        two_tier_cache().local_ttl(),
        Duration::from_secs(30),
        "default local_ttl is min(ttl, 30s)"
    );
}

static WRITE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "write:<id>")]
async fn written(id: u64) -> Profile {
    WRITE_RUNS.fetch_add(1, SeqCst);
    profile(id)
}

/// Same keys and type as `written`: stands in for another process.
#[cached(tier = "local+redis", ttl = 60, key = "write:<id>")]
async fn written_elsewhere(id: u64) -> Profile {
    let _ = id;
    unreachable!("served from Redis")
}

#[tokio::test]
async fn invalidate_clears_both_tiers_and_populate_writes_both() {
    shared_redis_with_bus().await;
    let key = &vkey(written_cache(), "write:2");
    assert_eq!(written(2).await, profile(2));
    assert!(raw().exists::<_, bool>(key).unwrap());
    invalidate_written(2).await.expect("redis confirmed");
    assert!(!raw().exists::<_, bool>(key).unwrap());
    assert_eq!(lookup_written(2).await, None);
    assert_eq!(lookup_written_elsewhere(2).await, None);

    let updated = Profile {
        id: 2,
        name: "renamed".into(),
    };
    populate_written(2, updated.clone())
        .await
        .expect("redis took it");
    assert_eq!(written(2).await, updated, "served locally");
    assert_eq!(written_elsewhere(2).await, updated, "served from Redis");
    let bytes: Vec<u8> = raw().get(key).unwrap();
    assert_eq!(&bytes[..3], b"CR\x02");

    assert_eq!(refresh_written(2).await, profile(2));
    written_elsewhere_cache().clear_local();
    assert_eq!(
        written_elsewhere(2).await,
        profile(2),
        "refresh wrote Redis"
    );
}

static PROMOTED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, local_ttl = 30, key = "promoted:<id>")]
async fn promoted(id: u64) -> u64 {
    PROMOTED_RUNS.fetch_add(1, SeqCst);
    id
}

#[tokio::test]
async fn a_local_copy_never_outlives_the_redis_copy() {
    shared_redis_with_bus().await;
    let key = &vkey(promoted_cache(), "promoted:1");
    assert_eq!(promoted(1).await, 1);
    promoted_cache().clear_local();
    // The value in Redis now expires 150 ms from now (its envelope says so, as a writer's
    // short TTL would: the one-command hit reads the expiry from the envelope, not PTTL);
    // the promoted copy must not last longer.
    let fp = codec::type_fingerprint::<u64>(1);
    let stored = codec::decode::<u64>(&raw().get::<_, Vec<u8>>(key).unwrap(), fp, 64).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let short = codec::encode_at(
        &stored.value,
        fp,
        stored.ticket,
        now_ms,
        Duration::from_millis(150),
        &stored.stamps,
    )
    .unwrap();
    let _: () = raw().pset_ex(key, short, 150).unwrap();
    assert_eq!(promoted(1).await, 1);
    assert_eq!(promoted_cache().stats().redis_hits, 1);
    assert_eq!(
        lookup_promoted(1).await,
        Some(1),
        "promoted to the local tier"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        lookup_promoted(1).await,
        None,
        "local copy expired with the Redis copy"
    );
    assert_eq!(promoted(1).await, 1);
    assert_eq!(PROMOTED_RUNS.load(SeqCst), 2);
}

static V1_RUNS: AtomicUsize = AtomicUsize::new(0);
static V2_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "redis", ttl = 60, key = "schema:<id>", version = 1)]
fn schema_v1(id: u64) -> (u64, u64) {
    V1_RUNS.fetch_add(1, SeqCst);
    (id, 1)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SchemaV2 {
    id: u64,
    extra: String,
}

#[cached(tier = "redis", ttl = 60, key = "schema:<id>", version = 2)]
fn schema_v2(id: u64) -> SchemaV2 {
    V2_RUNS.fetch_add(1, SeqCst);
    SchemaV2 {
        id,
        extra: "new".into(),
    }
}

#[test]
fn a_schema_version_bump_never_reads_old_bytes() {
    shared_redis();
    assert_eq!(schema_v1(1), (1, 1));
    assert_eq!(schema_v2(1).extra, "new");
    assert_eq!(V2_RUNS.load(SeqCst), 1, "v2 does not read v1's entry");
    assert!(raw()
        .exists::<_, bool>(&vkey(schema_v1_cache(), "schema:1"))
        .unwrap());
    assert!(raw()
        .exists::<_, bool>(&vkey(schema_v2_cache(), "schema:1"))
        .unwrap());
    // Even v1 bytes copied under v2's key are rejected (type fingerprint), not misread.
    let old: Vec<u8> = raw().get(vkey(schema_v1_cache(), "schema:1")).unwrap();
    let _: () = raw().set(vkey(schema_v2_cache(), "schema:1"), old).unwrap();
    let before = schema_v2_cache().stats().decode_failures;
    assert_eq!(schema_v2(1).extra, "new");
    assert_eq!(schema_v2_cache().stats().decode_failures, before + 1);
    assert_eq!(V2_RUNS.load(SeqCst), 2);
    assert_eq!(schema_v1(1), (1, 1));
    assert_eq!(V1_RUNS.load(SeqCst), 1, "v1 still reads its own entry");
}

static CORRUPT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "corrupt:<id>")]
async fn corruptible(id: u64) -> Profile {
    CORRUPT_RUNS.fetch_add(1, SeqCst);
    profile(id)
}

#[tokio::test]
async fn corrupt_foreign_and_wrongly_typed_values_are_misses() {
    shared_redis_with_bus().await;
    let fp = codec::type_fingerprint::<Profile>(1);
    let good = codec::encode(&profile(1), fp, Duration::from_secs(60), &[0, 0, 0]).unwrap();
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0x40;
    let foreign = codec::encode(
        &"a string".to_string(),
        codec::fingerprint("alloc::string::String", 1),
        Duration::from_secs(60),
        &[0, 0, 0],
    )
    .unwrap();
    let bad_values: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"not an envelope at all".to_vec()),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("bit flip", flipped),
        ("another type", foreign),
        ("json", br#"{"id":1,"name":"user 1"}"#.to_vec()),
        ("empty", Vec::new()),
    ];
    let key = &vkey(corruptible_cache(), "corrupt:1");
    for (i, (what, bytes)) in bad_values.iter().enumerate() {
        let _: () = raw().set(key, bytes).unwrap();
        corruptible_cache().clear_local();
        assert_eq!(corruptible(1).await, profile(1), "{what}");
        assert_eq!(
            corruptible_cache().stats().decode_failures,
            i as u64 + 1,
            "{what}"
        );
        assert_eq!(CORRUPT_RUNS.load(SeqCst), i + 1, "{what}: the body ran");
        let now: Vec<u8> = raw().get(key).unwrap();
        assert_eq!(
            codec::decode::<Profile>(&now, fp, 1 << 20).map(|d| d.value),
            Ok(profile(1)),
            "{what}: overwritten"
        );
    }

    // A key of another Redis type (a hash) is a miss too (`GET` answers `WRONGTYPE` for it,
    // `MGET` nil), and the store replaces it: first with the key's ticket not kept by the
    // process, then with it kept (two Redis hits first: the hit reads `GET v` alone).
    for kept in [false, true] {
        if kept {
            for _ in 0..2 {
                corruptible_cache().clear_local();
                let hits = corruptible_cache().stats().redis_hits;
                assert_eq!(corruptible(1).await, profile(1));
                assert_eq!(corruptible_cache().stats().redis_hits, hits + 1);
            }
        }
        let _: () = raw().del(key).unwrap();
        let _: () = raw().hset(key, "field", "value").unwrap();
        corruptible_cache().clear_local();
        let runs = CORRUPT_RUNS.load(SeqCst);
        assert_eq!(corruptible(1).await, profile(1));
        assert_eq!(
            CORRUPT_RUNS.load(SeqCst),
            runs + 1,
            "a hash is a miss (kept: {kept})"
        );
        assert_eq!(
            corruptible_cache().stats().decode_failures,
            bad_values.len() as u64
        );
        let kind: String = redis::cmd("TYPE").arg(key).query(&mut raw()).unwrap();
        assert_eq!(kind, "string", "kept: {kept}");
        assert_eq!(corruptible_cache().stats().redis_errors, 0, "kept: {kept}");
    }
}

#[test]
fn decode_errors_name_the_problem() {
    let fp = codec::fingerprint("x", 1);
    assert_eq!(
        codec::decode::<u8>(b"CR\x02\x00", fp, 10),
        Err(DecodeError::Length)
    );
}

#[cached(tier = "local+redis", ttl = 60, key = "big:<id>")]
fn big(id: u64) -> Vec<u8> {
    vec![id as u8; 2 << 20]
}

#[test]
fn values_over_the_cap_stay_local_and_are_counted() {
    shared_redis_with_bus_blocking();
    // Kept only locally, so served again only while the bus is trusted (docs/PROTOCOL.md
    // §5.4): measured over a run that had it trusted throughout.
    let (body_calls, oversize, local_hits) =
        trusted_throughout_blocking("an oversize value served locally", || {
            big_cache().clear_local();
            let before = big_cache().stats();
            assert_eq!(big(1).len(), 2 << 20);
            assert!(!raw()
                .exists::<_, bool>(&vkey(big_cache(), "big:1"))
                .unwrap());
            assert_eq!(big(1).len(), 2 << 20);
            let s = big_cache().stats();
            (
                s.body_calls - before.body_calls,
                s.oversize - before.oversize,
                s.local_hits - before.local_hits,
            )
        });
    assert_eq!((body_calls, oversize, local_hits), (1, 1, 1));
    match populate_big(2, vec![0; 2 << 20]) {
        Err(CacheError::TooLarge { size, limit }) => assert!(size > limit && limit == 1 << 20),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        lookup_big(2).map(|v| v.len()),
        Some(2 << 20),
        "still cached locally"
    );
}

struct Catalog {
    shop: String,
}

impl Catalog {
    #[cached(tier = "local+redis", ttl = 60, key = "shop:<self.shop>:item:<sku>")]
    fn price(&self, sku: &str) -> u64 {
        sku.len() as u64 * 100
    }
}

#[test]
fn sync_methods_use_redis_too() {
    shared_redis_with_bus_blocking();
    let c = Catalog {
        shop: "eu/north".into(),
    };
    assert_eq!(c.price("abc"), 300);
    // `/` is a separator, so it is escaped inside the value.
    assert!(raw()
        .exists::<_, bool>(&vkey(Catalog::price_cache(), "shop:eu%2Fnorth:item:abc"))
        .unwrap());
    c.invalidate_price("abc").unwrap();
    assert!(!raw()
        .exists::<_, bool>(&vkey(Catalog::price_cache(), "shop:eu%2Fnorth:item:abc"))
        .unwrap());
}

#[tokio::test]
async fn health_check_reports_a_reachable_redis() {
    shared_redis();
    cache_runtime::health_check().await.expect("PING");
}

static STAMPEDE_RUNS: AtomicUsize = AtomicUsize::new(0);
static STAMPEDE_GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[cached(tier = "redis", ttl = 60, key = "stampede:<id>")]
async fn stampede(id: u64) -> u64 {
    STAMPEDE_RUNS.fetch_add(1, SeqCst);
    STAMPEDE_GATE.notified().await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_misses_on_the_redis_tier_run_the_body_once() {
    shared_redis();
    let tasks: Vec<_> = (0..500).map(|_| tokio::spawn(stampede(1))).collect();
    cache_tests::eventually(Duration::from_secs(10), "499 joined waiters", || {
        stampede_cache().stats().joined == 499
    })
    .await;
    cache_tests::eventually(Duration::from_secs(10), "the leader in the body", || {
        STAMPEDE_RUNS.load(SeqCst) == 1
    })
    .await;
    STAMPEDE_GATE.notify_waiters();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1);
    }
    assert_eq!(STAMPEDE_RUNS.load(SeqCst), 1);
    assert!(raw()
        .exists::<_, bool>(&vkey(stampede_cache(), "stampede:1"))
        .unwrap());
}

static HELD_SOURCE: [AtomicUsize; 3] = [const { AtomicUsize::new(1) }; 3];
static HELD_RUNS: AtomicUsize = AtomicUsize::new(0);
static HELD_GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Reads its source, then (its first run only) waits at the gate.
#[cached(tier = "redis", ttl = 60, key = "held:<id>", tags = ["held-team:<id>"])]
async fn held(id: usize) -> usize {
    let read = HELD_SOURCE[id].load(SeqCst);
    if HELD_RUNS.fetch_add(1, SeqCst) == 0 {
        HELD_GATE.notified().await;
    }
    read
}

/// A write lands in Redis while a body runs and its bus message never arrives (another
/// process's invalidation during a subscriber drop: here the ticket or the tag token deleted
/// behind the process's back). A call made after that write joins the running flight, which
/// nothing detached; it must not be handed the value the body read before the write: the
/// sealed flight's store is refused, and the call runs the body again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_after_an_unheard_write_is_not_handed_the_older_body_result() {
    let server = shared_redis();
    let schema = held_cache().key_schema().unwrap();
    let ticket_of =
        |id: usize| cache_runtime::key::redis_keys("t", schema, &format!("held:{id}")).1;
    let cases: [(usize, String); 2] = [
        (1, ticket_of(1)),
        (2, "{t:scopes}:t:held-team:2".to_string()),
    ];
    for (id, written) in cases {
        HELD_RUNS.store(0, SeqCst);
        let joined = held_cache().stats().joined;
        let leader = tokio::spawn(held(id));
        cache_tests::eventually(Duration::from_secs(10), "the leader in its body", || {
            HELD_RUNS.load(SeqCst) == 1
        })
        .await;
        // The write: the source changes, then Redis loses the key's ticket (or its tag's
        // token), with no bus message.
        HELD_SOURCE[id].store(2, SeqCst);
        let deleted: u64 = server.cmd(&["DEL", &written]).expect("DEL");
        assert_eq!(deleted, 1, "{written} existed: the write changed something");
        // A call started after the write, joined to the flight that started before it.
        let follower = tokio::spawn(held(id));
        cache_tests::eventually(
            Duration::from_secs(10),
            "the call joined the flight",
            || held_cache().stats().joined == joined + 1,
        )
        .await;
        HELD_GATE.notify_one();
        assert_eq!(
            leader.await.unwrap(),
            1,
            "the leader started before the write"
        );
        assert_eq!(
            follower.await.unwrap(),
            2,
            "{written}: a call after the write gets the source after it"
        );
        assert_eq!(HELD_RUNS.load(SeqCst), 2, "the body ran again for it");
        assert_eq!(held(id).await, 2, "and Redis holds the new value");
        assert_eq!(HELD_RUNS.load(SeqCst), 2);
    }
}

static LOCKED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(
    tier = "redis",
    ttl = 60,
    key = "locked-stale:<id>",
    lock = true,
    lock_lease = "5s"
)]
async fn locked_stale(id: u64) -> u64 {
    LOCKED_RUNS.fetch_add(1, SeqCst);
    id
}

#[tokio::test]
async fn a_stale_value_does_not_make_a_lock_user_wait_for_nobody() {
    shared_redis();
    assert_eq!(locked_stale(1).await, 1);
    // The value stays in Redis but is stale after the clear.
    locked_stale_cache().clear().await.unwrap();
    assert!(raw()
        .exists::<_, bool>(&vkey(locked_stale_cache(), "locked-stale:1"))
        .unwrap());
    assert_eq!(locked_stale(1).await, 1);
    let s = locked_stale_cache().stats();
    assert_eq!(LOCKED_RUNS.load(SeqCst), 2);
    // Refused by the read without the lock (a hit needs none), then by the one that takes
    // it: each read that finds the value counts it.
    assert_eq!(
        (s.stale_rejected, s.lock_timeouts, s.lock_waits),
        (2, 0, 0),
        "{s:?}"
    );
    assert!(
        !raw()
            .exists::<_, bool>(&cache_tests::shared_lock_key(
                locked_stale_cache(),
                "locked-stale:1"
            ))
            .unwrap(),
        "lock released"
    );
}

static TAGGED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "tagged:<id>:<owner>", tags = ["owner:<owner>"])]
async fn tagged(id: u64, owner: u64) -> (u64, u64) {
    TAGGED_RUNS.fetch_add(1, SeqCst);
    (id, owner)
}

#[tokio::test]
async fn tag_invalidation_reaches_both_tiers_of_tagged_entries_only() {
    shared_redis_with_bus().await;
    assert_eq!(tagged(1, 7).await, (1, 7));
    assert_eq!(tagged(2, 7).await, (2, 7));
    assert_eq!(tagged(3, 8).await, (3, 8));
    cache_runtime::invalidate_tag("owner:7").await.unwrap();
    assert_eq!(tagged_cache().peek_local("tagged:1:7"), None);
    assert_eq!(tagged_cache().peek_local("tagged:3:8"), Some((3, 8)));
    tagged_cache().clear_local();
    assert_eq!(
        lookup_tagged(1, 7).await,
        None,
        "the Redis entry names a deleted tag token"
    );
    assert_eq!(lookup_tagged(3, 8).await, Some((3, 8)));
    assert_eq!(tagged(2, 7).await, (2, 7));
    assert_eq!(TAGGED_RUNS.load(SeqCst), 4);
    // The tag's token was deleted by the invalidation and recreated, at random, by the miss
    // of (2, 7): never a counter that could come back to an old value.
    let token_key = cache_runtime::key::scope_key("t", cache_runtime::key::Scope::Tag("owner:7"));
    let token: String = raw().get(&token_key).unwrap();
    assert_eq!(token.len(), 16, "{token_key} = {token}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
}

#[cached(tier = "local+redis", ttl = 100, key = "jitter:<id>", jitter = 0.1)]
fn jittered(id: u64) -> u64 {
    id
}

#[test]
fn jitter_spreads_the_ttls_of_entries_written_together() {
    shared_redis_with_bus_blocking();
    let mut raw = raw();
    let mut ttls: Vec<i64> = (0..200)
        .map(|id| {
            jittered(id);
            raw.pttl(vkey(jittered_cache(), &format!("jitter:{id}")))
                .unwrap()
        })
        .collect();
    ttls.sort_unstable();
    let (min, max) = (ttls[0], ttls[ttls.len() - 1]);
    assert!(
        min >= 89_000 && max <= 110_000,
        "outside ±10 %: {min}..{max}"
    );
    assert!(min < 95_000 && max > 105_000, "not spread: {min}..{max}");
}

static REDIS_FS_FAIL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cached(tier = "redis", ttl = "100ms", key = "fs:<id>", stale = "10m")]
async fn redis_fail_safe(id: u64) -> Result<u64, String> {
    if REDIS_FS_FAIL.load(SeqCst) {
        Err("down".into())
    } else {
        Ok(id)
    }
}

#[tokio::test]
async fn redis_keeps_the_stale_fallback_past_the_ttl() {
    shared_redis();
    assert_eq!(redis_fail_safe(3).await, Ok(3));
    let pttl: i64 = raw().pttl(vkey(redis_fail_safe_cache(), "fs:3")).unwrap();
    assert!(pttl > 100_000, "kept for ttl + stale, got {pttl}");
    // The TTL passing is what is under test.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        lookup_redis_fail_safe(3).await,
        None,
        "stale in Redis is not a hit"
    );
    REDIS_FS_FAIL.store(true, SeqCst);
    assert_eq!(
        redis_fail_safe(3).await,
        Ok(3),
        "the stale value from Redis"
    );
    assert_eq!(redis_fail_safe_cache().stats().stale_served, 1);
    REDIS_FS_FAIL.store(false, SeqCst);
}

static RELOADED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "redis", ttl = 60, key = "reloaded:<id>")]
async fn reloaded(id: u64) -> Profile {
    RELOADED_RUNS.fetch_add(1, SeqCst);
    profile(id)
}

/// `SCRIPT FLUSH` (what an empty restart or a failover to a fresh replica does to loaded
/// scripts): every script the runtime sends is loaded again on `NOSCRIPT`, and the operation
/// goes through in the same call.
#[tokio::test]
async fn scripts_flushed_from_redis_are_loaded_again() {
    shared_redis();
    let flush = || {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut raw())
            .expect("SCRIPT FLUSH");
    };
    let key = &vkey(reloaded_cache(), "reloaded:1");
    // A miss and its store (the store script).
    flush();
    assert_eq!(reloaded(1).await, profile(1));
    assert!(raw().exists::<_, bool>(key).unwrap(), "the store landed");
    assert_eq!(reloaded(1).await, profile(1));
    assert_eq!(RELOADED_RUNS.load(SeqCst), 1, "the second call was a hit");
    // A populate (the populate script, then the store script).
    flush();
    let updated = Profile {
        id: 1,
        name: "reloaded".into(),
    };
    populate_reloaded(1, updated.clone())
        .await
        .expect("redis took it");
    assert_eq!(reloaded(1).await, updated);
    assert_eq!(RELOADED_RUNS.load(SeqCst), 1);
    let s = reloaded_cache().stats();
    assert_eq!(s.redis_errors, 0, "{s:?}");
}

/// The value type of `pair`, as this build defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pair {
    hits: u64,
    misses: u64,
}

/// The same type as an earlier build defined it: fields in the other order, no `version`
/// bump.
mod earlier_build {
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    pub struct Pair {
        pub misses: u64,
        pub hits: u64,
    }
}

static PAIR_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "pair:<id>")]
fn pair(id: u64) -> Pair {
    PAIR_RUNS.fetch_add(1, SeqCst);
    Pair {
        hits: id,
        misses: 100 + id,
    }
}

/// A rolling deploy that changed the value type without bumping `version`: the earlier
/// build's envelope (under the key's live ticket and scope stamps, so nothing else rejects
/// it) names another shape, and is a counted miss; bincode alone would read its `misses`
/// into `hits`.
#[test]
fn a_type_changed_without_a_version_bump_is_a_miss_not_a_misread() {
    shared_redis_with_bus_blocking();
    assert_eq!(pair(1).hits, 1);
    let key = &vkey(pair_cache(), "pair:1");
    let fp = codec::type_fingerprint::<Pair>(1);
    let stored =
        codec::decode::<Pair>(&raw().get::<_, Vec<u8>>(key).unwrap(), fp, 1 << 20).unwrap();
    let earlier = earlier_build::Pair {
        misses: 101,
        hits: 1,
    };
    // What the earlier build writes: its own shape in the fingerprint.
    let earlier_fp = codec::with_schema(
        codec::fingerprint(std::any::type_name::<Pair>(), 1),
        codec::schema_hash::<earlier_build::Pair>(),
    );
    assert_ne!(earlier_fp, fp);
    let written = |fp| {
        codec::encode_at(
            &earlier,
            fp,
            stored.ticket,
            stored.created_unix_ms,
            Duration::from_secs(60),
            &stored.stamps,
        )
        .unwrap()
    };
    // The hazard: the same bytes under this build's fingerprint decode, fields swapped.
    let misread = codec::decode::<Pair>(&written(fp), fp, 1 << 20)
        .unwrap()
        .value;
    assert_eq!((misread.hits, misread.misses), (101, 1));

    let _: () = raw().set(key, written(earlier_fp)).unwrap();
    pair_cache().clear_local();
    let before = pair_cache().stats();
    assert_eq!(
        pair(1),
        Pair {
            hits: 1,
            misses: 101
        }
    );
    let after = pair_cache().stats();
    assert_eq!(
        after.decode_failures,
        before.decode_failures + 1,
        "{after:?}"
    );
    assert_eq!(PAIR_RUNS.load(SeqCst), 2, "the body ran instead");
    let now = codec::decode::<Pair>(&raw().get::<_, Vec<u8>>(key).unwrap(), fp, 1 << 20);
    assert_eq!(
        now.map(|d| d.value),
        Ok(Pair {
            hits: 1,
            misses: 101
        }),
        "overwritten"
    );
}

static NOW_RUNS: AtomicUsize = AtomicUsize::new(0);
static EARLIER_RUNS: AtomicUsize = AtomicUsize::new(0);

/// This build's cache of a key template, and what an earlier build of it was: the same
/// template and `version`, another shape (the earlier build's `Pair`).
#[cached(tier = "redis", ttl = 60, key = "deploy:<id>")]
fn deploy_now(id: u64) -> Pair {
    NOW_RUNS.fetch_add(1, SeqCst);
    Pair {
        hits: id,
        misses: 100 + id,
    }
}

#[cached(tier = "redis", ttl = 60, key = "deploy:<id>")]
fn deploy_earlier(id: u64) -> earlier_build::Pair {
    EARLIER_RUNS.fetch_add(1, SeqCst);
    earlier_build::Pair {
        misses: 200 + id,
        hits: id,
    }
}

/// Both builds of a rolling deploy that changed the value type without a `version` bump
/// keep entries of their own (the key schema's digest differs), so neither overwrites the
/// other's and both hit; they share the key's ticket, so an invalidation by either covers
/// both.
#[test]
fn a_type_changed_without_a_version_bump_keeps_entries_of_its_own() {
    shared_redis();
    let (now_key, earlier_key) = (
        vkey(deploy_now_cache(), "deploy:1"),
        vkey(deploy_earlier_cache(), "deploy:1"),
    );
    assert_ne!(now_key, earlier_key, "one value key per shape");
    let (now_schema, earlier_schema) = (
        deploy_now_cache().key_schema().unwrap(),
        deploy_earlier_cache().key_schema().unwrap(),
    );
    assert_eq!((now_schema.version(), earlier_schema.version()), (1, 1));
    assert_eq!(now_schema, cache_runtime::key::KeySchema::of::<Pair>(1));
    let before = (deploy_now_cache().stats(), deploy_earlier_cache().stats());
    // Interleaved, as two builds serving one key during the deploy.
    for _ in 0..3 {
        assert_eq!(deploy_now(1).misses, 101);
        assert_eq!(deploy_earlier(1).misses, 201);
    }
    assert_eq!(
        (NOW_RUNS.load(SeqCst), EARLIER_RUNS.load(SeqCst)),
        (1, 1),
        "each build's body ran once: its entry was not overwritten by the other's"
    );
    assert!(raw().exists::<_, bool>(&now_key).unwrap());
    assert!(raw().exists::<_, bool>(&earlier_key).unwrap());
    let after = (deploy_now_cache().stats(), deploy_earlier_cache().stats());
    assert_eq!(
        (after.0.redis_hits, after.1.redis_hits),
        (before.0.redis_hits + 2, before.1.redis_hits + 2)
    );
    assert_eq!(
        (after.0.decode_failures, after.1.decode_failures),
        (before.0.decode_failures, before.1.decode_failures)
    );

    // One invalidation (the earlier build's) and neither value is served any more.
    invalidate_deploy_earlier(1).unwrap();
    assert_eq!(deploy_now(1).misses, 101);
    assert_eq!(deploy_earlier(1).misses, 201);
    assert_eq!(
        (NOW_RUNS.load(SeqCst), EARLIER_RUNS.load(SeqCst)),
        (2, 2),
        "the shared ticket's deletion covers both shapes"
    );
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// bincode writes struct fields by position: a field skipped only sometimes would shift the
/// next ones into its place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    #[serde(default, skip_serializing_if = "is_zero")]
    retries: u32,
    errors: Vec<String>,
    code: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Paged {
    #[serde(flatten)]
    page: Page,
    total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Page {
    offset: u64,
}

/// Read with `deserialize_any`: bincode writes it but cannot read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
enum Event {
    Created { id: u64 },
    Renamed { id: u64, to: String },
}

static SERDE_SHAPES_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "redis", ttl = 60, key = "report:<id>")]
fn report(id: u32) -> Report {
    SERDE_SHAPES_RUNS.fetch_add(1, SeqCst);
    Report {
        retries: id,
        errors: vec![String::new()],
        code: 9,
    }
}

#[cached(tier = "redis", ttl = 60, key = "paged:<id>")]
fn paged(id: u64) -> Paged {
    SERDE_SHAPES_RUNS.fetch_add(1, SeqCst);
    Paged {
        page: Page { offset: id },
        total: 1,
    }
}

#[cached(tier = "redis", ttl = 60, key = "event:<id>")]
fn event(id: u64) -> Event {
    SERDE_SHAPES_RUNS.fetch_add(1, SeqCst);
    match id {
        0 => Event::Created { id },
        _ => Event::Renamed {
            id,
            to: format!("n{id}"),
        },
    }
}

/// Values bincode would misread (a field skipped sometimes), cannot write (`flatten`) or
/// cannot read (an internally tagged enum) are stored in the self-describing format and
/// read back from Redis as written: every second call is a Redis hit of the same value.
/// (Before: the skipped field's value came back as `{retries: 1, errors: [], code: 9}`, a
/// counted hit; `flatten` never reached Redis; the enum was a decode failure on every read.)
#[test]
fn serde_shapes_bincode_cannot_round_trip_are_read_back_as_written() {
    shared_redis();
    let before = (
        report_cache().stats(),
        paged_cache().stats(),
        event_cache().stats(),
    );
    // (value, the envelope's flags byte: 0 bincode, 1 MessagePack)
    let first = report(0);
    let flags = |key: &str| {
        let cache_key = match key.split(':').next() {
            Some("report") => vkey(report_cache(), key),
            Some("paged") => vkey(paged_cache(), key),
            _ => vkey(event_cache(), key),
        };
        raw().get::<_, Vec<u8>>(cache_key).unwrap()[3]
    };
    assert_eq!(flags("report:0"), 1, "the skipped field's value is named");
    assert_eq!(report(0), first);
    assert_eq!((first.retries, first.errors.len()), (0, 1));
    assert_eq!(report(4), report(4));
    assert_eq!(flags("report:4"), 0, "nothing skipped: bincode");
    assert_eq!(paged(3), paged(3));
    assert_eq!(paged(3).page.offset, 3);
    assert_eq!(flags("paged:3"), 1);
    for id in [0, 1] {
        assert_eq!(event(id), event(id));
        assert_eq!(flags(&format!("event:{id}")), 1);
    }
    assert_eq!(
        event(1),
        Event::Renamed {
            id: 1,
            to: "n1".into()
        }
    );
    assert_eq!(SERDE_SHAPES_RUNS.load(SeqCst), 5, "one body run per key");
    let after = (
        report_cache().stats(),
        paged_cache().stats(),
        event_cache().stats(),
    );
    for (b, a) in [
        (before.0, after.0),
        (before.1, after.1),
        (before.2, after.2),
    ] {
        assert_eq!(a.decode_failures, b.decode_failures, "{a:?}");
        assert_eq!(a.encode_failures, b.encode_failures, "{a:?}");
        assert!(a.redis_hits > b.redis_hits, "{a:?}");
    }
}

/// A value whose `Serialize` fails in every format.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Unwritable(u64);

impl Serialize for Unwritable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be written",
        ))
    }
}

#[cached(tier = "local+redis", ttl = 60, key = "unwritable:<id>")]
fn unwritable(id: u64) -> Unwritable {
    Unwritable(id)
}

// A value that does not encode stays local, and the failure is counted and logged.
#[test]
fn values_that_do_not_encode_stay_local_and_are_counted() {
    shared_redis_with_bus_blocking();
    // Kept only locally, so served again only while the bus is trusted (docs/PROTOCOL.md
    // §5.4): measured over a run that had it trusted throughout.
    let (body_calls, encode_failures, local_hits) =
        trusted_throughout_blocking("a value that does not encode served locally", || {
            unwritable_cache().clear_local();
            let before = unwritable_cache().stats();
            assert_eq!(unwritable(1), Unwritable(1));
            assert!(!raw()
                .exists::<_, bool>(&vkey(unwritable_cache(), "unwritable:1"))
                .unwrap());
            assert_eq!(unwritable(1), Unwritable(1));
            let s = unwritable_cache().stats();
            (
                s.body_calls - before.body_calls,
                s.encode_failures - before.encode_failures,
                s.local_hits - before.local_hits,
            )
        });
    assert_eq!((body_calls, encode_failures, local_hits), (1, 1, 1));
}
