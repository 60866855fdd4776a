use cache_runtime::cached;
use std::future::Future;
use std::pin::Pin;

// The `futures` crate's aliases, as it defines them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

#[cached(ttl = 60)]
fn load(id: u64) -> BoxFuture<'static, u64> {
    Box::pin(async move { id })
}

#[cached(ttl = 60)]
fn load_local(id: u64) -> LocalBoxFuture<'static, u64> {
    Box::pin(async move { id })
}

fn main() {}
