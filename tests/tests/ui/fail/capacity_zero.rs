use cache_runtime::cached;

#[cached(ttl = 60, capacity = 0)]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
