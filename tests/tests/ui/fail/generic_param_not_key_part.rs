use cache_runtime::cached;

// A generic parameter in the key needs a `KeyPart` bound.
#[cached(ttl = 60)]
fn f<T: Clone + Send + Sync + 'static>(x: T) -> T {
    x
}

fn main() {}
