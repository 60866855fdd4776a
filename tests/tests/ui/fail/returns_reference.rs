use cache_runtime::cached;

#[cached(ttl = 60)]
fn f(x: &str) -> &str {
    x
}

fn main() {}
