use cache_runtime::cached;
use std::future::Future;
use std::pin::Pin;

// What `#[async_trait]` turns an `async fn` into, before `#[cached]` sees it.
#[cached(ttl = 60)]
fn load(id: u64) -> Pin<Box<dyn Future<Output = u64> + Send>> {
    Box::pin(async move { id })
}

fn main() {}
