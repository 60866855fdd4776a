//! `rediss://` on a Redis Cluster (issue 13): a TLS-only cluster (3 masters + 3 replicas,
//! plain ports disabled, cluster bus and replication over TLS) whose certificates come from a
//! private CA made by the test, trusted through `Config::tls_root_certificate`.
//!
//! - In this process: seeds `rediss://127.0.0.1:<port>` and the CA. The health check passes,
//!   the bus subscribes, values land on every master, a second call is a Redis hit, an
//!   invalidation is confirmed and the next call runs the body again.
//! - In child processes (this binary re-run on one `#[ignore]`d test, since the runtime is
//!   configured once per process): an ACL user with a password on every node
//!   (`rediss://cache:<pw>@…`), whose connections the servers see as that user; without the
//!   CA, and with a wrong password, the health check is an `Err` and the body answers
//!   (fail-safe), and nothing is written.
//!
//! Every test uses its own key prefix on one cluster shared by the tests of this binary.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::OnceLock;
use std::time::Duration;

use cache_runtime::{cached, Config};
use cache_tests::{eventually, RedisCluster, RedisOptions, TlsFiles};

const USER: &str = "cache";
const PASSWORD: &str = "cluster-tls-pw";
/// Generous: a connection is a TLS handshake with each of 6 nodes (twice: data and writes),
/// in a debug build on a loaded machine; a timeout would run bodies the tests count.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const OP_TIMEOUT: Duration = Duration::from_secs(5);

struct Setup {
    cluster: RedisCluster,
    tls: TlsFiles,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let tls = TlsFiles::generate();
        let cluster = RedisCluster::start_tls_with(
            3,
            &tls,
            RedisOptions::new().user(&format!("{USER} on >{PASSWORD} ~* &* +@all")),
        );
        Setup { cluster, tls }
    })
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "redis", ttl = 60, key = "tls:<id>")]
async fn value(id: u64) -> String {
    RUNS.fetch_add(1, SeqCst);
    format!("value {id}")
}

/// The Redis key of `tls:<id>` under `prefix` (docs/PROTOCOL.md §2).
fn vkey(prefix: &str, id: u64) -> String {
    // `value`'s key schema: version 1 of a `String` (the same in the child processes).
    let schema = cache_runtime::key::KeySchema::of::<String>(1);
    cache_runtime::key::redis_keys(prefix, schema, &format!("tls:{id}")).0
}

/// `per` ids for each master whose keys (under `prefix`) that master serves.
fn ids_on_every_master(s: &Setup, prefix: &str, per: usize) -> Vec<u64> {
    let masters: Vec<u16> = s.cluster.masters().iter().map(|m| m.port()).collect();
    assert_eq!(masters.len(), 3, "3 masters");
    let mut picked: Vec<Vec<u64>> = vec![Vec::new(); masters.len()];
    let mut id = 1;
    while picked.iter().any(|p| p.len() < per) {
        let slot = cache_runtime::key::cluster_slot(&vkey(prefix, id));
        let owner = s
            .cluster
            .topology()
            .into_iter()
            .find(|n| n.is_live_master() && n.serves(slot))
            .expect("a master serves every slot")
            .port;
        let i = masters.iter().position(|&m| m == owner).unwrap();
        if picked[i].len() < per {
            picked[i].push(id);
        }
        id += 1;
    }
    picked.into_iter().flatten().collect()
}

/// Whether `key` is stored on the master that serves it (asked over TLS).
fn stored(s: &Setup, key: &str) -> bool {
    let owner = s.cluster.master_for_key(key);
    owner.cmd::<u64>(&["EXISTS", key]).expect("EXISTS over TLS") == 1
}

/// Asserts that the values of `ids` (under `prefix`) are stored, each on its master, and
/// that they cover all 3 masters.
fn assert_on_every_master(s: &Setup, prefix: &str, ids: &[u64]) {
    let mut owners = BTreeSet::new();
    for &id in ids {
        let key = vkey(prefix, id);
        assert!(stored(s, &key), "{key} stored on its master over TLS");
        owners.insert(s.cluster.master_for_key(&key).port());
    }
    assert_eq!(owners.len(), 3, "values on all 3 masters: {owners:?}");
}

/// Keys under `prefix` on any master.
fn keys_with_prefix(s: &Setup, prefix: &str) -> Vec<String> {
    s.cluster
        .masters()
        .iter()
        .flat_map(|m| m.scan(&format!("{{{prefix}:*")))
        .collect()
}

#[tokio::test]
async fn values_are_cached_on_every_master_of_a_tls_cluster() {
    let s = setup();
    let seeds = s.cluster.seed_urls();
    assert!(
        seeds.iter().all(|u| u.starts_with("rediss://")),
        "{seeds:?}"
    );
    // The plain port is disabled: only TLS answers.
    for node in s.cluster.nodes() {
        assert_eq!(node.config_get("port"), "0", "node {}", node.port());
        assert_eq!(node.config_get("tls-cluster"), "yes");
        assert_eq!(node.config_get("tls-replication"), "yes");
    }
    cache_runtime::init(
        Config::builder()
            .redis_cluster(seeds)
            .key_prefix("t")
            .tls_root_certificate(s.tls.ca.clone())
            .redis_timeout(OP_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build(),
    )
    .unwrap();
    cache_runtime::health_check()
        .await
        .expect("health check of a TLS cluster");
    eventually(
        Duration::from_secs(10),
        "the bus to subscribe over TLS",
        || cache_runtime::bus_status().connected,
    )
    .await;

    let ids = ids_on_every_master(s, "t", 3);
    for &id in &ids {
        assert_eq!(value(id).await, format!("value {id}"));
    }
    assert_eq!(RUNS.load(SeqCst), ids.len(), "each body ran once");
    assert_on_every_master(s, "t", &ids);

    for &id in &ids {
        assert_eq!(value(id).await, format!("value {id}"));
    }
    assert_eq!(RUNS.load(SeqCst), ids.len(), "second calls served by Redis");
    assert_eq!(value_cache().stats().redis_hits, ids.len() as u64);

    let id = ids[ids.len() - 1];
    invalidate_value(id)
        .await
        .expect("invalidation confirmed over TLS");
    assert!(!stored(s, &vkey("t", id)), "the value is gone");
    assert_eq!(value(id).await, format!("value {id}"));
    assert_eq!(RUNS.load(SeqCst), ids.len() + 1, "the body ran again");
    assert!(stored(s, &vkey("t", id)), "and its value is stored again");
}

#[test]
fn an_acl_user_with_a_password_works_over_tls_on_every_master() {
    let s = setup();
    let ids = ids_on_every_master(s, "cred", 2);
    let seeds = seeds_with_userinfo(s, &format!("{USER}:{PASSWORD}@"));
    run_child("child_with_credentials", &seeds, Some(&s.tls.ca), &ids, s);
    // The child wrote (and after invalidating, wrote again) every value.
    assert_on_every_master(s, "cred", &ids);
}

#[test]
fn without_the_ca_the_health_check_fails_and_bodies_answer() {
    let s = setup();
    run_child(
        "child_cannot_connect",
        &s.cluster.seed_urls(),
        None,
        &[1, 2, 3],
        s,
    );
    assert_eq!(keys_with_prefix(s, "noca"), Vec::<String>::new());
}

#[test]
fn a_wrong_password_fails_the_health_check_and_bodies_answer() {
    let s = setup();
    let seeds = seeds_with_userinfo(s, &format!("{USER}:wrong-{PASSWORD}@"));
    run_child(
        "child_cannot_connect",
        &seeds,
        Some(&s.tls.ca),
        &[1, 2, 3],
        s,
    );
    assert_eq!(keys_with_prefix(s, "wrongpw"), Vec::<String>::new());
    // The AUTH reached the servers over TLS and was refused there.
    let refused = s.cluster.nodes().iter().any(|n| {
        let log: Vec<redis::Value> = n.cmd(&["ACL", "LOG"]).unwrap_or_default();
        log.iter().any(|entry| {
            let fields = strings(entry);
            fields
                .windows(2)
                .any(|w| w[0] == "reason" && w[1] == "auth")
                && fields
                    .windows(2)
                    .any(|w| w[0] == "username" && w[1] == USER)
        })
    });
    assert!(refused, "an ACL LOG entry for {USER}'s failed AUTH");
}

/// The strings of a reply (an `ACL LOG` entry: field, value, field, value…), in order.
fn strings(v: &redis::Value) -> Vec<String> {
    match v {
        redis::Value::Array(items) => items.iter().flat_map(strings).collect(),
        redis::Value::Map(pairs) => pairs
            .iter()
            .flat_map(|(k, v)| strings(k).into_iter().chain(strings(v)))
            .collect(),
        other => redis::from_redis_value_ref::<String>(other)
            .map(|s| vec![s])
            .unwrap_or_default(),
    }
}

fn seeds_with_userinfo(s: &Setup, userinfo: &str) -> Vec<String> {
    s.cluster
        .seed_urls()
        .iter()
        .map(|u| u.replacen("rediss://", &format!("rediss://{userinfo}"), 1))
        .collect()
}

/// Runs the `#[ignore]`d test `name` of this binary in a child process, with the seeds, the
/// CA (if any), the ids and the masters' ports in its environment; asserts that it ran and
/// passed.
fn run_child(name: &str, seeds: &[String], ca: Option<&str>, ids: &[u64], s: &Setup) {
    let join = |v: Vec<String>| v.join(",");
    let prefix = match name {
        "child_with_credentials" => "cred",
        _ if ca.is_none() => "noca",
        _ => "wrongpw",
    };
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TLS_CHILD_SEEDS", join(seeds.to_vec()))
        .env("TLS_CHILD_CA", ca.unwrap_or(""))
        .env("TLS_CHILD_PREFIX", prefix)
        .env(
            "TLS_CHILD_IDS",
            join(ids.iter().map(u64::to_string).collect()),
        )
        .env(
            "TLS_CHILD_MASTERS",
            join(
                s.cluster
                    .masters()
                    .iter()
                    .map(|m| m.port().to_string())
                    .collect(),
            ),
        )
        .output()
        .expect("run this test binary again");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("child `{name}` ({prefix}):\n{stderr}");
    assert!(
        out.status.success() && stdout.contains(&format!("test {name} ... ok")),
        "child `{name}` ({prefix}) failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

/// What a child test was given, or `None` when it was not started by [`run_child`].
struct ChildEnv {
    seeds: Vec<String>,
    ca: Option<String>,
    prefix: String,
    ids: Vec<u64>,
    masters: Vec<u16>,
}

fn child_env() -> Option<ChildEnv> {
    let var = |k: &str| std::env::var(k).ok();
    let list = |s: String| -> Vec<String> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    };
    Some(ChildEnv {
        seeds: list(var("TLS_CHILD_SEEDS")?),
        ca: var("TLS_CHILD_CA").filter(|c| !c.is_empty()),
        prefix: var("TLS_CHILD_PREFIX")?,
        ids: list(var("TLS_CHILD_IDS")?)
            .iter()
            .map(|i| i.parse().unwrap())
            .collect(),
        masters: list(var("TLS_CHILD_MASTERS")?)
            .iter()
            .map(|p| p.parse().unwrap())
            .collect(),
    })
}

fn child_init(env: &ChildEnv) {
    let mut b = Config::builder()
        .redis_cluster(env.seeds.clone())
        .key_prefix(env.prefix.clone())
        .redis_timeout(OP_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(ca) = &env.ca {
        b = b.tls_root_certificate(ca.clone());
    }
    cache_runtime::init(b.build()).unwrap();
}

/// `CLIENT LIST TYPE normal` of a master, asked over TLS as the default user.
fn client_list(port: u16, ca: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{port}/"),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.as_bytes().to_vec()),
        },
    )
    .unwrap();
    let mut c = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("connect to a master over TLS");
    redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("normal")
        .query(&mut c)
        .expect("CLIENT LIST")
}

#[tokio::test]
#[ignore = "run in a child process by an_acl_user_with_a_password_works_over_tls_on_every_master"]
async fn child_with_credentials() {
    let Some(env) = child_env() else {
        eprintln!("not started by run_child: nothing to do");
        return;
    };
    assert!(env.seeds.iter().all(|u| u.contains(&format!("{USER}:"))));
    child_init(&env);
    cache_runtime::health_check()
        .await
        .expect("health check as the ACL user over TLS");
    for &id in &env.ids {
        assert_eq!(value(id).await, format!("value {id}"));
    }
    assert_eq!(RUNS.load(SeqCst), env.ids.len());
    for &id in &env.ids {
        assert_eq!(value(id).await, format!("value {id}"));
    }
    assert_eq!(RUNS.load(SeqCst), env.ids.len(), "second calls are hits");
    assert_eq!(value_cache().stats().redis_hits, env.ids.len() as u64);
    // Every master (each holds some of the values) sees the runtime's connections as the
    // ACL user.
    let ca = env.ca.as_deref().expect("the CA");
    for &port in &env.masters {
        let clients = client_list(port, ca);
        assert!(
            clients.contains(&format!("user={USER} ")),
            "master {port} has a connection of {USER}: {clients}"
        );
    }
    for &id in &env.ids {
        invalidate_value(id)
            .await
            .expect("invalidation confirmed as the ACL user");
    }
    for &id in &env.ids {
        assert_eq!(value(id).await, format!("value {id}"));
    }
    assert_eq!(RUNS.load(SeqCst), 2 * env.ids.len(), "the bodies ran again");
}

#[tokio::test]
#[ignore = "run in a child process by the tests without the CA and with a wrong password"]
async fn child_cannot_connect() {
    let Some(env) = child_env() else {
        eprintln!("not started by run_child: nothing to do");
        return;
    };
    child_init(&env);
    let err = cache_runtime::health_check()
        .await
        .expect_err("the health check must fail")
        .to_string();
    assert!(
        !err.contains(PASSWORD),
        "a password leaked into the error: {err}"
    );
    eprintln!("health check error ({}): {err}", env.prefix);
    // Says why: the certificate (no CA) or the password.
    let why = if env.ca.is_none() {
        "certificate"
    } else {
        "authentication"
    };
    assert!(
        err.to_lowercase().contains(why),
        "the error does not mention the {why}: {err}"
    );
    for round in 1..=2 {
        for &id in &env.ids {
            assert_eq!(value(id).await, format!("value {id}"), "fail-safe");
        }
        assert_eq!(
            RUNS.load(SeqCst),
            round * env.ids.len(),
            "no Redis: the bodies run every time"
        );
    }
    assert_eq!(value_cache().stats().redis_hits, 0);
}
