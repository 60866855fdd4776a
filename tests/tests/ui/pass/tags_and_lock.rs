use cache_runtime::cached;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    user: u64,
}

#[cached(
    tier = "local+redis",
    ttl = "10m",
    key = "order:<id>:<user_id>",
    tags = ["user:<user_id>", "orders"],
    lock = true,
    lock_lease = "2s"
)]
async fn order(id: u64, user_id: u64) -> Option<Order> {
    Some(Order { id, user: user_id })
}

#[cached(ttl = 60, key = "n:<n>", tags = ["numbers"])]
fn double(n: u64) -> u64 {
    n * 2
}

#[tokio::main]
async fn main() {
    assert_eq!(order(1, 7).await.map(|o| o.user), Some(7));
    let _ = invalidate_order(1, 7).await;
    assert_eq!(double(2), 4);
    cache_runtime::invalidate_tag_blocking("numbers").unwrap();
    assert_eq!(lookup_double(2), None);
    let _ = cache_runtime::invalidate_tag("orders").await;
    let _ = order_cache().clear().await;
    let _ = cache_runtime::clear_all().await;
}
