//! What a miss costs beyond the body: the copies of the value it makes, and the commands its
//! store sends (counted from the server's side). docs/PROTOCOL.md §7.2, docs/BENCHMARKS.md
//! (issue 12, eleventh round).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use cache_runtime::cached;
use cache_tests::shared_redis_with_bus;
use serde::{Deserialize, Serialize};

/// Counts its clones in `COUNTER` (one counter per test value type, so the tests of this
/// file do not see each other's copies).
macro_rules! counted_value {
    ($name:ident, $counter:ident) => {
        static $counter: AtomicUsize = AtomicUsize::new(0);

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct $name(Vec<String>);

        impl Clone for $name {
            fn clone(&self) -> Self {
                $counter.fetch_add(1, SeqCst);
                $name(self.0.clone())
            }
        }
    };
}

/// Held by the tests that read the server's `SLOWLOG`: each resets it, so they take turns.
static SLOWLOG: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

counted_value!(RedisOnlyRow, REDIS_ONLY_CLONES);
counted_value!(TwoTierRow, TWO_TIER_CLONES);

#[cached(tier = "redis", ttl = 60, key = "cost-copies-r:<id>")]
async fn redis_only_row(id: u64) -> RedisOnlyRow {
    RedisOnlyRow(vec![id.to_string(); 4])
}

#[cached(tier = "local+redis", ttl = 60, key = "cost-copies-l:<id>")]
async fn two_tier_row(id: u64) -> Result<TwoTierRow, String> {
    Ok(TwoTierRow(vec![id.to_string(); 4]))
}

/// A miss with nobody waiting on it copies the body's value only into a local tier: none in
/// a Redis-only cache, one in `local+redis` (the copy the local tier keeps). Before, the
/// value was first copied out of the result to be cached, whether or not anything kept it.
#[tokio::test]
async fn a_miss_copies_the_value_only_where_it_is_kept() {
    shared_redis_with_bus().await;
    for id in 1..=5u64 {
        let before = REDIS_ONLY_CLONES.load(SeqCst);
        assert_eq!(
            redis_only_row(id).await,
            RedisOnlyRow(vec![id.to_string(); 4])
        );
        assert_eq!(
            REDIS_ONLY_CLONES.load(SeqCst) - before,
            0,
            "a Redis-only miss copied its value"
        );

        let before = TWO_TIER_CLONES.load(SeqCst);
        assert_eq!(
            two_tier_row(id).await,
            Ok(TwoTierRow(vec![id.to_string(); 4]))
        );
        assert_eq!(
            TWO_TIER_CLONES.load(SeqCst) - before,
            1,
            "a local+redis miss copies its value once, into the local tier"
        );
    }
    let stats = two_tier_row_cache().stats();
    assert_eq!((stats.misses, stats.populates), (5, 5), "{stats:?}");
    assert_eq!(
        two_tier_row_cache().peek_local("cost-copies-l:3"),
        Some(TwoTierRow(vec!["3".into(); 4])),
        "the local copy is the body's value"
    );
    // And the stored values are the body's, from Redis.
    redis_only_row_cache().clear_local();
    assert_eq!(redis_only_row(2).await, RedisOnlyRow(vec!["2".into(); 4]));
    assert_eq!(redis_only_row_cache().stats().redis_hits, 1);
}

#[cached(tier = "redis", ttl = 60, key = "cost-store-r:<id>")]
async fn redis_only_store(id: u64) -> u64 {
    id + 1
}

#[cached(tier = "local+redis", ttl = 60, key = "cost-store-l:<id>")]
async fn two_tier_store(id: u64) -> u64 {
    id + 1
}

/// The commands naming `logical`, oldest first (`SLOWLOG` lists the newest first).
fn naming<'a, 'b>(
    commands: &'a [Vec<String>],
    logical: &'b str,
) -> impl Iterator<Item = &'a Vec<String>> + use<'a, 'b> {
    commands
        .iter()
        .rev()
        .filter(move |c| c.iter().any(|a| a.ends_with(logical)))
}

/// The `SET` of an entry's value.
fn is_value_set(c: &[String]) -> bool {
    c[0].eq_ignore_ascii_case("set") && c[1].contains(":v2:")
}

/// The commands naming `logical`, oldest first, and where among them its value's `SET` is.
fn key_commands<'a>(commands: &'a [Vec<String>], logical: &str) -> (Vec<&'a Vec<String>>, usize) {
    let ours: Vec<&Vec<String>> = naming(commands, logical).collect();
    let set_value = ours
        .iter()
        .position(|c| is_value_set(c))
        .unwrap_or_else(|| panic!("the value of {logical} was stored: {ours:?}"));
    (ours, set_value)
}

/// The commands of one miss's store, from the server's `SLOWLOG`: those after the value's
/// read and claim, up to and including the value's `SET` (oldest first).
fn store_commands(commands: &[Vec<String>], logical: &str) -> Vec<Vec<String>> {
    let (ours, set_value) = key_commands(commands, logical);
    let claim = ours
        .iter()
        .position(|c| c[0].eq_ignore_ascii_case("set") && c.iter().any(|a| a == "NX"))
        .unwrap_or_else(|| panic!("the ticket of {logical} was claimed: {ours:?}"));
    assert!(claim < set_value, "claimed before storing: {ours:?}");
    ours[claim + 1..=set_value]
        .iter()
        .map(|c| (*c).clone())
        .collect()
}

/// A plain store reads the ticket back (`GET t` in its pipeline) only where the answer is
/// used: a cache with a local tier keeps no copy of a value whose ticket vanished behind
/// its back. A Redis-only cache keeps nothing, and readers refuse such a value anyway: its
/// store is the `SET` alone. Both values are then served from Redis.
#[tokio::test]
async fn a_store_reads_its_ticket_back_only_where_a_local_tier_keeps_a_copy() {
    let server = shared_redis_with_bus().await;
    let _log = SLOWLOG.lock().await;
    // Connections up, scripts loaded.
    assert_eq!(redis_only_store(0).await, 1);
    assert_eq!(two_tier_store(0).await, 1);
    server.log_every_command();
    assert_eq!(redis_only_store(7).await, 8);
    assert_eq!(two_tier_store(7).await, 8);
    let commands = server.slowlog_commands();

    let ticket_reads = |store: &[Vec<String>]| {
        store
            .iter()
            .filter(|c| c[0].eq_ignore_ascii_case("get") && c[1].contains(":t:"))
            .count()
    };
    let redis_only = store_commands(&commands, "cost-store-r:7");
    assert_eq!(
        ticket_reads(&redis_only),
        0,
        "a Redis-only store read its ticket: {redis_only:?}"
    );
    let two_tier = store_commands(&commands, "cost-store-l:7");
    assert_eq!(
        ticket_reads(&two_tier),
        1,
        "a local+redis store checks its ticket: {two_tier:?}"
    );
    assert_eq!(two_tier_store_cache().peek_local("cost-store-l:7"), Some(8));

    // Both values are valid in Redis: other readers (here, after the local copy is gone)
    // are served them without running the body.
    two_tier_store_cache().clear_local();
    assert_eq!(redis_only_store(7).await, 8);
    assert_eq!(two_tier_store(7).await, 8);
    assert_eq!(redis_only_store_cache().stats().redis_hits, 1);
    assert_eq!(two_tier_store_cache().stats().redis_hits, 1);
    assert_eq!(redis_only_store_cache().stats().misses, 2);
}

#[cached(tier = "local+redis", ttl = 60, key = "cost-ticketed:<id>")]
async fn two_tier_ticketed(id: u64) -> u64 {
    id + 2
}

/// The common miss of a warm cache finds the key's ticket alive (its value expired, or an
/// invalidation left a fresh ticket): the store must read it back and extend it, and a
/// `local+redis` store does both in one command, `GETEX t PX keep`, instead of `GET t` and
/// `PEXPIRE t keep GT`. The ticket's lifetime is then `keep` again (here it was cut to 5 s
/// first, so an extension that did not happen fails the test), the local copy is kept, and
/// other readers are served the value from Redis.
#[tokio::test]
async fn a_store_under_a_live_ticket_reads_and_extends_it_in_one_command() {
    let server = shared_redis_with_bus().await;
    let _log = SLOWLOG.lock().await;
    assert_eq!(two_tier_ticketed(0).await, 2);
    // Every read of this cache finds a ticket: it does not claim in its reads.
    for id in 1..=8u64 {
        invalidate_two_tier_ticketed(id).await.unwrap();
        assert_eq!(two_tier_ticketed(id).await, id + 2);
    }
    invalidate_two_tier_ticketed(9).await.unwrap();
    let ticket_key = server
        .scan("*:t:cost-ticketed:9")
        .pop()
        .expect("a fresh ticket");
    let cut: u64 = server.cmd(&["PEXPIRE", &ticket_key, "5000"]).unwrap();
    assert_eq!(cut, 1);
    server.log_every_command();
    assert_eq!(two_tier_ticketed(9).await, 11);
    let commands = server.slowlog_commands();

    let (ours, set_value) = key_commands(&commands, "cost-ticketed:9");
    // The read (its `GET`s or `MGET`), then the store: `GETEX t PX keep` and the `SET`.
    assert!(set_value >= 2, "a read, then the store: {ours:?}");
    let getex = &ours[set_value - 1];
    assert!(
        getex[0].eq_ignore_ascii_case("getex")
            && getex[1] == ticket_key
            && getex[2].eq_ignore_ascii_case("px"),
        "the ticket read back and extended by GETEX: {ours:?}"
    );
    assert!(
        ours[..set_value - 1]
            .iter()
            .all(|c| c[0].eq_ignore_ascii_case("get") || c[0].eq_ignore_ascii_case("mget")),
        "only the read before the store: {ours:?}"
    );
    assert!(
        !ours.iter().any(|c| c[0].eq_ignore_ascii_case("pexpire")),
        "no PEXPIRE of the ticket: {ours:?}"
    );
    let ticket_left: i64 = server.cmd(&["PTTL", &ticket_key]).unwrap();
    let value_key = &ours[set_value][1];
    let value_left: i64 = server.cmd(&["PTTL", value_key]).unwrap();
    assert!(
        ticket_left > 100_000 && ticket_left > value_left,
        "the ticket outlives the value again: {ticket_left} ms against {value_left} ms"
    );
    assert_eq!(
        two_tier_ticketed_cache().peek_local("cost-ticketed:9"),
        Some(11)
    );
    two_tier_ticketed_cache().clear_local();
    assert_eq!(two_tier_ticketed(9).await, 11);
    let stats = two_tier_ticketed_cache().stats();
    assert_eq!((stats.redis_hits, stats.superseded), (1, 0), "{stats:?}");
}

static NEW_KEY_BODIES: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "redis", ttl = 60, key = "cost-alone:<id>")]
async fn redis_only_new_keys(id: u64) -> u64 {
    NEW_KEY_BODIES.fetch_add(1, SeqCst);
    id + 3
}

static NEW_KEY_BODIES_SYNC: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "redis", ttl = 60, key = "cost-alone-sync:<id>")]
fn redis_only_new_keys_sync(id: u64) -> u64 {
    NEW_KEY_BODIES_SYNC.fetch_add(1, SeqCst);
    id + 3
}

/// The commands naming `logical` before its value's `SET` (all of them if none), oldest first.
fn reads_of(commands: &[Vec<String>], logical: &str) -> Vec<Vec<String>> {
    naming(commands, logical)
        .take_while(|c| !is_value_set(c))
        .cloned()
        .collect()
}

fn is_claim(c: &[String]) -> bool {
    c[0].eq_ignore_ascii_case("set") && c[1].contains(":t:") && c.iter().any(|a| a == "NX")
}

fn is_value_read(c: &[String]) -> bool {
    (c[0].eq_ignore_ascii_case("get") || c[0].eq_ignore_ascii_case("mget")) && c[1].contains(":v2:")
}

/// The scenario of the claim alone for one cache (`template`: its key without the id):
/// `call` runs the cached function, `hits` reads its Redis hits, `bodies` its body runs.
async fn claims_alone_scenario<F, Fut>(
    template: &str,
    call: F,
    hits: impl Fn() -> u64,
    bodies: &AtomicUsize,
) where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let server = shared_redis_with_bus().await;
    let _log = SLOWLOG.lock().await;
    // Eight reads that find no ticket (more: the first ones are plain reads).
    for id in 1..=12u64 {
        assert_eq!(call(id).await, id + 3);
    }
    server.log_every_command();
    let ran = bodies.load(SeqCst);
    assert_eq!(call(100).await, 103);
    let reads = reads_of(&server.slowlog_commands(), &format!("{template}100"));
    assert!(
        reads.len() == 1 && is_claim(&reads[0]),
        "the miss of a new key claims its ticket, alone: {reads:?}"
    );
    assert_eq!(bodies.load(SeqCst), ran + 1);

    // Key 100 is in Redis now, under the ticket the miss claimed: the next claim finds that
    // ticket, so the value is read, and served.
    server.log_every_command();
    let before = hits();
    assert_eq!(call(100).await, 103);
    assert_eq!(hits(), before + 1, "served from Redis");
    assert_eq!(bodies.load(SeqCst), ran + 1, "the body ran again");
    let reads = reads_of(&server.slowlog_commands(), &format!("{template}100"));
    assert!(
        reads.len() == 3 && is_claim(&reads[0]) && is_value_read(&reads[1]),
        "a claim that found a ticket, then the read (and its claim): {reads:?}"
    );

    // That read found a ticket: the next miss reads the value before its claim again.
    server.log_every_command();
    assert_eq!(call(200).await, 203);
    let reads = reads_of(&server.slowlog_commands(), &format!("{template}200"));
    assert!(
        reads.len() == 2 && is_value_read(&reads[0]) && is_claim(&reads[1]),
        "the read, then the claim, in one pipeline: {reads:?}"
    );
}

/// A cache none of whose last eight reads found a ticket (a cache of new keys) claims the
/// ticket without reading the value: a claim that creates the ticket proves no value in
/// Redis is current (docs/PROTOCOL.md §7.2). One command fewer per miss. When the claim finds
/// a ticket instead, the read follows (one round trip more) and a value there is still a
/// hit; the cache then reads before it claims again.
#[tokio::test]
async fn a_cache_of_new_keys_claims_without_reading_the_value() {
    claims_alone_scenario(
        "cost-alone:",
        redis_only_new_keys,
        || redis_only_new_keys_cache().stats().redis_hits,
        &NEW_KEY_BODIES,
    )
    .await;
    assert_eq!(redis_only_new_keys_cache().stats().decode_failures, 0);
}

/// The same for a blocking caller (a plain `fn`), whose reads run on the runtime's Redis
/// thread.
#[tokio::test]
async fn a_blocking_cache_of_new_keys_claims_without_reading_the_value() {
    claims_alone_scenario(
        "cost-alone-sync:",
        |id| async move {
            tokio::task::spawn_blocking(move || redis_only_new_keys_sync(id))
                .await
                .expect("the blocking call")
        },
        || redis_only_new_keys_sync_cache().stats().redis_hits,
        &NEW_KEY_BODIES_SYNC,
    )
    .await;
}

static LOCKED_BODIES: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "redis", ttl = 60, key = "cost-locked:<id>", lock = true)]
async fn locked_row(id: u64) -> u64 {
    LOCKED_BODIES.fetch_add(1, SeqCst);
    // Long enough for every concurrent caller to find the lock taken.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    id * 3
}

/// A hit needs no lock: a warm `lock = true` cache reads as a cache without one does
/// (`GET v`, its ticket kept by client tracking), not through the script that may take the
/// lock (`EVALSHA`: a read of the value, the ticket and the scope tokens, and its nested
/// reply; docs/PROTOCOL.md §7.3). Concurrent misses of a new key still take the lock, so
/// the body runs once.
#[tokio::test]
async fn a_locked_cache_hit_reads_without_the_lock_script() {
    let server = shared_redis_with_bus().await;
    let _log = SLOWLOG.lock().await;
    // Loaded (misses), then read until the cache's last eight reads were hits.
    for _ in 0..4 {
        for id in 1..=4u64 {
            assert_eq!(locked_row(id).await, id * 3);
        }
    }
    server.log_every_command();
    for _ in 0..3 {
        for id in 1..=4u64 {
            assert_eq!(locked_row(id).await, id * 3);
        }
    }
    let commands = server.slowlog_commands();
    let scripts = commands
        .iter()
        .filter(|c| c[0].eq_ignore_ascii_case("evalsha"))
        .count();
    let value_reads = commands
        .iter()
        .filter(|c| {
            // `GET v`, or `MGET v t` while this runtime's own tracked connection opens.
            ["get", "mget"].iter().any(|r| c[0].eq_ignore_ascii_case(r)) && c[1].contains(":v2:1.")
        })
        .count();
    assert_eq!(scripts, 0, "a hit ran the lock script: {commands:?}");
    assert_eq!(value_reads, 12, "one read per hit: {commands:?}");
    assert_eq!(locked_row_cache().stats().redis_hits, 24);

    let before = LOCKED_BODIES.load(SeqCst);
    let calls = (0..8).map(|_| tokio::spawn(locked_row(99)));
    for call in calls {
        assert_eq!(call.await.unwrap(), 297);
    }
    assert_eq!(
        LOCKED_BODIES.load(SeqCst) - before,
        1,
        "concurrent misses of a new key ran the body more than once"
    );
}
