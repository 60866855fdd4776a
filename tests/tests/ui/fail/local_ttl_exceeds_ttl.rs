use cache_runtime::cached;

#[cached(tier = "local+redis", ttl = "1m", local_ttl = "2m")]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
