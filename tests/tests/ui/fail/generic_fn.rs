use cache_runtime::cached;

#[cached(ttl = 60)]
fn f<T: Clone>(x: T) -> T {
    x
}

fn main() {}
