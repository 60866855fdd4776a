//! A stampede on a missing key reads Redis once (docs/PROTOCOL.md §13 F9): callers that come
//! while the leader's read is in flight wait for the flight instead of reading for
//! themselves, and take the value its body computes (the body starts after they joined). A
//! value the leader's read finds is not theirs (it may predate a write that returned before
//! they started): they go round once and share the next flight's read, which was sent after
//! they started, and the value they refuse is not even copied for them. Deterministic: a
//! proxy holds the server's replies while the callers join.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, Config};
use cache_tests::proxy::Proxy;
use cache_tests::RedisServer;

static RUNS: AtomicU64 = AtomicU64::new(0);
static CLONES: AtomicU64 = AtomicU64::new(0);

/// A row whose copies are counted.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Row(u64);

impl Clone for Row {
    fn clone(&self) -> Self {
        CLONES.fetch_add(1, SeqCst);
        Row(self.0)
    }
}

#[cached(tier = "redis", ttl = 60, key = "stampede:<id>")]
async fn row(id: u64) -> Row {
    RUNS.fetch_add(1, SeqCst);
    Row(id * 100)
}

const CALLERS: usize = 50;

/// Scripts the server executed since [`RedisServer::log_every_command`].
fn scripts(server: &RedisServer) -> usize {
    server.slowlog_commands_named("evalsha").len() + server.slowlog_commands_named("eval").len()
}

/// One call of `row(1)` whose read executes while the proxy holds its reply, then
/// [`CALLERS`] calls that start meanwhile; every one must get the row. The `SLOWLOG` logs
/// from the first call on.
async fn stampede_during_a_held_read(server: &RedisServer, proxy: &Proxy, value_key: &str) {
    server.log_every_command();
    proxy.hold_replies();
    let leader = tokio::spawn(row(1));
    cache_tests::eventually(
        Duration::from_secs(10),
        "the leader's read executed",
        || server.slowlog_reads_of(value_key) > 0,
    )
    .await;
    let joined = row_cache().stats().joined as usize;
    let callers: Vec<_> = (0..CALLERS).map(|_| tokio::spawn(row(1))).collect();
    cache_tests::eventually(
        Duration::from_secs(10),
        "every caller joined the flight or sent a read",
        || {
            row_cache().stats().joined as usize + server.slowlog_reads_of(value_key)
                > joined + CALLERS
        },
    )
    .await;
    proxy.release_replies();
    assert_eq!(leader.await.unwrap(), Row(100));
    for t in callers {
        assert_eq!(t.await.unwrap(), Row(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_come_during_the_leaders_read_share_it() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    cache_runtime::init(
        Config::builder()
            .redis_url(proxy.url())
            .key_prefix("t")
            .redis_timeout(Duration::from_secs(10))
            .build(),
    )
    .unwrap();
    // This runtime on connections of its own.
    for _ in 0..64 {
        assert_eq!(row(0).await, Row(0));
    }
    let schema = row_cache().key_schema().unwrap();
    let (value_key, _, _) = cache_runtime::key::redis_keys("t", schema, "stampede:1");

    // A missing key: the leader's read executes, its reply held; then the stampede.
    let runs = RUNS.load(SeqCst);
    stampede_during_a_held_read(&server, &proxy, &value_key).await;
    assert_eq!(RUNS.load(SeqCst), runs + 1, "the body ran once");
    assert_eq!(
        server.slowlog_reads_of(&value_key),
        1,
        "one read for the leader and {CALLERS} callers (each used to send its own)"
    );

    // A value in Redis: callers that come during the leader's read do not take what it
    // finds; they share a read sent after they joined.
    let clones = CLONES.load(SeqCst);
    stampede_during_a_held_read(&server, &proxy, &value_key).await;
    let clones = CLONES.load(SeqCst) - clones;
    assert_eq!(RUNS.load(SeqCst), runs + 1, "Redis hits");
    assert_eq!(scripts(&server), 0, "no store ran");
    let sent = server.slowlog_reads_of(&value_key);
    // The leader's, and at least one sent after the callers joined; how many more depends on
    // whether all of them join the second flight before its reply comes (timing, so only
    // reported): each used to send its own.
    assert!(
        sent >= 2,
        "the late callers read after they joined: {sent} reads"
    );
    // Each caller that takes a flight's value gets a copy of it, and each flight with
    // followers keeps one for them: at most one copy per caller and one per read. A late
    // caller's refused value used to be copied too (another copy per caller).
    assert!(
        clones <= (CALLERS + sent) as u64,
        "{clones} copies of the row for {CALLERS} callers and {sent} reads"
    );
    eprintln!("hit: {sent} reads, {clones} copies for 1 + {CALLERS} callers");
}
