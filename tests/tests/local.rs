//! The in-process tier, every option and generated item, without Redis.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Once};
use std::time::Duration;

use cache_runtime::{cached, CacheError, Config};
use cache_tests::{eventually, eventually_blocking};

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        cache_runtime::init(Config::builder().without_redis().build()).expect("first init");
    });
}

static SQUARE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60)]
fn square(x: u64) -> u64 {
    SQUARE_RUNS.fetch_add(1, SeqCst);
    x * x
}

#[test]
fn sync_hit_miss_and_generated_items() {
    setup();
    assert_eq!(square(3), 9);
    assert_eq!(square(3), 9);
    assert_eq!(square(4), 16);
    assert_eq!(SQUARE_RUNS.load(SeqCst), 2);
    let stats = square_cache().stats();
    assert_eq!(
        (stats.local_hits, stats.misses, stats.body_calls),
        (1, 2, 2)
    );

    assert_eq!(lookup_square(3), Some(9));
    assert_eq!(lookup_square(5), None);
    invalidate_square(3).unwrap();
    assert_eq!(lookup_square(3), None);
    assert_eq!(square(3), 9);
    assert_eq!(SQUARE_RUNS.load(SeqCst), 3);

    populate_square(7, 1000).unwrap();
    assert_eq!(
        square(7),
        1000,
        "populate writes the value returned by later calls"
    );
    assert_eq!(refresh_square(7), 49);
    assert_eq!(square(7), 49);
    assert_eq!(square_uncached(8), 64);
    assert_eq!(lookup_square(8), None, "_uncached does not touch the cache");

    let name = square_cache().name().to_string();
    assert!(name.ends_with("local::square"), "{name}");
    let info = cache_runtime::caches()
        .into_iter()
        .find(|c| c.name == name)
        .expect("registered");
    assert_eq!(info.tier, cache_runtime::Tier::Local);
    assert_eq!(info.ttl, Duration::from_secs(60));
    assert!(info.stats.invalidations >= 1 && info.stats.populates >= 3);
}

static SHORT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "80ms", key = "short:<x>")]
async fn short_lived(x: u32) -> u32 {
    SHORT_RUNS.fetch_add(1, SeqCst);
    x
}

#[tokio::test]
async fn millisecond_ttl_expires() {
    setup();
    assert_eq!(short_lived(1).await, 1);
    assert_eq!(short_lived(1).await, 1);
    assert_eq!(SHORT_RUNS.load(SeqCst), 1);
    assert_eq!(short_lived_cache().ttl(), Duration::from_millis(80));
    // Time passing is what is under test here, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(lookup_short_lived(1).await, None);
    assert_eq!(short_lived(1).await, 1);
    assert_eq!(SHORT_RUNS.load(SeqCst), 2);
}

static RESULT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, PartialEq)]
struct DbError(String);

#[cached(ttl = 60, key = "res:<id>")]
async fn fallible(id: u32) -> Result<String, DbError> {
    RESULT_RUNS.fetch_add(1, SeqCst);
    if id == 0 {
        Err(DbError("no such row".into()))
    } else {
        Ok(format!("row {id}"))
    }
}

#[tokio::test]
async fn result_caches_only_ok() {
    setup();
    assert_eq!(fallible(0).await, Err(DbError("no such row".into())));
    assert_eq!(fallible(0).await, Err(DbError("no such row".into())));
    assert_eq!(RESULT_RUNS.load(SeqCst), 2, "Err is never cached");
    assert_eq!(lookup_fallible(0).await, None);
    assert_eq!(fallible(5).await.unwrap(), "row 5");
    assert_eq!(fallible(5).await.unwrap(), "row 5");
    assert_eq!(RESULT_RUNS.load(SeqCst), 3);
    assert_eq!(lookup_fallible(5).await.as_deref(), Some("row 5"));
    populate_fallible(6, "given".into()).await.unwrap();
    assert_eq!(fallible(6).await.unwrap(), "given");
}

static OPT_RUNS: AtomicUsize = AtomicUsize::new(0);
static NEG_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "opt:<id>")]
fn maybe(id: u32) -> Option<u32> {
    OPT_RUNS.fetch_add(1, SeqCst);
    (id % 2 == 0).then_some(id)
}

#[cached(ttl = 60, key = "neg:<id>", cache_none = true, none_ttl = "60ms")]
fn maybe_negative(id: u32) -> Option<u32> {
    NEG_RUNS.fetch_add(1, SeqCst);
    (id % 2 == 0).then_some(id)
}

#[test]
fn option_caches_some_and_none_only_when_asked() {
    setup();
    assert_eq!(maybe(1), None);
    assert_eq!(maybe(1), None);
    assert_eq!(OPT_RUNS.load(SeqCst), 2, "None is not cached by default");
    assert_eq!(maybe(2), Some(2));
    assert_eq!(maybe(2), Some(2));
    assert_eq!(OPT_RUNS.load(SeqCst), 3);

    assert_eq!(maybe_negative(1), None);
    assert_eq!(maybe_negative(1), None);
    assert_eq!(NEG_RUNS.load(SeqCst), 1, "None is cached with cache_none");
    assert_eq!(lookup_maybe_negative(1), Some(None));
    assert_eq!(maybe_negative(2), Some(2));
    // The negative entry expires after none_ttl; the positive one (ttl 60 s) stays.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(lookup_maybe_negative(1), None);
    assert_eq!(lookup_maybe_negative(2), Some(Some(2)));
    populate_maybe_negative(3, None).unwrap();
    assert_eq!(maybe_negative(3), None);
    assert_eq!(NEG_RUNS.load(SeqCst), 2);
}

static FOUND_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "found:<id>")]
fn find(id: u32) -> Result<Option<u32>, String> {
    FOUND_RUNS.fetch_add(1, SeqCst);
    match id {
        0 => Err("no id 0".into()),
        _ => Ok((id % 2 == 0).then_some(id)),
    }
}

// What `cache_none`'s error says of `Result<Option<T>, E>` (ui `cache_none_on_result_option`):
// every `Ok` is cached, `Ok(None)` included; errors are not.
#[test]
fn result_of_option_caches_ok_none() {
    setup();
    assert_eq!(find(1), Ok(None));
    assert_eq!(find(1), Ok(None));
    assert_eq!(FOUND_RUNS.load(SeqCst), 1, "Ok(None) is cached");
    assert_eq!(find(2), Ok(Some(2)));
    assert_eq!(find(2), Ok(Some(2)));
    assert_eq!(FOUND_RUNS.load(SeqCst), 2);
    assert!(find(0).is_err());
    assert!(find(0).is_err());
    assert_eq!(FOUND_RUNS.load(SeqCst), 4, "errors are not cached");
}

#[derive(Debug, Clone)]
struct User {
    id: u64,
    name: String,
}

struct Repo {
    tenant: String,
    runs: AtomicUsize,
}

impl Repo {
    #[cached(ttl = 60, key = "t:<self.tenant>:user:<user.id>")]
    fn greeting(&self, user: &User) -> String {
        self.runs.fetch_add(1, SeqCst);
        format!("{}@{}", user.name, self.tenant)
    }

    #[cached(ttl = 60, key = "shared:<id>", skip(self))]
    async fn shared_by_all_instances(&self, id: u64) -> String {
        self.runs.fetch_add(1, SeqCst);
        format!("{id} via {}", self.tenant)
    }
}

#[tokio::test]
async fn methods_key_on_self_fields_and_param_fields() {
    setup();
    let a = Repo {
        tenant: "a".into(),
        runs: AtomicUsize::new(0),
    };
    let b = Repo {
        tenant: "b".into(),
        runs: AtomicUsize::new(0),
    };
    let ada = User {
        id: 1,
        name: "ada".into(),
    };
    let ada_renamed = User {
        id: 1,
        name: "ADA".into(),
    };
    assert_eq!(a.greeting(&ada), "ada@a");
    assert_eq!(
        a.greeting(&ada_renamed),
        "ada@a",
        "only user.id is in the key"
    );
    assert_eq!(b.greeting(&ada), "ada@b", "tenant is in the key");
    assert_eq!(a.runs.load(SeqCst), 1);
    assert_eq!(b.runs.load(SeqCst), 1);
    a.invalidate_greeting(&ada).unwrap();
    assert_eq!(a.lookup_greeting(&ada), None);
    assert_eq!(b.lookup_greeting(&ada).as_deref(), Some("ada@b"));
    assert!(Repo::greeting_cache().name().ends_with("Repo::greeting"));

    assert_eq!(a.shared_by_all_instances(9).await, "9 via a");
    assert_eq!(
        b.shared_by_all_instances(9).await,
        "9 via a",
        "skip(self) shares entries"
    );
    assert_eq!(b.runs.load(SeqCst), 1);
}

static SKIP_RUNS: AtomicUsize = AtomicUsize::new(0);

struct Pool;

#[cached(ttl = 60, key = "skip:<id>", skip(pool, trace))]
fn with_pool(pool: &Pool, id: u32, trace: bool) -> u32 {
    let _ = (pool, trace);
    SKIP_RUNS.fetch_add(1, SeqCst);
    id
}

#[test]
fn skipped_parameters_are_not_in_the_key() {
    setup();
    assert_eq!(with_pool(&Pool, 1, true), 1);
    assert_eq!(with_pool(&Pool, 1, false), 1);
    assert_eq!(SKIP_RUNS.load(SeqCst), 1);
    // Companions take only the key parameters.
    invalidate_with_pool(1).unwrap();
    assert_eq!(lookup_with_pool(1), None);
}

static PAIR_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "pair:<a>:<b>")]
fn pair(a: String, b: String) -> String {
    PAIR_RUNS.fetch_add(1, SeqCst);
    format!("{a}|{b}")
}

static DEFAULT_KEY_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60)]
fn default_key(a: &str, b: Option<&str>, c: Vec<u8>) -> String {
    DEFAULT_KEY_RUNS.fetch_add(1, SeqCst);
    format!("{a}/{b:?}/{c:?}")
}

#[test]
fn colliding_looking_arguments_get_distinct_entries() {
    setup();
    let tuples = [
        ("1:2", "3"),
        ("1", "2:3"),
        ("1%3A2", "3"),
        ("", "1:2:3"),
        ("1:2:3", ""),
    ];
    for (a, b) in tuples {
        assert_eq!(pair(a.into(), b.into()), format!("{a}|{b}"));
    }
    assert_eq!(PAIR_RUNS.load(SeqCst), tuples.len());
    for (a, b) in tuples {
        assert_eq!(lookup_pair(a.into(), b.into()), Some(format!("{a}|{b}")));
    }

    let calls: [(&str, Option<&str>, Vec<u8>); 6] = [
        ("a", None, vec![]),
        ("a", Some(""), vec![]),
        ("a", Some("%N"), vec![]),
        ("a:%N", None, vec![]),
        ("a", None, vec![1, 2]),
        ("a", None, vec![12]),
    ];
    for (a, b, c) in &calls {
        assert_eq!(default_key(a, *b, c.clone()), format!("{a}/{b:?}/{c:?}"));
    }
    assert_eq!(DEFAULT_KEY_RUNS.load(SeqCst), calls.len());
}

static CONCURRENT_RUNS: AtomicUsize = AtomicUsize::new(0);
static GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[cached(ttl = 60, key = "hot:<id>")]
async fn hot(id: u32) -> u32 {
    CONCURRENT_RUNS.fetch_add(1, SeqCst);
    GATE.notified().await;
    id * 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_misses_run_the_body_once() {
    setup();
    let tasks: Vec<_> = (0..500).map(|_| tokio::spawn(hot(7))).collect();
    // Every caller but the leader is parked on the flight before the body may finish.
    eventually(Duration::from_secs(10), "499 joined waiters", || {
        hot_cache().stats().joined == 499
    })
    .await;
    eventually(Duration::from_secs(10), "leader in the body", || {
        CONCURRENT_RUNS.load(SeqCst) == 1
    })
    .await;
    GATE.notify_waiters();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 70);
    }
    assert_eq!(CONCURRENT_RUNS.load(SeqCst), 1);
    assert_eq!(hot_cache().stats().body_calls, 1);
}

static PANIC_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "panicky:<id>")]
async fn panicky(id: u32) -> u32 {
    if PANIC_RUNS.fetch_add(1, SeqCst) == 0 {
        eventually(Duration::from_secs(10), "9 waiters", || {
            panicky_cache().stats().joined == 9
        })
        .await;
        panic!("leader fails");
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_leader_does_not_wedge_waiters() {
    setup();
    let tasks: Vec<_> = (0..10).map(|_| tokio::spawn(panicky(3))).collect();
    let mut ok = 0;
    let mut panicked = 0;
    for t in tasks {
        match t.await {
            Ok(v) => {
                assert_eq!(v, 3);
                ok += 1;
            }
            Err(e) => {
                assert!(e.is_panic());
                panicked += 1;
            }
        }
    }
    assert_eq!((ok, panicked), (9, 1));
    assert_eq!(PANIC_RUNS.load(SeqCst), 2, "one waiter took over, once");
}

static CANCEL_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "cancel:<id>")]
async fn cancellable(id: u32) -> u32 {
    if CANCEL_RUNS.fetch_add(1, SeqCst) == 0 {
        std::future::pending::<()>().await;
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_does_not_wedge_waiters() {
    setup();
    let leader = tokio::spawn(cancellable(4));
    eventually(Duration::from_secs(10), "leader in the body", || {
        CANCEL_RUNS.load(SeqCst) == 1
    })
    .await;
    let waiters: Vec<_> = (0..5).map(|_| tokio::spawn(cancellable(4))).collect();
    eventually(Duration::from_secs(10), "5 waiters", || {
        cancellable_cache().stats().joined == 5
    })
    .await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    for w in waiters {
        assert_eq!(w.await.unwrap(), 4);
    }
    assert_eq!(CANCEL_RUNS.load(SeqCst), 2);
}

static ERR_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "err:<id>")]
async fn shared_error(id: u32) -> Result<u32, DbError> {
    ERR_RUNS.fetch_add(1, SeqCst);
    eventually(Duration::from_secs(10), "7 waiters", || {
        shared_error_cache().stats().joined == 7
    })
    .await;
    Err(DbError(format!("down {id}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reaches_every_waiter_and_is_not_cached() {
    setup();
    let tasks: Vec<_> = (0..8).map(|_| tokio::spawn(shared_error(1))).collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Err(DbError("down 1".into())));
    }
    assert_eq!(ERR_RUNS.load(SeqCst), 1);
    assert_eq!(lookup_shared_error(1).await, None);
}

/// An error that cannot be cloned: waiters cannot receive a copy, so each runs the body.
#[derive(Debug)]
struct OpaqueError;

static OPAQUE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "opaque:<id>")]
async fn opaque(id: u32) -> Result<u32, OpaqueError> {
    let _ = id;
    if OPAQUE_RUNS.fetch_add(1, SeqCst) == 0 {
        eventually(Duration::from_secs(10), "3 waiters", || {
            opaque_cache().stats().joined == 3
        })
        .await;
    }
    Err(OpaqueError)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_clone_error_makes_waiters_run_the_body() {
    setup();
    let tasks: Vec<_> = (0..4).map(|_| tokio::spawn(opaque(1))).collect();
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    assert_eq!(OPAQUE_RUNS.load(SeqCst), 4);
}

static THREAD_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "threads:<id>")]
fn blocking_hot(id: u32) -> u32 {
    THREAD_RUNS.fetch_add(1, SeqCst);
    eventually_blocking(Duration::from_secs(10), "7 waiting threads", || {
        blocking_hot_cache().stats().joined == 7
    });
    id + 1
}

#[test]
fn concurrent_sync_misses_run_the_body_once() {
    setup();
    let threads: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| blocking_hot(41)))
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 42);
    }
    assert_eq!(THREAD_RUNS.load(SeqCst), 1);
}

#[cached(ttl = 60, key = "fib:<n>")]
fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

#[test]
fn recursive_sync_functions_work() {
    setup();
    assert_eq!(fib(80), 23_416_728_348_467_685);
    assert_eq!(fib_cache().stats().body_calls, 81);
}

static REENTERED: AtomicUsize = AtomicUsize::new(0);

/// Calls itself once with its own key, from inside its body.
#[cached(ttl = 60, key = "reenter-local:<id>")]
fn reenter_local(id: u64) -> u64 {
    if REENTERED.fetch_add(1, SeqCst) == 0 {
        return reenter_local(id) + 1;
    }
    id
}

/// A blocking miss of a cache without Redis runs its leader's body without a future: the
/// body is still marked as its flight's, so a call it makes for its own key leads apart
/// instead of waiting for itself.
#[test]
fn a_blocking_local_function_that_calls_itself_with_its_key_completes() {
    setup();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(reenter_local(5)).unwrap());
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(6));
    assert!([5, 6].contains(&reenter_local(5)));
    let s = reenter_local_cache().stats();
    assert_eq!((s.body_calls, s.misses), (2, 2), "{s:?}");
}

#[cached(ttl = 60, key = "depth:<n>")]
fn depth(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        depth(n - 1) + 1
    }
}

/// One miss nested per level, 20 000 deep on a 256 KiB thread: the stack grows on demand.
#[test]
fn deeply_recursive_blocking_misses_grow_the_stack() {
    setup();
    let t = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| depth(20_000))
        .unwrap();
    assert_eq!(t.join().unwrap(), 20_000);
    let s = depth_cache().stats();
    assert_eq!(
        (s.body_calls, s.misses, s.populates),
        (20_001, 20_001, 20_001),
        "{s:?}"
    );
}

#[cached(ttl = 60, key = "cap:<id>", capacity = 16)]
fn bounded(id: u32) -> u32 {
    id
}

#[test]
fn capacity_bounds_the_local_tier() {
    setup();
    for i in 0..2_000 {
        bounded(i);
    }
    let n = bounded_cache().local_entry_count();
    assert!(n <= 16, "{n} entries in a capacity-16 cache");
}

#[cached(ttl = 60, key = "arc:<id>")]
fn shared_value(id: u32) -> Arc<Vec<u32>> {
    Arc::new(vec![id; 3])
}

#[test]
fn arc_values_are_shared_not_copied() {
    setup();
    let a = shared_value(1);
    let b = shared_value(1);
    assert!(Arc::ptr_eq(&a, &b));
}

#[cached(ttl = 60)]
fn cube(x: u64) -> u64 {
    x * x * x
}

#[test]
fn local_invalidate_reports_ok_and_clear_local_drops_everything() {
    setup();
    cube(100);
    cube(101);
    let r: Result<(), CacheError> = invalidate_cube(100);
    assert_eq!(r, Ok(()));
    assert_eq!(lookup_cube(101), Some(1_030_301));
    cube_cache().clear_local();
    assert_eq!(lookup_cube(101), None);
}

#[cached(ttl = 60, key = "named:<id>", name = "catalog.named")]
fn named(id: u32) -> u32 {
    id
}

#[test]
fn the_name_option_names_the_cache_in_stats() {
    setup();
    named(1);
    named(1);
    assert_eq!(named_cache().name(), "catalog.named");
    let info = cache_runtime::caches()
        .into_iter()
        .find(|c| c.name == "catalog.named")
        .expect("listed under its name");
    assert_eq!(info.stats.local_hits, 1);
}

static OBSERVED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "obs:<id>", mode = "observe")]
fn observed(id: u32) -> u32 {
    OBSERVED_RUNS.fetch_add(1, SeqCst);
    id
}

#[test]
fn observe_mode_serves_nothing_and_estimates_the_hit_ratio() {
    setup();
    assert_eq!(observed_cache().mode(), cache_runtime::Mode::Observe);
    // 100 calls over 10 keys: 90 would have been hits.
    for i in 0..100 {
        assert_eq!(observed(i % 10), i % 10);
    }
    assert_eq!(OBSERVED_RUNS.load(SeqCst), 100, "every call ran the body");
    assert_eq!(lookup_observed(1), None, "nothing was stored");
    let report = observed_cache().observe_report().expect("observed");
    assert_eq!((report.calls, report.would_be_hits), (100, 90));
    // A body that takes nanoseconds is not worth caching, whatever its hit ratio.
    assert_eq!(
        report.verdict,
        cache_runtime::Verdict::NotWorthIt,
        "{report}"
    );
    assert!(
        report.to_string().contains("estimated hit ratio 90 %"),
        "{report}"
    );

    // Switched at run time: now it serves.
    observed_cache().set_mode(cache_runtime::Mode::Normal);
    observed(1);
    observed(1);
    assert_eq!(OBSERVED_RUNS.load(SeqCst), 101);
}

static SLOW_OBSERVED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "slow-obs:<id>", mode = "observe")]
async fn slow_observed(id: u32) -> u32 {
    SLOW_OBSERVED_RUNS.fetch_add(1, SeqCst);
    // A slow query is what is being modelled here.
    tokio::time::sleep(Duration::from_millis(3)).await;
    id
}

#[tokio::test]
async fn observe_mode_recommends_caching_a_slow_repeated_call() {
    setup();
    for i in 0..60 {
        slow_observed(i % 3).await;
    }
    let report = slow_observed_cache().observe_report().unwrap();
    assert_eq!((report.calls, report.would_be_hits), (60, 57));
    assert!(report.body_p50 >= Duration::from_millis(3));
    assert_eq!(report.verdict, cache_runtime::Verdict::WorthIt, "{report}");
}

static BYPASS_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "bypass:<id>")]
fn bypassable(id: u32) -> u32 {
    BYPASS_RUNS.fetch_add(1, SeqCst);
    id
}

#[test]
fn bypass_mode_is_a_pass_through() {
    setup();
    bypassable(1);
    bypassable(1);
    assert_eq!(BYPASS_RUNS.load(SeqCst), 1);
    bypassable_cache().set_mode(cache_runtime::Mode::Bypass);
    bypassable(1);
    bypassable(2);
    assert_eq!(
        BYPASS_RUNS.load(SeqCst),
        3,
        "bypass runs the body even for a cached key"
    );
    assert_eq!(lookup_bypassable(2), None, "and stores nothing");
    assert!(bypassable_cache().observe_report().is_none());
}

static FS_FAIL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static FS_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "100ms", key = "fs:<id>", stale = "10m", stale_retry = "1h")]
async fn fail_safe(id: u32) -> Result<String, DbError> {
    FS_RUNS.fetch_add(1, SeqCst);
    if FS_FAIL.load(SeqCst) {
        Err(DbError("database down".into()))
    } else {
        Ok(format!("v{id}"))
    }
}

#[tokio::test]
async fn a_failing_body_gets_the_stale_value_and_is_not_hammered() {
    setup();
    assert_eq!(fail_safe(1).await.unwrap(), "v1");
    // The TTL passing is what is under test.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        lookup_fail_safe(1).await,
        None,
        "a stale value is never a hit"
    );
    FS_FAIL.store(true, SeqCst);
    assert_eq!(
        fail_safe(1).await.unwrap(),
        "v1",
        "served stale instead of the error"
    );
    assert_eq!(FS_RUNS.load(SeqCst), 2);
    assert_eq!(fail_safe(1).await.unwrap(), "v1");
    assert_eq!(FS_RUNS.load(SeqCst), 2, "no retry before stale_retry");
    assert_eq!(fail_safe_cache().stats().stale_served, 2);
    assert_eq!(
        fail_safe(2).await,
        Err(DbError("database down".into())),
        "no fallback: the error"
    );
    // An invalidated value is never a fallback.
    invalidate_fail_safe(1).await.unwrap();
    assert_eq!(fail_safe(1).await, Err(DbError("database down".into())));
    FS_FAIL.store(false, SeqCst);
    assert_eq!(fail_safe(1).await.unwrap(), "v1");
}

static PANIC_FS_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "50ms", key = "fs-panic:<id>", stale = "10m")]
fn panicky_source(id: u32) -> u32 {
    if PANIC_FS_RUNS.fetch_add(1, SeqCst) > 0 {
        panic!("driver bug");
    }
    id
}

#[test]
fn a_panicking_body_gets_the_stale_value() {
    setup();
    assert_eq!(panicky_source(4), 4);
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(
        panicky_source(4),
        4,
        "the panic was contained and the stale value served"
    );
    assert_eq!(panicky_source_cache().stats().stale_served, 1);
}

static SLOW_FS_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "50ms", key = "fs-slow:<id>", stale = "10m", timeout = "50ms")]
async fn slow_source(id: u32) -> Result<u32, DbError> {
    if SLOW_FS_RUNS.fetch_add(1, SeqCst) > 0 {
        // A source that hangs is what is modelled here.
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    Ok(id)
}

#[tokio::test]
async fn a_body_past_its_timeout_gets_the_stale_value() {
    setup();
    assert_eq!(slow_source(5).await, Ok(5));
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        slow_source(5).await,
        Ok(5),
        "served stale after the timeout"
    );
    assert_eq!(slow_source_cache().stats().stale_served, 1);
}

#[cached(ttl = 600, key = "blob:<id>", max_bytes = "256KiB")]
fn blob(id: u64) -> Vec<u8> {
    vec![id as u8; 1000]
}

#[test]
fn max_bytes_bounds_the_local_tier_by_memory() {
    setup();
    for id in 0..5_000 {
        blob(id);
    }
    let bytes = blob_cache().local_weighted_size();
    let entries = blob_cache().local_entry_count();
    assert!(bytes <= 256 * 1024, "{bytes} bytes in a 256 KiB cache");
    assert!(
        entries > 50 && entries <= 256,
        "{entries} entries of ~1.2 KB each"
    );
}

static JOIN_VERSION: AtomicUsize = AtomicUsize::new(1);
static JOIN_RUNS: AtomicUsize = AtomicUsize::new(0);
static JOIN_GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[cached(ttl = 60, key = "join:<id>")]
async fn joinable(id: u32) -> usize {
    let _ = id;
    let version = JOIN_VERSION.load(SeqCst);
    if JOIN_RUNS.fetch_add(1, SeqCst) == 0 {
        // The first body read the old row and is still running.
        JOIN_GATE.notified().await;
    }
    version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_after_an_invalidation_does_not_join_a_body_that_started_before_it() {
    setup();
    let early = tokio::spawn(joinable(1));
    eventually(Duration::from_secs(10), "the first body running", || {
        JOIN_RUNS.load(SeqCst) == 1
    })
    .await;
    JOIN_VERSION.store(2, SeqCst);
    invalidate_joinable(1).await.unwrap();
    // Started after the invalidation: must not be handed the first body's old row.
    assert_eq!(joinable(1).await, 2);
    JOIN_GATE.notify_waiters();
    assert_eq!(
        early.await.unwrap(),
        1,
        "that caller started before the write"
    );
    assert_eq!(
        lookup_joinable(1).await,
        Some(2),
        "the old row was not stored over the new one"
    );
}
