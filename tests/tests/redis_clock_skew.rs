//! Hosts whose wall clocks are minutes apart share one Redis. Every process stamps values and
//! judges their expiry on Redis's clock (docs/PROTOCOL.md §6), so each serves the others'
//! values as fresh for their TTL. With the writer's wall clock, a reader 301 s ahead saw every
//! `ttl = 60` value as expired and ran the body on every call, and a writer 301 s behind wrote
//! values that every other process saw as expired.
//!
//! The skewed processes run under libfaketime (Debian's `faketime` package), which shifts
//! what `clock_gettime` returns in that process only; Redis runs on the true time.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cache_tests::node::{body_runs, set_row};
use cache_tests::{Node, RedisServer};
use redis::Commands;

const V1: &str = env!("CARGO_BIN_EXE_cache-node");
const SKEW_S: i64 = 301;

/// libfaketime's preload library, or a loud failure with the install hint.
fn libfaketime() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime/libfaketime.so.1"))
        .chain([std::path::PathBuf::from(
            "/usr/lib/faketime/libfaketime.so.1",
        )])
        .find(|p| p.exists());
    match found {
        Some(p) => p.to_string_lossy().into_owned(),
        None => panic!(
            "libfaketime not found: install Debian's faketime package \
             (apt-get install -y faketime); scripts/test.sh does this"
        ),
    }
}

/// The environment that shifts a process's clocks by `offset_s` seconds.
fn shifted(lib: &str, offset_s: i64) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", lib.to_string()),
        ("FAKETIME", format!("{offset_s:+}s")),
    ]
}

/// A node under `env`, once its bus is subscribed and trusted: the first subscription clears
/// the local copies made before it, and none is served until its first probe is answered
/// (docs/PROTOCOL.md §5.4), which a `peek` right after a read would race.
fn start(server: &RedisServer, env: &[(&'static str, String)]) -> Node {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let node = Node::start(V1, server, &env);
    node.wait_subscribed(1, Duration::from_secs(20));
    node
}

/// The wall clock `date` reads under `env`, minus the true one, in seconds.
fn observed_shift(env: &[(&'static str, String)]) -> i64 {
    let out = Command::new("date")
        .arg("+%s")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run date");
    let shifted: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    shifted - now
}

/// `redis_hits` from a node's `stats` (the `CacheStats` debug output).
fn redis_hits(node: &Node) -> u64 {
    let stats = node.call("stats");
    let at = stats.find("redis_hits: ").expect("redis_hits in stats") + "redis_hits: ".len();
    stats[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn values_written_on_any_host_clock_are_fresh_on_every_other() {
    let lib = libfaketime();
    let (ahead_env, behind_env) = (shifted(&lib, SKEW_S), shifted(&lib, -SKEW_S));
    // The shift really applies to a child process here (else this test would prove nothing).
    for (env, want) in [(&ahead_env, SKEW_S), (&behind_env, -SKEW_S)] {
        let got = observed_shift(env);
        assert!(
            (got - want).abs() <= 5,
            "faketime shifted `date` by {got} s, wanted {want} s"
        );
    }
    let server = RedisServer::start();
    let nodes = [
        ("true clock", start(&server, &[])),
        ("301 s ahead", start(&server, &ahead_env)),
        ("301 s behind", start(&server, &behind_env)),
    ];
    let mut id = 0;
    for (w, (writer_name, writer)) in nodes.iter().enumerate() {
        for _ in 0..3 {
            id += 1;
            let value = format!("v{id}");
            set_row(&server, id, &value);
            assert_eq!(writer.call(&format!("get {id}")), value);
            assert_eq!(body_runs(&server, "profile", id), 1);
            for (r, (reader_name, reader)) in nodes.iter().enumerate() {
                if r == w {
                    continue;
                }
                let hits = redis_hits(reader);
                assert_eq!(
                    reader.call(&format!("get {id}")),
                    value,
                    "{reader_name} reading what {writer_name} wrote"
                );
                assert_eq!(
                    body_runs(&server, "profile", id),
                    1,
                    "{reader_name} ran the body for a fresh value {writer_name} wrote: it \
                     judged its expiry on its own clock"
                );
                assert_eq!(
                    redis_hits(reader),
                    hits + 1,
                    "{reader_name} served {writer_name}'s value from Redis"
                );
                // And its local copy lives on: a second call is local.
                assert_eq!(reader.call(&format!("peek {id}")), value);
            }
        }
    }
}

/// A value still expires on time for a skewed host: `ttl` is Redis's, whoever wrote it.
#[test]
fn a_skewed_host_still_sees_values_expire_after_their_ttl() {
    let lib = libfaketime();
    let server = RedisServer::start();
    let ahead = start(&server, &shifted(&lib, SKEW_S));
    set_row(&server, 1, "old");
    assert_eq!(ahead.call("get 1"), "old");
    // The envelope's expiry, read back from Redis: within the TTL of Redis's own time, not
    // 301 s later.
    let mut conn = server.client();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{t:*}:v2:*profile:1")
        .query(&mut conn)
        .unwrap();
    assert_eq!(keys.len(), 1, "one value key: {keys:?}");
    let bytes: Vec<u8> = conn.get(&keys[0]).unwrap();
    let expires_ms = u64::from_le_bytes(bytes[28..36].try_into().unwrap());
    let (s, _us): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
    let ttl = Duration::from_millis(expires_ms.saturating_sub(s * 1000));
    assert!(
        ttl <= Duration::from_secs(61) && ttl >= Duration::from_secs(55),
        "a value written with ttl = 60 by a host 301 s ahead expires {ttl:?} from Redis's now"
    );
}
