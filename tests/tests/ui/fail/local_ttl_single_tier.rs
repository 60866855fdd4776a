use cache_runtime::cached;

#[cached(tier = "local", ttl = 60, local_ttl = 10)]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
