//! Async functions on every tier, and the generated async items.
use cache_runtime::cached;

#[cached(ttl = 60, key = "double:<x>")]
async fn double(x: u64) -> u64 {
    x * 2
}

#[cached(tier = "redis", ttl = "10m", key = "upper:<s>")]
async fn upper(s: &str) -> String {
    s.to_uppercase()
}

#[cached(tier = "local+redis", ttl = 300, local_ttl = 60)]
async fn pair(a: u8, b: Option<u8>) -> (u8, Option<u8>) {
    (a, b)
}

#[tokio::main]
async fn main() {
    assert_eq!(double(2).await, 4);
    assert_eq!(double(2).await, 4);
    assert_eq!(lookup_double(2).await, Some(4));
    invalidate_double(2).await.unwrap();
    populate_double(3, 7).await.unwrap();
    assert_eq!(double(3).await, 7);
    assert_eq!(refresh_double(3).await, 6);
    assert_eq!(double_uncached(10).await, 20);
    assert_eq!(double_cache().stats().body_calls, 2);

    assert_eq!(upper("ab").await, "AB");
    let _ = lookup_upper("ab").await;
    let _ = invalidate_upper("ab").await;
    let _ = populate_upper("ab", "X".to_string()).await;
    assert_eq!(refresh_upper("ab").await, "AB");

    assert_eq!(pair(1, None).await, (1, None));
    assert_eq!(pair(1, Some(2)).await, (1, Some(2)));
    let _ = pair_cache().stats();
}
