use cache_runtime::cached;

#[cached(ttl = 60, none_ttl = 5)]
fn f(x: u64) -> Option<u64> {
    Some(x)
}

fn main() {}
