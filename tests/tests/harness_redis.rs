//! Self-test of the single-server harness: extra configuration, flushes, restarts,
//! subscriber kills and ACL users really happen.

use std::time::Duration;

use cache_tests::{wait_until, RedisOptions, RedisServer};

fn set(server: &RedisServer, k: &str, v: &str) {
    server.cmd::<()>(&["SET", k, v]).expect("SET");
}

fn exists(server: &RedisServer, k: &str) -> bool {
    server.cmd::<u64>(&["EXISTS", k]).expect("EXISTS") == 1
}

#[test]
fn options_reach_the_server() {
    let server = RedisServer::start_with_options(
        RedisOptions::new()
            .maxmemory("3mb", "allkeys-random")
            .pubsub_buffer_limit("64kb")
            .user("probe on >pw ~{cr:* -@all +get +set"),
    );
    assert_eq!(
        server.config_get("maxmemory"),
        (3 * 1024 * 1024).to_string()
    );
    assert_eq!(server.config_get("maxmemory-policy"), "allkeys-random");
    assert_eq!(server.config_get("appendonly"), "no");
    assert_eq!(server.config_get("repl-diskless-sync-delay"), "0");
    assert!(
        server
            .config_get("client-output-buffer-limit")
            .contains("pubsub 65536 0 0"),
        "{}",
        server.config_get("client-output-buffer-limit")
    );
    // The ACL user may touch its keys and nothing else.
    let mut c = redis::Client::open(server.url_for_user("probe", "pw"))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("{cr:1}:k")
        .arg("v")
        .query(&mut c)
        .unwrap();
    let denied = redis::cmd("SET")
        .arg("other")
        .arg("v")
        .query::<()>(&mut c)
        .unwrap_err();
    assert!(
        denied.to_string().to_uppercase().contains("NOPERM"),
        "{denied}"
    );
    let denied = redis::cmd("DEL")
        .arg("{cr:1}:k")
        .query::<u64>(&mut c)
        .unwrap_err();
    assert!(
        denied.to_string().to_uppercase().contains("NOPERM"),
        "{denied}"
    );
}

#[test]
fn memory_pressure_evicts_under_an_allkeys_policy() {
    let server =
        RedisServer::start_with_options(RedisOptions::new().maxmemory("2mb", "allkeys-lru"));
    let value = "x".repeat(1000);
    for i in 0..5_000 {
        set(&server, &format!("k{i}"), &value);
    }
    let evicted: u64 = server
        .info_field("evicted_keys")
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(evicted > 0, "5 MB written into 2 MB: something was evicted");
    assert!(server.scan("k*").len() < 5_000);
}

#[test]
fn noeviction_refuses_writes_but_not_deletes() {
    let server = RedisServer::start_with_options(RedisOptions::new());
    set(&server, "k", "v");
    server.config_set("maxmemory-policy", "noeviction");
    server.config_set("maxmemory", "1");
    let err = server.cmd::<()>(&["SET", "x", "1"]).unwrap_err();
    assert!(err.to_string().contains("OOM"), "{err}");
    assert_eq!(server.cmd::<u64>(&["DEL", "k"]).unwrap(), 1);
}

#[test]
fn flushes_and_restarts_lose_data() {
    let server = RedisServer::start();
    set(&server, "a", "1");
    server.flushdb();
    assert!(!exists(&server, "a"));
    set(&server, "a", "1");
    server.flushall();
    assert!(!exists(&server, "a"));
    set(&server, "a", "1");
    let run_id = server.info_field("run_id").unwrap();
    server.restart_empty();
    assert!(!exists(&server, "a"));
    assert_ne!(
        server.info_field("run_id").unwrap(),
        run_id,
        "a new process"
    );
}

#[test]
fn subscribers_can_be_killed() {
    let server = RedisServer::start();
    let mut sub = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe("ch").unwrap();
    wait_until(Duration::from_secs(5), "the subscriber to register", || {
        server
            .cmd::<Vec<redis::Value>>(&["PUBSUB", "NUMSUB", "ch"])
            .ok()
            .and_then(|v| v.get(1).cloned())
            == Some(redis::Value::Int(1))
    });
    assert_eq!(server.kill_pubsub_clients(), 1);
    let err = pubsub.get_message().unwrap_err();
    assert!(
        err.is_connection_dropped() || err.is_io_error(),
        "the subscriber's connection was closed: {err}"
    );
}

#[test]
fn a_paused_server_does_not_answer_until_resumed() {
    let server = RedisServer::start();
    let mut c = server.client();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    server.pause();
    let err = redis::cmd("PING").query::<String>(&mut c).unwrap_err();
    assert!(err.is_timeout() || err.is_io_error(), "{err}");
    server.resume();
    let mut c = server.client();
    assert_eq!(redis::cmd("PING").query::<String>(&mut c).unwrap(), "PONG");
}
