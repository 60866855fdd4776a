use cache_runtime::cached;

#[cached(tier = redis, ttl = 60)]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
