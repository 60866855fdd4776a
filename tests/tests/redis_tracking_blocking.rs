//! A blocking caller's Redis reads (a plain `fn`: they run on the runtime's Redis thread)
//! also check the scope tokens and the entry tickets the process keeps (docs/PROTOCOL.md
//! §7.1): a hit reads the value alone, and a token deleted behind the process's back, with
//! no bus message, is seen.

use std::collections::BTreeMap;
use std::sync::Mutex;

use cache_runtime::cached;
use cache_tests::shared_redis;

/// The source of truth.
static DB: Mutex<BTreeMap<u64, String>> = Mutex::new(BTreeMap::new());

fn set_db(id: u64, value: &str) {
    DB.lock().unwrap().insert(id, value.to_string());
}

#[cached(tier = "redis", ttl = 60, key = "row:<id>", tags = ["user:<id>"])]
fn row(id: u64) -> String {
    DB.lock().unwrap().get(&id).cloned().unwrap_or_default()
}

#[test]
fn blocking_hits_read_the_value_alone_and_see_a_deleted_tag_token() {
    let server = shared_redis();
    set_db(1, "old");
    assert_eq!(row(1), "old");
    // The first hits read the tokens, then the ticket, behind `CLIENT CACHING yes`; the
    // next ones use them.
    for _ in 0..3 {
        assert_eq!(row(1), "old");
    }
    assert_eq!(row_cache().stats().redis_hits, 3);

    server.log_every_command();
    for _ in 0..5 {
        assert_eq!(row(1), "old");
    }
    assert_eq!(
        server.slowlog_commands_named("mget"),
        Vec::<Vec<String>>::new()
    );
    let gets = server.slowlog_commands_named("get");
    assert_eq!(gets.len(), 5, "one GET per hit: {gets:?}");
    for g in &gets {
        assert!(g.len() == 2 && g[1].contains(":v2:"), "GET value: {g:?}");
    }

    set_db(1, "new");
    assert_eq!(
        server
            .cmd::<u64>(&["DEL", "{t:scopes}:t:user:1"])
            .expect("DEL the tag token"),
        1
    );
    assert_eq!(
        row(1),
        "new",
        "a value stamped with a token Redis no longer holds was served from the kept tokens"
    );
    let s = row_cache().stats();
    assert_eq!((s.body_calls, s.redis_errors), (2, 0), "{s:?}");
}
