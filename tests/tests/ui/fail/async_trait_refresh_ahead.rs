use async_trait::async_trait;
use cache_runtime::cached;

#[async_trait]
trait Prices {
    async fn price(id: u64) -> u64;
}

struct Shop;

// `#[async_trait]`'s future borrows for `'async_trait`: it cannot finish in the background.
#[async_trait]
impl Prices for Shop {
    #[cached(in_trait, ttl = 60, refresh_ahead = 0.8)]
    async fn price(id: u64) -> u64 {
        id
    }
}

fn main() {}
