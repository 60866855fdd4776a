use cache_runtime::{cached, Entry};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[cached(
    tier = "local+redis",
    ttl = "5m",
    key = "user:<id>:<name>",
    tags = ["users"],
    purge = ["/users/<id>", "/users/<id>/card", "/search?name=<name>"],
)]
async fn user(id: u64, name: String) -> Result<User, String> {
    Ok(User { id, name })
}

#[cached(ttl = 60, key = "n:<n>", etag = true, purge = ["/n/<n>"])]
fn double(n: u64) -> u64 {
    n * 2
}

#[cached(
    tier = "local+redis",
    ttl = "5m",
    key = "slow:<id>:<label>",
    stale = "1h",
    soft_timeout = "100ms",
    refresh_ahead = 0.8
)]
async fn slow(id: u64, label: String) -> Result<String, String> {
    Ok(format!("{id}{label}"))
}

#[tokio::main]
async fn main() {
    assert_eq!(slow(1, "x".into()).await.unwrap(), "1x");
    assert_eq!(*slow_entry(1, "x".into()).await.unwrap().value(), "1x");
    let e: Entry<User> = user_entry(1, "ada".into()).await.unwrap();
    assert_eq!(e.value().id, 1);
    let _ = invalidate_user(1, "ada".into()).await;
    let _ = populate_user(
        1,
        "ada".into(),
        User {
            id: 1,
            name: "ada".into(),
        },
    )
    .await;
    let _ = refresh_user(1, "ada".into()).await;
    let d: Entry<u64> = double_entry(2);
    assert!(d.etag().is_some());
    invalidate_double(2).unwrap();
}
