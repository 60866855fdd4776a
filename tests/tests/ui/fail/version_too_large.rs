use cache_runtime::cached;

#[cached(ttl = 60, version = 5000000000)]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
