//! Synchronous functions on every tier, with every option, and the generated items.
use cache_runtime::{cached, CacheError};

#[cached(ttl = 60, key = "square:<x>")]
fn square(x: u64) -> u64 {
    x * x
}

#[cached(
    tier = "local",
    ttl = "250ms",
    capacity = 10,
    name = "pass::greet",
    version = 2
)]
fn greet(name: &str, excited: bool) -> String {
    format!("hi {name}{}", if excited { "!" } else { "" })
}

#[cached(tier = "redis", ttl = "5m", key = "len:<s>")]
fn len(s: String) -> usize {
    s.len()
}

#[cached(
    tier = "local+redis",
    ttl = "1h",
    local_ttl = "30s",
    capacity = 100,
    key = "sum:<xs>"
)]
fn sum(xs: Vec<u32>) -> u64 {
    xs.iter().map(|&x| u64::from(x)).sum()
}

fn main() {
    assert_eq!(square(4), 16);
    assert_eq!(square(4), 16);
    assert_eq!(lookup_square(4), Some(16));
    assert_eq!(square_uncached(3), 9);
    invalidate_square(4).unwrap();
    assert_eq!(lookup_square(4), None);
    populate_square(5, 26).unwrap();
    assert_eq!(square(5), 26);
    assert_eq!(refresh_square(5), 25);
    assert_eq!(square(5), 25);
    // square(4) and refresh_square(5) ran the body; `_uncached` bypasses the cache.
    assert_eq!(square_cache().stats().body_calls, 2);

    assert_eq!(greet("ada", true), "hi ada!");
    assert_eq!(lookup_greet("ada", true).as_deref(), Some("hi ada!"));
    assert_eq!(greet_cache().name(), "pass::greet");

    // No REDIS_URL: the Redis tier is skipped, the calls still work.
    assert_eq!(len("abc".to_string()), 3);
    let _: Result<(), CacheError> = invalidate_len("abc".to_string());
    let _: Option<usize> = lookup_len("abc".to_string());

    assert_eq!(sum(vec![1, 2, 3]), 6);
    let _: Result<(), CacheError> = populate_sum(vec![1], 1);
    assert_eq!(sum_uncached(vec![2, 2]), 4);
    assert_eq!(refresh_sum(vec![2, 2]), 4);
    sum_cache().clear_local();
}
