use cache_runtime::cached;

#[cached(ttl = 60, cache_none = "yes")]
fn f(x: u64) -> Option<u64> {
    Some(x)
}

fn main() {}
