use cache_runtime::cached;

#[cached(ttl = 60)]
fn f(x: u64) -> () {
    let _ = x;
}

fn main() {}
