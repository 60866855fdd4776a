//! A wrong password: the boot-time health check gives a clear, actionable error, the password
//! is not in it, and calls fail open.

use cache_runtime::{cached, Config};
use cache_tests::RedisServer;

#[cached(tier = "redis", ttl = 60, key = "auth:<id>")]
async fn value(id: u64) -> u64 {
    id + 1
}

#[tokio::test]
async fn a_wrong_password_is_reported_by_the_health_check() {
    let server = RedisServer::start_with_password("right-password");
    let port = server.port();
    cache_runtime::init(
        Config::builder()
            .redis_url(format!("redis://default:wrong-password@127.0.0.1:{port}/"))
            .build(),
    )
    .unwrap();
    let err = cache_runtime::health_check().await.unwrap_err().to_string();
    assert!(
        err.contains("WRONGPASS") || err.to_lowercase().contains("auth"),
        "not actionable: {err}"
    );
    assert!(
        !err.contains("wrong-password"),
        "the password leaked: {err}"
    );
    assert_eq!(value(1).await, 2);
    assert_eq!(value(1).await, 2);
    assert_eq!(
        value_cache().stats().body_calls,
        2,
        "no Redis: the body runs each time"
    );
}
