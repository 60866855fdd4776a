use cache_runtime::cached;

#[cached(ttl = "10")]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
