use cache_runtime::cached;
use std::future::Future;

#[cached(ttl = 60)]
fn load(id: u64) -> impl Future<Output = u64> + Send {
    async move { id }
}

fn main() {}
